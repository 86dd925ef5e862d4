"""Image transforms of the Mix-and-Mask / A2MIM recipes (PIL image in, normalised float tensor out; with ``mean``
and ``std`` None, the training transforms leave the crops as uint8 for ``normalize`` on the device).

Training crops at the config's scale: pretraining gently (RandomResizedCrop scale 0.8-1, as A2MIM), finetuning hard
(0.08-1, the usual ImageNet recipe); evaluation resizes the shorter side to ``size / crop_pct`` and centre-crops;
MoCo v3 and BYOL take two asymmetrically augmented views of each image (``two_view_transform``), SimCLR and SimSiam
two alike (``symmetric_views_transform``), DINO multi-crop views (``multi_crop_transform``); ``data.input_augment`` adds
augmentations to a masked-image model's input only (``input_augment_transform``). Sizes and scales come from the
config. Randomness comes from torch's global generator, so ``torch.manual_seed`` fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter

from mixmask._compat import torchvision
from mixmask.config import DataConfig

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


def train_transform(
    size: int,
    scale: Sequence[float],
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    colour: Sequence[Callable] = (),
    bicubic: bool = False,
) -> T.Compose:
    """Training: RandomResizedCrop (bilinear; ``bicubic`` as SimCLR and DINO) to ``size`` at ``scale``
    (pretraining: A2MIM's 0.8-1; finetuning: the ImageNet recipe's 0.08-1; both from the config), the ``colour``
    steps, horizontal flip (if ``hflip``), ToTensor, Normalize (``mean`` None: a uint8 tensor, see ``normalize``)."""
    _check(size, scale, ratio)
    mode = T.InterpolationMode.BICUBIC if bicubic else T.InterpolationMode.BILINEAR
    steps = [T.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), interpolation=mode), *colour]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return _copy(steps, [], mean, std)


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


def eval_transform_for(data: DataConfig) -> T.Compose:
    """``eval_transform`` with the size, crop and normalisation of a config's ``data`` section."""
    return eval_transform(data.image_size, data.crop_pct, data.mean, data.std)


def denormalize(
    tensor: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo ``Normalize`` on a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor, in float32 (a bf16 prediction too), and
    clamp to [0, 1]: pixels for figures and PSNR."""
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=tensor.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=tensor.device).view(shape)
    return (tensor.float() * std_t + mean_t).clamp(0, 1)


class _GaussianBlur:
    """PIL's Gaussian blur with sigma drawn uniformly from ``sigma`` by torch (MoCo v3 blurs with PIL, drawing sigma
    from Python's ``random``). PIL's C filter is about 5x faster than torchvision's convolution on one thread, and
    far faster when torch's threads compete with other work, which matters in the data loader."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class _TwoViews:
    """Applies two pipelines to one image and stacks the results: (2, 3, size, size)."""

    def __init__(self, first: T.Compose, second: T.Compose):
        self.first, self.second = first, second

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.first(image), self.second(image)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n first={self.first},\n second={self.second})"


def _byol_colour(blur_p: float, solarize_p: float) -> list:
    """BYOL's colour steps (MoCo v3's and DINO's too): colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale with
    p 0.2, PIL's Gaussian blur (sigma 0.1-2 px) with p ``blur_p``, solarisation (threshold 128) with p
    ``solarize_p``."""
    blur = _GaussianBlur(sigma=(0.1, 2.0))
    colour = [
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        blur if blur_p == 1.0 else T.RandomApply([blur], p=blur_p),
    ]
    return colour + ([T.RandomSolarize(threshold=128, p=solarize_p)] if solarize_p > 0 else [])


def two_view_transform(
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Callable[..., torch.Tensor]:
    """MoCo v3's two asymmetric views (BYOL's augmentations): PIL image in, (2, 3, size, size) tensor out.

    Both views: RandomResizedCrop(size, scale) (bilinear), colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale
    with p 0.2, Gaussian blur (PIL's, as MoCo v3; sigma uniform in 0.1-2 px at every ``size``), horizontal flip
    (if ``hflip``), ToTensor, Normalize. View 1 is always blurred and never solarized; view 2 is blurred with p 0.1
    and solarized (threshold 128) with p 0.2. Every random draw comes from torch's global generator (MoCo v3 draws
    the blur's sigma from Python's ``random``, which ``torch.manual_seed`` would not fix).
    """

    def view(blur_p: float, solarize_p: float) -> T.Compose:
        return train_transform(size, scale, ratio, hflip, mean, std, _byol_colour(blur_p, solarize_p))

    return _TwoViews(view(blur_p=1.0, solarize_p=0.0), view(blur_p=0.1, solarize_p=0.2))


def symmetric_views_transform(
    method: str,
    size: int,
    scale: Sequence[float],
    hflip: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Callable[..., torch.Tensor]:
    """Two views drawn alike, (2, 3, size, size), with ``method``'s colour augmentation after the crop:
    simclr: colour jitter at strength 1 (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale with p 0.2, blur with p 0.5
    (sigma 0.1-2 px), bicubic crops; simsiam: jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, blur p 0.5,
    bilinear crops."""
    strength = {"simclr": (0.8, 0.8, 0.8, 0.2), "simsiam": (0.4, 0.4, 0.4, 0.1)}[method]
    colour = [
        T.RandomApply([T.ColorJitter(*strength)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([_GaussianBlur(sigma=(0.1, 2.0))], p=0.5),
    ]
    view = train_transform(size, scale, hflip=hflip, mean=mean, std=std, colour=colour, bicubic=method == "simclr")
    return _TwoViews(view, view)


class _MultiCrop:
    """DINO's crops of one image: the two global crops (2, 3, size, size) and, when there are local ones, the pair
    (global crops, local crops (n, 3, local, local))."""

    def __init__(self, first: T.Compose, second: T.Compose, local: T.Compose, local_count: int):
        self.first, self.second, self.local, self.local_count = first, second, local, local_count

    def __call__(self, image) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        global_crops = torch.stack([self.first(image), self.second(image)])
        if not self.local_count:
            return global_crops
        return global_crops, torch.stack([self.local(image) for _ in range(self.local_count)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(first={self.first}, second={self.second}, {self.local_count} x {self.local})"


def multi_crop_transform(
    size: int,
    local_size: int,
    global_scale: Sequence[float],
    local_scale: Sequence[float],
    local_count: int,
    hflip: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Callable:
    """DINO's multi-crop (``DataAugmentationDINO``): bicubic crops, flips, colour jitter (0.4, 0.4, 0.2, 0.1) with
    p 0.8 and grayscale with p 0.2 on every crop; the first global crop always blurred, the second blurred with
    p 0.1 and solarised with p 0.2, each local crop (``local_size`` px) blurred with p 0.5."""

    def crop(crop_size: int, scale: Sequence[float], blur_p: float, solarize_p: float = 0.0) -> T.Compose:
        colour = _byol_colour(blur_p, solarize_p)
        return train_transform(crop_size, scale, hflip=hflip, mean=mean, std=std, colour=colour, bicubic=True)

    return _MultiCrop(
        crop(size, global_scale, 1.0),
        crop(size, global_scale, 0.1, solarize_p=0.2),
        crop(local_size, local_scale, 0.5),
        local_count,
    )


class _SelfCutMix:
    """Self-cutmix (occlusion-invariance supplement A): a random square crop of the image (side 25-100 % of the
    shorter side) resized (bilinear) to a square box (side 25-50 %) and pasted at a random place in the same image.
    The paper gives no sizes: these are ours."""

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        side = min(width, height)
        crop = max(1, round(torch.empty(1).uniform_(0.25, 1.0).item() * side))
        box = max(1, round(torch.empty(1).uniform_(0.25, 0.5).item() * side))
        x, y = (int(torch.randint(0, n - crop + 1, ())) for n in (width, height))
        patch = image.crop((x, y, x + crop, y + crop)).resize((box, box), Image.Resampling.BILINEAR)
        out = image.copy()
        out.paste(patch, tuple(int(torch.randint(0, n - box + 1, ())) for n in (width, height)))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _PatchMask:
    """Blacks out ``ceil(ratio * cells)`` cells of a grid of ``patch``-pixel squares (the last row and column
    cropped to the image), on a [0, 1] tensor before Normalize."""

    def __init__(self, ratio: float, patch: int):
        self.ratio, self.patch = ratio, patch

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        height, width = tensor.shape[-2:]
        rows, cols = -(-height // self.patch), -(-width // self.patch)
        cells = torch.zeros(rows * cols, dtype=torch.bool)
        cells[torch.randperm(rows * cols)[: math.ceil(self.ratio * rows * cols)]] = True
        pixels = cells.view(rows, cols).repeat_interleave(self.patch, 0).repeat_interleave(self.patch, 1)
        return tensor.masked_fill(pixels[:height, :width], 0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio}, patch={self.patch})"


def _simsiam_colour() -> list:
    """SimSiam's colour augmentation: ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with p 0.2."""
    return [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]


def _one_crop(size: int, scale: Sequence[float], hflip: bool) -> list:
    _check(size, scale, (3 / 4, 4 / 3))
    crop = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BILINEAR)]
    return crop + ([T.RandomHorizontalFlip()] if hflip else [])


def _copy(pil_steps: list, tensor_steps: list, mean: Sequence[float] | None, std: Sequence[float] | None) -> T.Compose:
    """One copy of the crop: PIL steps, ToTensor, steps on the [0, 1] tensor, Normalize; with ``mean`` None,
    PILToTensor and the tensor steps on uint8 (0-255), normalised later by ``normalize``."""
    if mean is None or std is None:
        return T.Compose([*pil_steps, T.PILToTensor(), *tensor_steps])
    return T.Compose([*pil_steps, T.ToTensor(), *tensor_steps, T.Normalize(mean, std)])


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 batch (``(..., 3, H, W)``, 0-255) as float32 normalised with ``mean`` and ``std``, wherever it lies:
    the same operations as ToTensor and Normalize, so the same numbers as normalising in the loader."""
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return images.float().div_(255).sub_(mean_t).div_(std_t)


def _input_steps(augment: Sequence[str], mask_ratio: float, mask_patch: int, colour: bool = True):
    """``data.input_augment``'s steps, in this order: self-cutmix, colour (if ``colour``), black patches."""
    pil_steps = ([_SelfCutMix()] if "self_cutmix" in augment else []) + (
        _simsiam_colour() if colour and "color_jitter" in augment else []
    )
    return pil_steps, [_PatchMask(mask_ratio, mask_patch)] if "patch_mask" in augment else []


def input_augment_transform(
    size: int,
    scale: Sequence[float],
    augment: Sequence[str],
    mask_ratio: float = 0.75,
    mask_patch: int = 16,
    hflip: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> T.Compose:
    """The pretraining crop (RandomResizedCrop at ``scale``, flip), returned as (clean, augmented): the model's
    target and its input, (2, 3, size, size). ``augment`` (any of, applied in this order): ``self_cutmix``;
    ``color_jitter``, SimSiam's colour augmentation (ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with
    p 0.2); ``patch_mask``, ``mask_ratio`` of the ``mask_patch``-pixel cells black."""
    augmented = _copy(*_input_steps(augment, mask_ratio, mask_patch), mean, std)
    return T.Compose([*_one_crop(size, scale, hflip), _TwoViews(_copy([], [], mean, std), augmented)])


def complementary_views_transform(
    size: int,
    scale: Sequence[float],
    augment: Sequence[str] = (),
    mask_ratio: float = 0.75,
    mask_patch: int = 16,
    hflip: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> T.Compose:
    """C-MAE's two copies of one crop, each with its own SimSiam colour augmentation, (2, 3, size, size): the first
    for the online encoder (which also gets ``augment``'s self-cutmix and black patches), the second for the
    target encoder."""
    pil_steps, tensor_steps = _input_steps(augment, mask_ratio, mask_patch, colour=False)
    online = _copy([*pil_steps, *_simsiam_colour()], tensor_steps, mean, std)
    target = _copy(_simsiam_colour(), [], mean, std)
    return T.Compose([*_one_crop(size, scale, hflip), _TwoViews(online, target)])
