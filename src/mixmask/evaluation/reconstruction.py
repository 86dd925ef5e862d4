"""Reconstruction quality of a masked-image model: PSNR on the masked pixels per strategy, per image so that two
models can be compared image by image (``masked_errors``), and the image rows of its figure (masked input,
prediction, prediction pasted into the visible pixels, original), which ``mixmask.report.figures.reconstruction_figure``
draws."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mixmask.data.common import Batch
from mixmask.data.transforms import denormalize
from mixmask.masking import MaskSpec, MixedMasker


def reconstructs_pixels(model: torch.nn.Module) -> bool:
    """Whether ``model(images, masks)["prediction"]`` is an image: not for a two-view (contrastive) method, nor for
    a model that predicts HOG features (``loss.target: hog``)."""
    return not model.two_views and model.target == "pixels"


def masked_psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB over the masked pixels of [0, 1] images (mean squared error over masked pixel-channels)."""
    weight = mask[:, None].float()
    mse = ((prediction - target) ** 2 * weight).sum() / (weight.sum() * prediction.shape[1]).clamp(min=1)
    return float(10 * torch.log10(1.0 / mse.clamp(min=1e-10)))


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module,
    masker: MixedMasker,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    seed: int = 0,
) -> list[dict]:
    """For every strategy of ``masker``: the four image rows of the figure and the masked-pixel PSNR.
    The same seed gives the same masks, so two runs are compared on identical inputs."""
    was_training = model.training
    model.eval()
    device = images.device
    results = []
    for index, spec in enumerate(masker.specs):
        generator = torch.Generator(device=device).manual_seed(seed * 7919 + index)
        choice = torch.full((len(images),), index, dtype=torch.long)
        masks = masker.masks_for(choice, images.shape[-1], generator=generator)
        prediction = denormalize(model(images, masks)["prediction"], mean, std)
        original = denormalize(images, mean, std)
        m = masks.pixels[:, None]
        masked_input = torch.where(m, torch.full_like(original, 0.5), original)  # grey where masked
        pasted = torch.where(m, prediction, original)
        results.append(
            {
                "strategy": index,
                "patch_size": spec.patch_size,
                "ratio": spec.ratio,
                "stage": masker.stages[index],
                "psnr_masked": masked_psnr(prediction, original, masks.pixels),
                "rows": {"masked": masked_input, "prediction": prediction, "pasted": pasted, "original": original},
            }
        )
    model.train(was_training)
    return results


def strategy_names(masker: MixedMasker) -> list[str]:
    """How per-image records name the masker's strategies: ``p8_r0.6`` (``_blockwise`` or ``_uniform`` for those
    kinds), the same name in every model that masks so, whatever stage its token enters at; a second strategy of the
    same masks in one model gets its stage appended, ``p8_r0.6_s3``."""
    names: list[str] = []
    for spec, stage in zip(masker.specs, masker.stages, strict=True):
        name = f"p{spec.patch_size}_r{spec.ratio:g}" + ("" if spec.kind == "random" else f"_{spec.kind}")
        names.append(f"{name}_s{stage}" if name in names else name)
    return names


def _mask_seed(seed: int, spec: MaskSpec, first_index: int) -> int:
    """From the strategy itself, not its place in a model's list, so every model with it draws the same masks."""
    return (seed * 1_000_003 + first_index) * 7919 + spec.patch_size * 1009 + round(spec.ratio * 1000)


@torch.no_grad()
def masked_errors(
    model: torch.nn.Module,
    masker: MixedMasker,
    batches: Iterable[Batch],
    mean: list[float],
    std: list[float],
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """Per image and strategy of ``masker``: the squared error summed over the masked pixel-channels of the [0, 1]
    image (``sse``) and their number (``count``), so PSNR over any set of images is 10 log10(sum count / sum sse).
    A batch's masks come from (``seed``, the strategy, the batch's first image index): models with the same strategy,
    scored with the same batches, see the same masks on the same images. Returns the images' dataset indices and
    ``{name: {"sse": [...], "count": [...]}}``, the strategies in order, named by ``strategy_names``."""
    was_training = model.training
    model.eval()
    indices: list[int] = []
    names = strategy_names(masker)
    errors = {name: {"sse": [], "count": []} for name in names}
    for batch in batches:
        images = batch.images.to(device)
        original = denormalize(images, mean, std)
        for index, spec in enumerate(masker.specs):
            generator = torch.Generator(device=device).manual_seed(_mask_seed(seed, spec, int(batch.indices[0])))
            choice = torch.full((len(images),), index, dtype=torch.long)
            masks = masker.masks_for(choice, images.shape[-1], generator=generator)
            prediction = denormalize(model(images, masks)["prediction"].float(), mean, std)
            masked = masks.pixels[:, None].float()
            record = errors[names[index]]
            record["sse"] += ((prediction - original).square() * masked).sum(dim=(1, 2, 3)).double().tolist()
            record["count"] += (masked.sum(dim=(1, 2, 3)) * images.shape[1]).tolist()
        indices += batch.indices.tolist()
    model.train(was_training)
    return indices, errors
