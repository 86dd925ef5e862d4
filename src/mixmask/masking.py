"""Masks for masked image modeling: exact-count patch masks, block-wise masks, the patch/stage rule, mixed masking.

A mask is a bool tensor, True = masked. ``MaskSpec.sample`` draws one per image on the patch grid
``(B, image_size // patch_size, image_size // patch_size)`` with exactly ``ceil(ratio * n_patches)`` masked cells.
The model needs it at two resolutions: pixels (mean fill, loss) and the grid of the stage where the mask token enters.
A patch of N pixels is masked exactly at a stage whose stride divides N; ``downsample="area"`` allows any pairing
(a stage cell counts as masked when at least half of its pixels are).

``MixedMasker`` picks one strategy per step (``per_batch``, the Mix-and-Mask paper) or per image (``per_sample``).
The choice comes from a generator seeded by (seed, step), so every rank and a resumed run make the same choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixmask.config import ConfigError, MaskingConfig


@dataclass(frozen=True)
class MaskSpec:
    patch_size: int
    ratio: float
    stage: int | str = "auto"
    weight: float = 1.0
    kind: str = "random"  # random | blockwise | uniform

    def grid(self, image_size: int) -> int:
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {self.patch_size}")
        return image_size // self.patch_size

    def count(self, image_size: int) -> int:
        """Masked cells per image: ceil(ratio * n_patches), as in SimMIM and the official A2MIM code."""
        return math.ceil(self.ratio * self.grid(image_size) ** 2)

    def sample(
        self,
        batch_size: int,
        image_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A bool mask (B, g, g) with exactly ``count`` True cells per image, drawn in one batched operation."""
        g = self.grid(image_size)
        if generator is not None and device is not None and generator.device != torch.device(device):
            raise ValueError(f"generator is on {generator.device}, masks are asked for on {device}")
        device = generator.device if generator is not None else device
        if self.kind == "blockwise":  # drawn on the CPU from a seed the (device) generator gives
            seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
            cpu = torch.Generator().manual_seed(seed)
            masks = [beit_block_mask(g, self.count(image_size), cpu) for _ in range(batch_size)]
            return torch.stack(masks).to(device) if masks else torch.zeros(0, g, g, dtype=torch.bool, device=device)
        if self.kind == "uniform":  # UM-MAE: one visible cell in each 2x2 block, its place uniform (UM-MAE's code
            # draws places from a shuffled pool holding each place equally often: the same law up to that balance)
            visible = torch.randint(4, (batch_size, g // 2, g // 2), generator=generator, device=device)
            blocks = torch.arange(4, device=device).view(1, 1, 1, 4) != visible[..., None]  # True = masked
            return blocks.view(batch_size, g // 2, g // 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(batch_size, g, g)
        scores = torch.rand(batch_size, g * g, generator=generator, device=device)
        chosen = scores.topk(self.count(image_size), dim=1).indices
        mask = torch.zeros(batch_size, g * g, dtype=torch.bool, device=device)
        mask.scatter_(1, chosen, True)
        return mask.view(batch_size, g, g)


BEIT_GRID, BEIT_MIN_PATCHES = 14, 16  # BEiT's 14x14 grid at 224 px and its smallest block (min_mask_patches_per_block)


def beit_block_mask(g: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """One image's block-wise mask on a g x g grid, as BEiT's ``MaskingGenerator`` draws it, then topped up to exactly
    ``count`` cells. Blocks are added until ``count`` is reached or a block fails: each block takes up to 10
    attempts, with an area uniform in [16 patches scaled to the grid, the cells still to mask] and an aspect ratio
    log-uniform in [0.3, 1/0.3]; a block must fit strictly inside the grid (h, w < g) and is rejected unless it adds
    between 1 and the remaining cells. Where BEiT would stop short of ``count``, single random cells top the mask up
    (mixmask's masks are exact-count). ``generator``: a CPU generator (BEiT draws on the CPU, in its data loader)."""
    mask = torch.zeros(g, g, dtype=torch.bool)
    min_area = max(1, round(BEIT_MIN_PATCHES * g * g / BEIT_GRID**2))
    log_low, log_high = math.log(0.3), math.log(1 / 0.3)
    masked = 0
    while masked < count:
        budget, added = count - masked, 0
        for _ in range(10):
            u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
            area = min_area + u[0] * (budget - min_area)  # uniform between the two, in either order, as random.uniform
            aspect = math.exp(log_low + u[1] * (log_high - log_low))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if w < g and h < g:
                top, left = int(u[2] * (g - h + 1)), int(u[3] * (g - w + 1))
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= budget:
                    mask[top : top + h, left : left + w] = True
                    added = new
                    break
        if added == 0:
            break
        masked += added
    if masked < count:
        free = (~mask).flatten().nonzero().flatten()
        mask.view(-1)[free[torch.randperm(len(free), generator=generator)[: count - masked]]] = True
    return mask


# ------------------------------------------------------------------------------------------- patch / stage rule


def resolve_stage(
    spec: MaskSpec, strides: list[int], max_stage: int = 3, downsample: str = "exact", auto_stage: int | None = None
) -> int:
    """The stage where ``spec``'s token enters. ``strides[k]`` is stage k's stride (ResNet-50: 4, 4, 8, 16, 32;
    a ViT: its patch size at every stage).

    auto: ``auto_stage`` when given (ViTs and SimMIM: 0), else the deepest stage up to ``max_stage`` whose stride
    divides the patch size. A stage must satisfy the same rule unless ``downsample == "area"``. Raises ConfigError
    naming patch, stage, stride and the stages that would work.
    """
    last = min(max_stage, len(strides) - 1)
    working = [k for k in range(last + 1) if spec.patch_size % strides[k] == 0]
    if spec.stage == "auto" and auto_stage is not None:
        spec = MaskSpec(spec.patch_size, spec.ratio, auto_stage, spec.weight, spec.kind)
    if spec.stage == "auto":
        if not working:
            if downsample == "area":
                return last
            raise ConfigError(
                f"mask patch {spec.patch_size} px: no stage up to max_stage={max_stage} has a stride dividing it "
                f"(strides {strides[: last + 1]}); use a patch that is a multiple of {strides[0]}, or "
                "masking.downsample=area"
            )
        return working[-1]
    stage = int(spec.stage)
    if not 0 <= stage < len(strides):
        raise ConfigError(f"mask stage {stage} does not exist: the backbone has stages 0..{len(strides) - 1}")
    if downsample != "area" and spec.patch_size % strides[stage]:
        raise ConfigError(
            f"mask patch {spec.patch_size} px cannot be masked exactly at stage {stage} (stride {strides[stage]} "
            f"does not divide {spec.patch_size}); stages that work: {working or 'none'}; "
            "or set masking.downsample=area"
        )
    return stage


def to_grid(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Resample a square bool mask (B, g, g) to (B, size, size): exact repetition when ``size`` is a multiple of g,
    otherwise area coverage (a cell is masked when at least half of its pixels are)."""
    g = mask.shape[-1]
    if size % g == 0:
        factor = size // g
        return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    if g % size == 0:
        covered = F.avg_pool2d(mask[:, None].float(), g // size)
    else:
        # go through the common refinement, then average over each target cell
        fine = math.lcm(g, size)
        covered = F.avg_pool2d(to_grid(mask, fine)[:, None].float(), fine // size)
    return covered[:, 0] >= 0.5


# ------------------------------------------------------------------------------------------------- mixed masking


@dataclass
class MaskBatch:
    """One step's masks: which strategy each image used, the pixel mask, and the mask on each stage grid in use."""

    strategy: torch.Tensor  # (B,) int64 index into the masker's specs
    pixels: torch.Tensor  # (B, H, W) bool
    stages: dict[int, torch.Tensor]  # stage -> (B, h_s, w_s) bool; False for images of other strategies


def complement(masks: MaskBatch) -> MaskBatch:
    """Masks that hide exactly what ``masks`` shows: pixels inverted; on each stage grid, inverted for the images
    whose strategy masks at that stage (the others have no cell masked there and stay unmasked)."""
    stages = {s: m ^ m.flatten(1).any(dim=1)[:, None, None] for s, m in masks.stages.items()}
    return MaskBatch(masks.strategy, ~masks.pixels, stages)


def unmasked(masks: MaskBatch) -> MaskBatch:
    """Masks that hide nothing, on the same grids."""
    stages = {s: torch.zeros_like(m) for s, m in masks.stages.items()}
    return MaskBatch(masks.strategy, torch.zeros_like(masks.pixels), stages)


class MixedMasker:
    """Draws each step's masks from one or several strategies; see the module docstring."""

    def __init__(
        self,
        specs: list[MaskSpec],
        stages: list[int],
        strides: list[int],
        mix: str = "per_batch",
        seed: int = 0,
    ):
        if len(specs) != len(stages):
            raise ValueError("one stage per spec")
        self.specs, self.stages, self.strides, self.mix, self.seed = list(specs), list(stages), strides, mix, seed
        self.weights = torch.tensor([s.weight for s in specs], dtype=torch.float64)

    @classmethod
    def from_config(
        cls, cfg: MaskingConfig, strides: list[int], seed: int = 0, auto_stage: int | None = None
    ) -> MixedMasker:
        specs = [MaskSpec(s.patch_size, s.ratio, s.stage, s.weight, s.kind) for s in cfg.strategies]
        stages = []
        for i, spec in enumerate(specs):
            try:
                stages.append(resolve_stage(spec, strides, cfg.max_stage, cfg.downsample, auto_stage))
            except ConfigError as error:
                raise ConfigError(f"config field `masking.strategies[{i}]`: {error}") from None
        return cls(specs, stages, strides, cfg.mix, seed)

    def choose(self, step: int, batch_size: int) -> torch.Tensor:
        """Strategy index per image: one for the whole batch (per_batch) or one each (per_sample). Depends only on
        (seed, step), never on the rank or on what ran before."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        draws = 1 if self.mix == "per_batch" else batch_size
        choice = torch.multinomial(self.weights, draws, replacement=True, generator=generator)
        return choice.expand(batch_size) if self.mix == "per_batch" else choice

    def __call__(
        self, step: int, batch_size: int, image_size: int, generator: torch.Generator | None = None, device=None
    ) -> MaskBatch:
        return self.masks_for(self.choose(step, batch_size), image_size, generator, device)

    def masks_for(
        self, choice: torch.Tensor, image_size: int, generator: torch.Generator | None = None, device=None
    ) -> MaskBatch:
        """Masks for images whose strategies are given (``choice``, on the CPU: grouping needs no device sync)."""
        batch_size = len(choice)
        if generator is not None:
            device = generator.device
        pixels = torch.zeros(batch_size, image_size, image_size, dtype=torch.bool, device=device)
        stages: dict[int, torch.Tensor] = {}
        for index in choice.unique().tolist():
            rows = (choice == index).nonzero().flatten().to(device)
            spec, stage = self.specs[index], self.stages[index]
            grid_mask = spec.sample(len(rows), image_size, generator=generator, device=device)
            pixels[rows] = to_grid(grid_mask, image_size)
            side = image_size // self.strides[stage]
            if stage not in stages:
                stages[stage] = torch.zeros(batch_size, side, side, dtype=torch.bool, device=device)
            stages[stage][rows] = to_grid(grid_mask, side)
        return MaskBatch(choice.to(device), pixels, stages)
