"""Image transforms of the Mix-and-Mask / A2MIM recipes (PIL image in, normalised float tensor out).

Pretraining crops gently (RandomResizedCrop scale 0.8-1, as A2MIM), finetuning crops hard (0.08-1, the usual
ImageNet recipe), evaluation resizes the shorter side to ``size / crop_pct`` and centre-crops. Sizes and scales
come from the config. Randomness comes from torch's global generator, so ``torch.manual_seed`` fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mixmask._compat import torchvision

T = torchvision.transforms

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check(size: int, scale: Sequence[float], ratio: Sequence[float]) -> None:
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(
            f"scale must be (min, max) with 0 < min <= max <= 1 (fractions of the image area), got {scale}"
        )
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (min, max) aspect ratios with 0 < min <= max, got {ratio}")


def _random_crop_transform(
    size: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> T.Compose:
    _check(size, scale, ratio)
    steps = [
        T.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), interpolation=T.InterpolationMode.BILINEAR)
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def pretrain_transform(
    size: int,
    scale: Sequence[float] = (0.8, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """MIM pretraining: RandomResizedCrop (bilinear, A2MIM's scale 0.8-1), horizontal flip, ToTensor, Normalize."""
    return _random_crop_transform(size, scale, ratio, hflip, mean, std)


def finetune_transform(
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Supervised finetuning: the pretraining pipeline with the standard ImageNet crop scale 0.08-1."""
    return _random_crop_transform(size, scale, ratio, hflip, mean, std)


def eval_transform(
    size: int,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Evaluation: resize the shorter side to ``floor(size / crop_pct)`` (bilinear), centre-crop ``size``,
    ToTensor, Normalize. ``crop_pct=1`` on an image already ``size`` square changes nothing but the scaling."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1] (the centre crop's share of the resized side), got {crop_pct}")
    return T.Compose(
        [
            T.Resize(math.floor(size / crop_pct), interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def denormalize(
    tensor: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo ``Normalize`` on a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor and clamp to [0, 1], for figures."""
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(shape)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(shape)
    return (tensor * std_t + mean_t).clamp(0, 1)
