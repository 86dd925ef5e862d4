"""Reconstruction quality of a masked-image model: PSNR on the masked pixels per strategy, and the figure grid
(masked input, prediction, prediction pasted into the visible pixels, original)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mixmask.data.transforms import denormalize  # noqa: E402
from mixmask.masking import MixedMasker  # noqa: E402


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


def save_reconstruction_figure(result: dict, path: str | Path, max_images: int = 8) -> Path:
    """One PNG: a row per image, columns masked input | prediction | pasted | original."""
    rows = result["rows"]
    count = min(max_images, len(rows["original"]))
    columns = ["masked", "prediction", "pasted", "original"]
    fig, axes = plt.subplots(count, 4, figsize=(4 * 1.6, count * 1.6), squeeze=False)
    for r in range(count):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(rows[name][r].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(
        f"patch {result['patch_size']}, ratio {result['ratio']}, stage {result['stage']}: "
        f"masked PSNR {result['psnr_masked']:.2f} dB",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
