import numpy as np
import pytest
import torch
from PIL import Image

from mixmask.config import load_config
from mixmask.data.common import collate
from mixmask.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    complementary_views_transform,
    denormalize,
    eval_transform,
    eval_transform_for,
    input_augment_transform,
    multi_crop_transform,
    normalize,
    symmetric_views_transform,
    train_transform,
    two_view_transform,
)

NO_NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def coordinate_image(size=64):
    """Red = 4 * x, green = 4 * y: every pixel says where it came from."""
    y, x = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([4 * x, 4 * y, np.zeros_like(x)], axis=2).astype(np.uint8))


@pytest.mark.parametrize("scale", [(0.8, 1.0), (0.08, 1.0)])
def test_random_crop_output_shape_dtype_and_determinism(scale):
    image = coordinate_image().resize((80, 50))
    transform = train_transform(32, scale)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    assert torch.equal(transform(image), first)
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert any(not torch.equal(transform(image), first) for _ in range(5))


def test_default_scales_follow_the_papers():
    data = load_config().data
    assert data.pretrain_scale == [0.8, 1.0] and data.finetune_scale == [0.08, 1.0]
    assert train_transform(32, scale=[0.2, 0.5]).transforms[0].scale == (0.2, 0.5)


def test_eval_transform_for_a_data_config():
    data = load_config(overrides=["data.image_size=64", "data.crop_pct=0.75", "data.mean=[0.5, 0.5, 0.5]"]).data
    image = coordinate_image().resize((70, 60))
    assert torch.equal(eval_transform_for(data)(image), eval_transform(64, 0.75, [0.5] * 3, data.std)(image))


def test_crop_scale_is_respected():
    """A quarter-area square crop of a 64 px image resized to 32 px is a copied 32 x 32 window of the input."""
    source = np.asarray(coordinate_image()).astype(np.float32) / 255
    transform = train_transform(32, scale=(0.25, 0.25), ratio=(1.0, 1.0), hflip=False, **NO_NORM)
    corners = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(coordinate_image()).permute(1, 2, 0).numpy()
        top, left = round(out[0, 0, 1] * 255 / 4), round(out[0, 0, 0] * 255 / 4)
        assert np.allclose(out, source[top : top + 32, left : left + 32], atol=1e-6)
        corners.add((top, left))
    assert len(corners) > 1


def test_hflip_switch():
    image = coordinate_image(32)
    plain = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    with_flip = train_transform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), **NO_NORM)
    outs = []
    for seed in range(10):
        torch.manual_seed(seed)
        outs.append(with_flip(image))
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, plain.flip(-1)) for o in outs)
    without = train_transform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, **NO_NORM)
    assert all(torch.equal(without(image), plain) for _ in range(5))


def test_normalisation_of_a_constant_image():
    color = (128, 64, 255)
    out = eval_transform(32)(Image.new("RGB", (50, 40), color))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for channel in range(3):
        expected = (color[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out[channel], torch.full((32, 32), expected), atol=1e-5)


def test_eval_crop_pct():
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[...] = (255, 0, 0)
    array[:2, :] = array[-2:, :] = array[:, :2] = array[:, -2:] = (0, 0, 255)  # a 2 px blue frame
    image = Image.fromarray(array)
    cropped = eval_transform(32, crop_pct=0.875, **NO_NORM)(image)  # resize to 36, crop 32: the frame goes
    assert cropped.shape == (3, 32, 32) and torch.all(cropped[2] == 0) and torch.all(cropped[0] == 1)
    whole = eval_transform(32, crop_pct=1.0, **NO_NORM)(image)  # resize to 32, no crop: the frame stays
    assert whole[2, 0, 16] > 0.5 and whole[2, 16, 16] == 0
    same_size = coordinate_image(32)
    expected = (torch.from_numpy(np.asarray(same_size).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(eval_transform(32, crop_pct=1.0, mean=[0.5] * 3, std=[0.25] * 3)(same_size), expected)


@pytest.mark.parametrize("scale", [(0.0, 1.0), (0.9, 0.5), (0.5, 1.2), (0.5,)])
def test_bad_scale_is_a_clear_error(scale):
    with pytest.raises(ValueError, match=r"scale must be \(min, max\) with 0 < min <= max <= 1"):
        train_transform(32, scale=scale)


def test_bad_crop_pct_ratio_and_size():
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\]"):
        eval_transform(32, crop_pct=1.5)
    with pytest.raises(ValueError, match="ratio must be"):
        train_transform(32, (0.08, 1.0), ratio=(2.0, 1.0))
    with pytest.raises(ValueError, match="size must be a positive"):
        train_transform(0, (0.08, 1.0))


def test_denormalize_inverts_normalize_and_clamps():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 5, 5)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalized = (images - mean) / std
    assert torch.allclose(denormalize(normalized), images, atol=1e-6)
    assert torch.allclose(denormalize(normalized[0]), images[0], atol=1e-6)
    assert denormalize(torch.full((3, 2, 2), 10.0)).eq(1).all()
    assert torch.allclose(denormalize(torch.zeros(3, 1, 1), [0.5] * 3, [2.0] * 3), torch.full((3, 1, 1), 0.5))
    assert torch.equal(denormalize(normalized.bfloat16()), denormalize(normalized.bfloat16().float()))  # in float32


def test_input_augmentations_change_only_the_input():
    """(clean, augmented) of one crop: patch masking blacks out exactly ceil(0.75 * cells) cells, self-cutmix
    changes one square box, colour jitter keeps where things are; the clean crop is the plain pretraining crop."""
    image = coordinate_image()
    torch.manual_seed(3)
    pair = input_augment_transform(32, (0.8, 1.0), ["patch_mask"], 0.75, 8, **NO_NORM)(image)
    clean, masked = pair
    assert pair.shape == (2, 3, 32, 32)
    black = (masked == 0).all(0).view(4, 8, 4, 8).all(3).all(1)  # 4x4 cells of 8 px
    assert int(black.sum()) == 12 and torch.equal(masked[:, ~black.repeat_interleave(8, 0).repeat_interleave(8, 1)],
                                                   clean[:, ~black.repeat_interleave(8, 0).repeat_interleave(8, 1)])  # fmt: skip
    torch.manual_seed(3)
    assert torch.equal(train_transform(32, (0.8, 1.0), **NO_NORM)(image), clean)  # the same crop and flip

    torch.manual_seed(4)
    clean, pasted = input_augment_transform(32, (0.8, 1.0), ["self_cutmix"], **NO_NORM)(image)
    changed = (clean != pasted).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert 0 < changed.sum() <= 16 * 16 and rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16

    torch.manual_seed(5)
    pairs = [input_augment_transform(32, (0.8, 1.0), ["color_jitter"], **NO_NORM)(image) for _ in range(10)]
    assert any(not torch.equal(a, b) for a, b in pairs)
    for _, jittered in pairs:  # colour changes, geometry does not: the red ramp still rises along x
        assert (jittered.mean(0).diff(dim=1) >= -0.05).float().mean() > 0.9


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_symmetric_views_are_two_different_draws_of_one_pipeline(method):
    image = coordinate_image()
    transform = symmetric_views_transform(method, 32, (0.2, 1.0))
    assert transform.first is transform.second
    torch.manual_seed(0)
    views = transform(image)
    assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1])
    torch.manual_seed(0)
    assert torch.equal(transform(image), views)


def test_multi_crop_gives_global_and_local_crops_that_batch_by_size():
    image = coordinate_image()
    transform = multi_crop_transform(32, 16, (0.4, 1.0), (0.05, 0.4), local_count=3)
    global_crops, local_crops = transform(image)
    assert global_crops.shape == (2, 3, 32, 32) and local_crops.shape == (3, 3, 16, 16)
    batch = collate([(transform(image), 0, i) for i in range(4)])
    assert [tuple(part.shape) for part in batch.images] == [(4, 2, 3, 32, 32), (4, 3, 3, 16, 16)]
    assert len(batch) == 4
    assert multi_crop_transform(32, 16, (0.4, 1.0), (0.05, 0.4), local_count=0)(image).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "build",
    [
        lambda **norm: train_transform(32, (0.2, 1.0), **norm),
        lambda **norm: two_view_transform(32, (0.2, 1.0), **norm),
        lambda **norm: symmetric_views_transform("simclr", 32, (0.2, 1.0), **norm),
        lambda **norm: multi_crop_transform(32, 16, (0.4, 1.0), (0.05, 0.4), local_count=2, **norm),
        lambda **norm: input_augment_transform(32, (0.8, 1.0), ["self_cutmix", "color_jitter", "patch_mask"], **norm),
        lambda **norm: complementary_views_transform(32, (0.8, 1.0), ["patch_mask"], **norm),
    ],
    ids=["train", "two_view", "symmetric", "multi_crop", "input_augment", "complementary"],
)
def test_uint8_crops_normalised_later_equal_normalised_crops(build):
    """The training path (uint8 crops, ``normalize`` after the loader) gives bitwise today's float crops."""
    image = coordinate_image().resize((80, 50))
    for seed in range(3):
        torch.manual_seed(seed)
        reference = build()(image)
        torch.manual_seed(seed)
        raw = build(mean=None, std=None)(image)
        parts = zip(reference, raw, strict=True) if isinstance(raw, tuple) else [(reference, raw)]
        for expected, crops in parts:
            assert crops.dtype == torch.uint8
            assert torch.equal(normalize(crops, IMAGENET_MEAN, IMAGENET_STD), expected)
