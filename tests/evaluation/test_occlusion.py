"""Occlusion masks (exact counts, determinism per image, nesting), fills, and accuracy under occlusion."""

import math

import pytest
import torch

from mixmask.config import load_config
from mixmask.data.common import Batch
from mixmask.evaluation.occlusion import (
    OcclusionSettings,
    cell_ranks,
    occlude,
    occlusion_accuracy,
    occlusion_masks,
    patch_size_for,
)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
RATIOS = [0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0]


def cells_of(masks, patch):
    """(B, rows, cols) cell mask from a pixel mask, after checking each cell is all-or-nothing."""
    cells = masks[:, 0, ::patch, ::patch]
    rebuilt = cells.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, : masks.shape[2], : masks.shape[3]]
    assert torch.equal(rebuilt, masks[:, 0])
    return cells


def normalise(pixels):
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def denormalise(images):
    return images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


@pytest.mark.parametrize("size, patch, rows", [(32, 4, 8), (30, 4, 8), (37, 8, 5), (224, 16, 14), (33, 32, 2)])
def test_exact_number_of_dropped_cells(size, patch, rows):
    indices = torch.arange(12) * 7
    for ratio in RATIOS:
        masks = occlusion_masks(indices, size, patch, ratio)
        assert masks.shape == (12, 1, size, size) and masks.dtype == torch.bool
        cells = cells_of(masks, patch)
        assert cells.shape[1:] == (rows, rows)
        expected = math.floor(ratio * rows * rows + 0.5)
        assert cells.flatten(1).sum(1).tolist() == [expected] * 12


def test_half_cells_round_up_and_full_ratio_drops_everything():
    masks = occlusion_masks(torch.arange(5), 12, 4, 0.5)  # 9 cells, 4.5 -> 5
    assert cells_of(masks, 4).flatten(1).sum(1).tolist() == [5] * 5
    assert occlusion_masks(torch.arange(3), 30, 4, 1.0).all()
    assert not occlusion_masks(torch.arange(3), 30, 4, 0.0).any()


def test_same_seed_and_index_give_the_same_mask_in_any_batch():
    a = occlusion_masks(torch.tensor([5, 9, 2, 40]), 32, 4, 0.4, seed=3)
    b = occlusion_masks(torch.tensor([2, 100, 5]), 32, 4, 0.4, seed=3)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])  # different index
    other_seed = occlusion_masks(torch.tensor([5, 9, 2, 40]), 32, 4, 0.4, seed=4)
    assert all(not torch.equal(a[i], other_seed[i]) for i in range(4))
    # non-square sizes work too and pick the same cells where the grids agree
    assert occlusion_masks(torch.tensor([5]), (32, 40), 4, 0.4).shape == (1, 1, 32, 40)


def test_cells_are_spread_uniformly():
    ranks = cell_ranks(torch.arange(3000), 16, seed=0)
    assert torch.equal(ranks.sort(dim=1).values, torch.arange(16).expand(3000, 16))
    freq = (ranks < 8).float().mean(0)  # each cell dropped about half the time at ratio 0.5
    assert freq.min() > 0.45 and freq.max() < 0.55


def test_masks_are_nested_across_ratios():
    indices = torch.arange(20)
    previous = occlusion_masks(indices, 37, 8, 0.0)
    for ratio in RATIOS[1:]:
        current = occlusion_masks(indices, 37, 8, ratio)
        assert torch.all(current >= previous)
        previous = current


def test_patch_size_for():
    assert [patch_size_for(s) for s in (224, 112, 64, 32, 96, 8, 4)] == [16, 8, 5, 2, 7, 1, 1]
    assert patch_size_for(64, 32) == 9


def test_fills():
    pixels = torch.rand(3, 3, 16, 16)
    images = normalise(pixels)
    masks = occlusion_masks(torch.arange(3), 16, 4, 0.5)
    m = masks.expand(-1, 3, -1, -1)
    assert torch.equal(occlude(images, torch.zeros_like(masks), "zero", MEAN, STD), images)

    black = denormalise(occlude(images, masks, "zero", MEAN, STD))
    assert torch.allclose(black[m], torch.zeros(()), atol=1e-6)
    assert torch.equal(occlude(images, masks, "zero", MEAN, STD)[~m], images[~m])

    filled = occlude(images, masks[:, 0], "mean", MEAN, STD)  # (B, H, W) masks are accepted too
    channel_means = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    assert torch.allclose(filled[m], channel_means[m])
    assert torch.equal(filled[~m], images[~m])
    # the mean of the whole image, not of its visible part
    assert torch.allclose(denormalise(filled)[m], pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)[m], atol=1e-6)

    with pytest.raises(ValueError, match="fill"):
        occlude(images, masks, "grey", MEAN, STD)
    with pytest.raises(ValueError, match="ratio"):
        occlusion_masks(torch.arange(2), 16, 4, 1.5)


def make_data(n=45, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = normalise(torch.rand(n, 3, size, size, generator=g))
    model = torch.nn.Linear(3 * size * size, 10)
    torch.nn.init.normal_(model.weight, std=0.05, generator=g)
    torch.nn.init.normal_(model.bias, std=0.5, generator=g)
    return images, lambda x: model(x.flatten(1))


def batches_of(images, labels, order, batch_size):
    return [
        Batch(images[order[i : i + batch_size]], labels[order[i : i + batch_size]], order[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    ]


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_accuracy_matches_a_per_image_computation(fill):
    images, classify = make_data()
    n = len(images)
    clean = classify(images).argmax(1)
    labels = torch.where(torch.arange(n) % 3 == 0, (clean + 1) % 10, clean)  # clean accuracy exactly 30/45
    ratios = [0.0, 0.2, 0.5, 1.0]
    shuffled = occlusion_accuracy(
        classify,
        batches_of(images, labels, torch.randperm(n), 7),
        OcclusionSettings(ratios, 4, fill, MEAN, STD, seed=1),
    )
    ordered = occlusion_accuracy(
        classify, batches_of(images, labels, torch.arange(n), 16), OcclusionSettings(ratios, 4, fill, MEAN, STD, seed=1)
    )
    assert shuffled == ordered
    assert set(shuffled) >= {"ratios", "accuracy", "images", "patch_size", "fill", "seed"}
    assert shuffled["images"] == n and shuffled["patch_size"] == 4 and shuffled["fill"] == fill
    assert shuffled["accuracy"][0] == pytest.approx(30 / 45)  # ratio 0 = clean accuracy

    for r, ratio in enumerate(ratios):  # one image at a time, straight from the mask function
        hits = 0
        for i in range(n):
            mask = occlusion_masks(torch.tensor([i]), 32, 4, ratio, seed=1)
            hits += int(classify(occlude(images[i : i + 1], mask, fill, MEAN, STD)).argmax(1) == labels[i])
        assert shuffled["correct"][r] == hits
        assert shuffled["accuracy"][r] == pytest.approx(hits / n)


def test_fully_occluded_accuracy_is_known():
    images, classify = make_data()
    labels = torch.arange(len(images)) % 10
    result = occlusion_accuracy(
        classify, batches_of(images, labels, torch.arange(45), 10), OcclusionSettings([1.0], 4, "zero", MEAN, STD)
    )
    # every image becomes the same black image, so every prediction is that image's class
    black = normalise(torch.zeros(1, 3, 32, 32))
    expected = float((labels == classify(black).argmax(1)).float().mean())
    assert result["accuracy"] == [pytest.approx(expected)]
    assert expected == pytest.approx(5 / 45) or expected == pytest.approx(
        4 / 45
    )  # labels 0-4 occur 5 times, 5-9 four times


def test_empty_input_and_bad_arguments():
    images, classify = make_data(n=4)
    assert occlusion_accuracy(classify, [], OcclusionSettings([0.5], 4, "zero", MEAN, STD))["accuracy"] == [None]
    with pytest.raises(ValueError):
        OcclusionSettings([], 4, "zero", MEAN, STD)
    with pytest.raises(ValueError):
        OcclusionSettings([0.5], 4, "blur", MEAN, STD)


def test_settings_from_config():
    cfg = load_config(overrides=["data.image_size=64", "eval.occlusion_ratios=[0, 0.5]", "eval.occlusion_fill=mean"])
    settings = OcclusionSettings.from_config(cfg)
    assert settings == OcclusionSettings(
        (0.0, 0.5), patch_size_for(64, 16), "mean", tuple(cfg.data.mean), tuple(cfg.data.std)
    )
    assert settings.ratios == (0.0, 0.5) and all(isinstance(r, float) for r in settings.ratios)
