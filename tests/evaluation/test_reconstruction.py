import math

import pytest
import torch

from mixmask.config import load_config
from mixmask.data.common import Batch
from mixmask.data.transforms import denormalize
from mixmask.evaluation.reconstruction import _mask_seed, masked_errors, masked_psnr, strategy_names
from mixmask.models.factory import build_pretrain_model

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def tiny(strategies: str):
    cfg = load_config(None, ["data.image_size=32", f"masking.strategies={strategies}"])
    torch.manual_seed(0)
    return build_pretrain_model(cfg)


def batches(count=10, size=4):
    images = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for start in range(0, count, size):
        index = torch.arange(start, min(start + size, count))
        yield Batch(images[index], torch.zeros(len(index), dtype=torch.long), index)


def test_per_image_errors_pool_to_the_psnr_of_the_same_masks():
    """Summed over the images, the per-image squared errors and counts give the PSNR masked_psnr computes on the same
    predictions and masks, batch by batch; every masked pixel-channel is counted once."""
    model, masker = tiny("[{patch_size: 8, ratio: 0.5}, {patch_size: 4, ratio: 0.75}]")
    indices, errors = masked_errors(model, masker, batches(), MEAN, STD, seed=3)
    assert indices == list(range(10)) and list(errors) == ["p8_r0.5", "p4_r0.75"]
    assert errors["p8_r0.5"]["count"] == [3 * 8 * 64] * 10  # 8 of the 16 cells of 8 x 8 pixels, 3 channels
    assert errors["p4_r0.75"]["count"] == [3 * 48 * 16] * 10
    # the same masks again: the first batch's PSNR from masked_psnr on a direct forward pass
    first = next(batches())
    generator = torch.Generator().manual_seed(_mask_seed(3, masker.specs[0], 0))
    masks = masker.masks_for(torch.zeros(4, dtype=torch.long), 32, generator=generator)
    with torch.no_grad():
        model.eval()
        prediction = model(first.images, masks)["prediction"]
    denorm = [denormalize(t, MEAN, STD) for t in (prediction, first.images)]
    expected = masked_psnr(*denorm, masks.pixels)
    sse, count = errors["p8_r0.5"]["sse"][:4], errors["p8_r0.5"]["count"][:4]
    assert 10 * math.log10(sum(count) / sum(sse)) == pytest.approx(expected, abs=1e-4)


class GreyPredictor(torch.nn.Module):
    """Predicts mid-grey everywhere: its squared error on an image depends on which pixels the masks hide only."""

    def forward(self, images, masks):
        return {"prediction": torch.zeros_like(images)}  # 0 normalised = the mean, 0.5 in [0, 1]


def test_models_with_the_same_strategy_are_scored_on_the_same_masks():
    """Masks follow the strategy, not its place in a model's list or its token stage: with a prediction that ignores
    the input, a masker of patch 8 alone and one mixing patch 4 and patch 8 (at another stage) give the same squared
    error for patch 8 on every image; another seed gives other masks, so other errors."""
    _, alone = tiny("[{patch_size: 8, ratio: 0.6}]")
    _, mixed = tiny("[{patch_size: 4, ratio: 0.6}, {patch_size: 8, ratio: 0.6, stage: 1}]")
    _, a = masked_errors(GreyPredictor(), alone, batches(), MEAN, STD)
    _, b = masked_errors(GreyPredictor(), mixed, batches(), MEAN, STD)
    assert a["p8_r0.6"]["sse"] == b["p8_r0.6"]["sse"] and a["p8_r0.6"]["count"] == b["p8_r0.6"]["count"]
    _, other_seed = masked_errors(GreyPredictor(), alone, batches(), MEAN, STD, seed=1)
    assert all(x != y for x, y in zip(a["p8_r0.6"]["sse"], other_seed["p8_r0.6"]["sse"], strict=True))


def test_two_strategies_with_the_same_masks_are_told_apart_by_their_stage():
    _, masker = tiny("[{patch_size: 8, ratio: 0.6, stage: 1}, {patch_size: 8, ratio: 0.6, stage: 2}]")
    assert strategy_names(masker) == ["p8_r0.6", "p8_r0.6_s2"]
