"""Reconstruction quality of a masked-image model: PSNR on the masked pixels per strategy, and the image rows of its
figure (masked input, prediction, prediction pasted into the visible pixels, original), which
``mixmask.report.figures.reconstruction_figure`` draws."""

from __future__ import annotations

import torch

from mixmask.data.transforms import denormalize
from mixmask.masking import MixedMasker


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
