"""Accuracy under occlusion: random square patches of the input are dropped (filled with black or the image mean).

The patches dropped from an image depend only on (seed, dataset index): each image's cells are ranked by one random
permutation from a generator seeded with both, and a ratio drops the first ``k`` cells of that ranking. So every
model sees the same occluded images whatever the batch size or order, and a higher ratio occludes a superset of the
cells of a lower one (curves over ratios are nested, not redrawn).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch

from mixmask.data.common import Batch

if TYPE_CHECKING:
    from mixmask.config import Config

FILLS = ("zero", "mean")
T = TypeVar("T")
_MASK63 = (1 << 63) - 1


def _mix(value: int) -> int:
    """splitmix64 finaliser: spreads (seed, index) over the seed space so nearby pairs give unrelated streams."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def _image_seed(seed: int, index: int) -> int:
    return _mix(_mix(seed & 0xFFFFFFFFFFFFFFFF) ^ (index & 0xFFFFFFFFFFFFFFFF)) & _MASK63


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(s) for s in image_size)
    return height, width


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even (round(4.5) == 4); the small epsilon absorbs 0.35 * 100 = 34.999...
    return math.floor(value + 0.5 + 1e-9)


def cell_grid(image_size: int | Sequence[int], patch_size: int) -> tuple[int, int]:
    """Rows and columns of the occlusion grid: ceil(H / p) x ceil(W / p), the last row/column cropped by the border."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size}")
    height, width = _size(image_size)
    return math.ceil(height / patch_size), math.ceil(width / patch_size)


def dropped_cells(ratio: float, n_cells: int) -> int:
    """Cells dropped per image: round(ratio * n_cells), halves rounded up."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"occlusion ratio must be in [0, 1], got {ratio}")
    return min(n_cells, _round_half_up(ratio * n_cells))


def cell_ranks(indices: torch.Tensor, n_cells: int, seed: int = 0) -> torch.Tensor:
    """(B, n_cells) int64 on the CPU: rank[b, c] = position of cell c in image b's random order. A ratio that drops k
    cells drops exactly the cells with rank < k, which is what makes the masks nested across ratios."""
    indices = torch.as_tensor(indices).reshape(-1).tolist()
    if not indices:
        return torch.empty(0, n_cells, dtype=torch.long)
    generator = torch.Generator()
    orders = []  # orders[b][j] = the j-th cell of image b to drop
    for index in indices:
        generator.manual_seed(_image_seed(seed, int(index)))
        orders.append(torch.randperm(n_cells, generator=generator))
    order = torch.stack(orders)
    return torch.empty_like(order).scatter_(1, order, torch.arange(n_cells).expand_as(order))


def masks_from_ranks(
    ranks: torch.Tensor, image_size: int | Sequence[int], patch_size: int, ratio: float, device=None
) -> torch.Tensor:
    """Pixel masks (B, 1, H, W), True = occluded, from ``cell_ranks``: the cells ranked below k, upsampled and
    cropped to the image."""
    height, width = _size(image_size)
    rows, cols = cell_grid((height, width), patch_size)
    if ranks.shape[1] != rows * cols:
        raise ValueError(f"ranks have {ranks.shape[1]} cells, the {rows}x{cols} grid has {rows * cols}")
    k = dropped_cells(ratio, rows * cols)
    cells = (ranks < k).to(device if device is not None else ranks.device).view(-1, 1, rows, cols)
    pixels = cells.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return pixels[:, :, :height, :width].contiguous()


def occlusion_masks(
    indices: torch.Tensor, image_size: int, patch_size: int, ratio: float, seed: int = 0
) -> torch.Tensor:
    """bool (B, 1, H, W), True = occluded: round(ratio * n_cells) of the ceil(H / p)^2 grid cells per image (last
    row/column cropped), chosen by the image's own (seed, dataset index) permutation; see the module docstring.
    ``image_size`` may also be (H, W). Returned on the device of ``indices``."""
    rows, cols = cell_grid(image_size, patch_size)
    device = indices.device if isinstance(indices, torch.Tensor) else None
    return masks_from_ranks(cell_ranks(indices, rows * cols, seed), image_size, patch_size, ratio, device)


def patch_size_for(image_size: int, patch_at_224: int = 16) -> int:
    """The configured patch (pixels at 224 px) scaled to the input size, so a ratio hides the same share of the
    object at every resolution: max(1, round(p * image_size / 224)), halves rounded up."""
    return max(1, _round_half_up(patch_at_224 * image_size / 224))


def fill_values(images: torch.Tensor, fill: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, 1, 1) normalised values that occluded pixels take: black (pixel 0 -> -mean / std) for ``zero``, each
    image's own per-channel mean over the whole image for ``mean`` (A2MIM's mean fill)."""
    if fill == "zero":
        mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (-mean_t / std_t).expand(len(images), -1, -1, -1)
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True)
    raise ValueError(f"unknown occlusion fill {fill!r}; expected one of {', '.join(FILLS)}")


def occlude(
    images: torch.Tensor, masks: torch.Tensor, fill: str, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Normalised images with the masked pixels (masks (B, 1, H, W) or (B, H, W), True = occluded) replaced by the
    fill; see ``fill_values``. Unmasked pixels are returned unchanged, bit for bit."""
    if masks.ndim == 3:
        masks = masks[:, None]
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit images of shape {tuple(images.shape)}")
    return torch.where(masks.to(images.device), fill_values(images, fill, mean, std), images)


@dataclass(frozen=True)
class OcclusionSettings:
    """How images are occluded: the ratios (shares of grid cells dropped), the cell size in pixels, the fill, the
    data's normalisation (what black is, for the ``zero`` fill) and the seed. Occlusion accuracy and CKA invariance
    take the same object, so both see the same occluded images. Checked when built: at least one ratio, each in
    [0, 1], a known fill; the ratios are kept as floats."""

    ratios: tuple[float, ...]
    patch_size: int
    fill: str
    mean: Sequence[float]
    std: Sequence[float]
    seed: int = 0

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        if not ratios:
            raise ValueError("give at least one occlusion ratio")
        for ratio in ratios:
            dropped_cells(ratio, 1)  # validates the range
        if self.fill not in FILLS:
            raise ValueError(f"unknown occlusion fill {self.fill!r}; expected one of {', '.join(FILLS)}")
        object.__setattr__(self, "ratios", ratios)

    @classmethod
    def from_config(cls, cfg: Config) -> OcclusionSettings:
        """The ``eval`` section's ratios, patch (pixels at 224 px, scaled to the input size), fill and seed, with the
        ``data`` section's mean and std."""
        ev, data = cfg.eval, cfg.data
        patch = patch_size_for(data.image_size, ev.occlusion_patch)
        return cls(tuple(ev.occlusion_ratios), patch, ev.occlusion_fill, tuple(data.mean), tuple(data.std), ev.seed)


def map_over_ratios(
    fn: Callable[[torch.Tensor], T],
    images: torch.Tensor,
    indices: torch.Tensor,
    settings: OcclusionSettings,
    drop: Callable[[torch.Tensor, torch.Tensor], T] | None = None,
) -> list[T]:
    """``fn`` of the images occluded at each of the settings' ratios, in order. The cell ranking is drawn once per
    batch; ratios that drop the same number of cells share one call, and one that drops none gets the clean images.
    With ``drop``, occluded ratios call ``drop(images, dropped)`` instead, ``dropped`` the (B, cells) bool of the
    cells to leave out (row-major, the same cells the pixels would hide), for an encoder that drops tokens."""
    s = settings
    rows, cols = cell_grid(images.shape[-2:], s.patch_size)
    ranks = cell_ranks(indices, rows * cols, s.seed)
    by_k: dict[int, T] = {}
    for ratio in s.ratios:
        k = dropped_cells(ratio, rows * cols)
        if k not in by_k:
            if not k:
                by_k[k] = fn(images)
            elif drop is not None:
                by_k[k] = drop(images, (ranks < k).to(images.device))
            else:
                masks = masks_from_ranks(ranks, images.shape[-2:], s.patch_size, ratio, images.device)
                by_k[k] = fn(occlude(images, masks, s.fill, s.mean, s.std))
    return [by_k[dropped_cells(ratio, rows * cols)] for ratio in s.ratios]


@torch.no_grad()
def occlusion_predictions(
    classify: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    settings: OcclusionSettings,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: its data-set index ``(n,)``, label ``(n,)`` and top-1 prediction at every occlusion ratio
    ``(n, ratios)``; each batch is occluded at all ratios in turn (the data are read once). ``classify(images)``
    returns logits; put the model in eval mode first. Ratios that drop the same number of cells give the same images
    and share one forward pass."""
    indices, labels, predictions = [], [], []
    for batch in batches:
        if len(batch) == 0:
            continue

        def predict(images: torch.Tensor) -> torch.Tensor:
            return classify(images).argmax(dim=1).cpu()

        per_ratio = map_over_ratios(predict, batch.images.to(device), batch.indices, settings)
        indices.append(batch.indices.cpu())
        labels.append(batch.labels.cpu())
        predictions.append(torch.stack(per_ratio, dim=1))
    if not indices:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0, len(settings.ratios), dtype=torch.long)
    return torch.cat(indices), torch.cat(labels), torch.cat(predictions)


def occlusion_curve(labels: torch.Tensor, predictions: torch.Tensor, settings: OcclusionSettings) -> dict:
    """Top-1 accuracy at every occlusion ratio from ``occlusion_predictions`` (ratio 0 is the clean accuracy)."""
    correct = (predictions == labels[:, None]).sum(dim=0).tolist() if len(labels) else [0] * len(settings.ratios)
    images = len(labels)
    return {
        "ratios": list(settings.ratios),
        "accuracy": [c / images if images else None for c in correct],
        "correct": correct,
        "images": images,
        "patch_size": settings.patch_size,
        "fill": settings.fill,
        "seed": settings.seed,
    }


def occlusion_accuracy(
    classify: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    settings: OcclusionSettings,
    device: torch.device | str = "cpu",
) -> dict:
    """Top-1 accuracy at every occlusion ratio (``occlusion_curve`` of ``occlusion_predictions``)."""
    _, labels, predictions = occlusion_predictions(classify, batches, settings, device)
    return occlusion_curve(labels, predictions, settings)
