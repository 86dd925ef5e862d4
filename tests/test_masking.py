import math

import pytest
import torch

from mixmask.config import ConfigError, load_config
from mixmask.masking import MaskSpec, MixedMasker, resolve_stage, to_grid

RESNET50_STRIDES = [4, 4, 8, 16, 32]  # stage 0 = stem after max-pool, stage k = residual layer k


@pytest.mark.parametrize(
    "patch, ratio, masked, total", [(32, 0.6, 30, 49), (4, 0.6, 1882, 3136), (56, 0.4, 7, 16), (16, 0.6, 118, 196)]
)
@pytest.mark.parametrize("kind", ["random", "blockwise"])
def test_exact_mask_count_per_image(patch, ratio, masked, total, kind):
    mask = MaskSpec(patch, ratio, kind=kind).sample(16, 224, generator=torch.Generator().manual_seed(1))
    side = int(math.isqrt(total))
    assert mask.shape == (16, side, side) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [masked] * 16


def test_masks_are_random_and_reproducible():
    spec = MaskSpec(16, 0.5)
    a = spec.sample(4, 64, generator=torch.Generator().manual_seed(0))
    b = spec.sample(4, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    # each cell is masked about half the time over many draws
    freq = spec.sample(4000, 64, generator=torch.Generator().manual_seed(2)).float().mean(0)
    assert freq.min() > 0.45 and freq.max() < 0.55


def test_blockwise_masks_are_clumped():
    def neighbours_masked(mask):  # fraction of masked cells whose right neighbour is masked too
        return (mask[:, :, :-1] & mask[:, :, 1:]).sum() / mask[:, :, :-1].sum()

    g = torch.Generator().manual_seed(0)
    random = MaskSpec(16, 0.4).sample(64, 224, generator=g)
    block = MaskSpec(16, 0.4, kind="blockwise").sample(64, 224, generator=g)
    assert neighbours_masked(block) > neighbours_masked(random) + 0.25


def component_sizes(mask):
    """Sizes of the 4-connected groups of masked cells of one (g, g) mask, one entry per cell."""
    g, seen, sizes = mask.shape[0], set(), {}
    for start in zip(*mask.nonzero(as_tuple=True), strict=True):
        start = tuple(int(i) for i in start)
        if start in seen:
            continue
        group, todo = [], [start]
        seen.add(start)
        while todo:
            r, c = todo.pop()
            group.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < g and 0 <= nc < g and mask[nr, nc] and (nr, nc) not in seen:
                    seen.add((nr, nc))
                    todo.append((nr, nc))
        sizes.update(dict.fromkeys(group, len(group)))
    return list(sizes.values())


def test_blockwise_masks_follow_beits_generator():
    """BEiT's setting (14x14 grid, 75 patches of 196): the mask is a union of blocks of at least 16 patches, almost
    never topped up with single cells, and reproducible from the generator."""
    from mixmask.masking import beit_block_mask

    g = torch.Generator().manual_seed(0)
    masks = [beit_block_mask(14, 75, g) for _ in range(200)]
    assert all(int(m.sum()) == 75 for m in masks)
    in_big_groups = sum(sum(size >= 16 for size in component_sizes(m)) for m in masks) / (200 * 75)
    assert in_big_groups > 0.95, in_big_groups  # measured: 0.976
    again = torch.Generator().manual_seed(0)
    assert all(torch.equal(m, beit_block_mask(14, 75, again)) for m in masks[:5])
    # the smallest block scales with the grid: 16 of 196 patches is 5 of an 8x8 grid
    small = [beit_block_mask(8, 24, g) for _ in range(100)]
    assert sum(sum(size >= 5 for size in component_sizes(m)) for m in small) / (100 * 24) > 0.9


@pytest.mark.parametrize("patch, stage", [(4, 1), (16, 3), (32, 3), (56, 2), (8, 2)])
def test_auto_stage_for_resnet50(patch, stage):
    assert resolve_stage(MaskSpec(patch, 0.5), RESNET50_STRIDES) == stage


def test_impossible_stage_names_patch_stage_stride_and_working_stages():
    with pytest.raises(ConfigError) as info:
        resolve_stage(MaskSpec(56, 0.4, stage=3), RESNET50_STRIDES)
    message = str(info.value)
    for fragment in ("patch 56", "stage 3", "stride 16", "[0, 1, 2]"):
        assert fragment in message
    assert resolve_stage(MaskSpec(56, 0.4, stage=3), RESNET50_STRIDES, downsample="area") == 3
    assert resolve_stage(MaskSpec(16, 0.4), RESNET50_STRIDES, max_stage=2) == 2


def test_to_grid_exact_and_area():
    mask = MaskSpec(56, 0.4).sample(3, 224, generator=torch.Generator().manual_seed(0))
    pixels = to_grid(mask, 224)
    assert pixels.shape == (3, 224, 224)
    assert torch.equal(pixels[:, ::56, ::56], mask)
    assert pixels.float().mean().item() == pytest.approx(7 / 16)
    # area downsampling: 56-px cells onto the stride-16 grid (14x14): a cell is masked when >= half of it is
    coarse = to_grid(mask, 14)
    expected = torch.nn.functional.avg_pool2d(pixels[:, None].float(), 16)[:, 0] >= 0.5
    assert torch.equal(coarse, expected)


def mixed(mix, weights=(1.0, 3.0), seed=0):
    strategies = ", ".join(
        f"{{patch_size: {p}, ratio: {r}, weight: {w}}}"
        for (p, r), w in zip([(4, 0.6), (56, 0.4)], weights, strict=True)
    )
    cfg = load_config(None, ["data.image_size=224", f"masking.strategies=[{strategies}]", f"masking.mix={mix}"])
    return MixedMasker.from_config(cfg.masking, RESNET50_STRIDES, seed=seed)


def test_per_batch_choice_follows_weights_and_is_rank_independent():
    masker = mixed("per_batch")
    choices = torch.stack([masker.choose(step, 8) for step in range(4000)])
    assert (choices == choices[:, :1]).all()  # one strategy for the whole batch
    assert choices[:, 0].float().mean().item() == pytest.approx(0.75, abs=0.03)
    other_rank = mixed("per_batch")  # a second process builds its own masker: same choices step by step
    assert all(torch.equal(other_rank.choose(s, 8), masker.choose(s, 8)) for s in range(50))
    assert not all(torch.equal(mixed("per_batch", seed=1).choose(s, 8), masker.choose(s, 8)) for s in range(50))


def test_mask_batch_per_sample_has_each_stage_where_used():
    masker = mixed("per_sample", weights=(1.0, 1.0))
    batch = masker(step=5, batch_size=32, image_size=224, generator=torch.Generator().manual_seed(0))
    assert set(batch.stages) == {1, 2}
    assert batch.stages[1].shape == (32, 56, 56) and batch.stages[2].shape == (32, 28, 28)
    for i, strategy in enumerate(batch.strategy.tolist()):
        fraction = batch.pixels[i].float().mean().item()
        assert fraction == pytest.approx([1882 / 3136, 7 / 16][strategy])
        own, other = (1, 2) if strategy == 0 else (2, 1)
        assert batch.stages[own][i].float().mean().item() == pytest.approx(fraction)
        assert not batch.stages[other][i].any()


def test_bad_strategy_in_config_names_it():
    cfg = load_config(
        None, ["data.image_size=224", "masking.strategies=[{patch_size: 32}, {patch_size: 56, stage: 3}]"]
    )
    with pytest.raises(ConfigError, match=r"masking.strategies\[1\].*stride 16"):
        MixedMasker.from_config(cfg.masking, RESNET50_STRIDES)


def test_uniform_masks_leave_one_cell_visible_in_each_2x2_block():
    mask = MaskSpec(16, 0.75, kind="uniform").sample(500, 128, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (500, 8, 8) and mask.flatten(1).sum(1).unique().tolist() == [48]
    blocks = mask.view(500, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(500, 16, 4)
    assert ((~blocks).sum(-1) == 1).all()
    where = (~blocks).float().mean((0, 1))  # which of the four places is visible: each about a quarter
    assert (where - 0.25).abs().max() < 0.02


@pytest.mark.parametrize(
    "strategy, fragment",
    [("{patch_size: 16, ratio: 0.6, kind: uniform}", "0.75 for kind uniform"),
     ("{patch_size: 32, ratio: 0.75, kind: uniform}", "even number of cells")],
)  # fmt: skip
def test_uniform_masks_need_their_ratio_and_an_even_grid(strategy, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, ["data.image_size=96", f"masking.strategies=[{strategy}]"])
