"""Reconstruction losses: masked spatial losses, the focal frequency loss, and A2MIM's treatment of unmasked pixels.

The focal frequency loss (Jiang et al., ICCV 2021) equals the ``focal-frequency-loss`` package's
``FocalFrequencyLoss(alpha, ave_spectrum, log_matrix, batch_matrix)`` but is computed differently, for speed:
- the DFT is linear, so F(pred) - F(target) = F(pred - target): one transform instead of two, and with
  ``ave_spectrum`` (a batch mean of spectra) one transform of the batch-mean difference image;
- inputs are real, so ``rfft2`` gives half the spectrum; the other half mirrors it (Hermitian symmetry), so each
  column that has a mirror counts twice in the mean and the maxima used to normalise the weights are unchanged;
- always in fp32 (cuFFT in half precision fails on non-power-of-two sizes such as 224), and without the package's
  ``.item()`` range check, which would force a host-device sync every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_frequency_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    log_matrix: bool = True,
    batch_matrix: bool = True,
    ave_spectrum: bool = True,
    focal: bool = True,
) -> torch.Tensor:
    """Focal frequency loss between images (N, C, H, W); A2MIM's settings are the defaults. ``focal=False`` weighs
    every frequency 1: the plain frequency distance (A2MIM's ablation "L_freq without weights")."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        diff = pred.float() - target.float()
        if ave_spectrum:
            diff = diff.mean(0, keepdim=True)
        spectrum = torch.fft.rfft2(diff, norm="ortho")
        distance = spectrum.real.square() + spectrum.imag.square()  # |F(pred) - F(target)|^2

        with torch.no_grad():  # the spectrum weights follow the current errors but are constants for the gradient
            weight = distance.sqrt() ** alpha if focal else torch.ones_like(distance)
            if focal and log_matrix:
                weight = torch.log1p(weight)
            if focal and batch_matrix:
                weight = weight / weight.max()
            elif focal:
                weight = weight / weight.amax(dim=(-2, -1), keepdim=True)
            weight = torch.nan_to_num(weight, nan=0.0).clamp(0.0, 1.0)

        width = pred.shape[-1]
        mirrored = torch.full((spectrum.shape[-1],), 2.0, device=pred.device)
        mirrored[0] = 1.0
        if width % 2 == 0:
            mirrored[-1] = 1.0  # the Nyquist column is its own mirror
        full_size = distance[..., 0].numel() * width
        return (weight * distance * mirrored).sum() / full_size


def masked_spatial_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "focal_l1",
    focal_alpha: float = 0.2,
    focal_gamma: float = 1.0,
) -> torch.Tensor:
    """Mean loss over the masked pixel-channels. ``mask`` is (N, H, W) bool, True = masked.

    focal_l1 is the official A2MIM ResNet loss: ``|d| * (2 * sigmoid(alpha * |d|) - 1) ** gamma``.
    """
    if kind == "l1":
        loss = F.l1_loss(pred, target, reduction="none")
    elif kind == "l2":
        loss = F.mse_loss(pred, target, reduction="none")
    elif kind == "focal_l1":
        error = (pred - target).abs()
        focus = 2 * torch.sigmoid(focal_alpha * error) - 1
        loss = error * (focus if focal_gamma == 1 else focus**focal_gamma)  # skip pow: elementwise ops dominate on CPU
    else:
        raise ValueError(f"unknown spatial loss {kind!r}; expected l1, focal_l1 or l2")
    weight = mask[:, None].to(loss.dtype)
    return (loss * weight).sum() / (weight.sum() * pred.shape[1]).clamp(min=1.0)


def frequency_input(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, unmasked: str = "mixed", unmasked_weight: float = 1e-3
) -> torch.Tensor:
    """What the frequency loss sees: the prediction on masked pixels and, on unmasked ones, a stand-in that carries
    only ``unmasked_weight`` of the gradient.

    prediction: the prediction itself (with weight 0 this is the A2MIM paper's equation, pred * M + sg(pred) * (1 - M));
    mixed: 0.5 * sg(pred) + 0.5 * target (the official ResNet-50 setting, weight 1e-3); target: the target.
    """
    if unmasked == "prediction":
        stand_in = pred.detach()
    elif unmasked == "mixed":
        stand_in = 0.5 * pred.detach() + 0.5 * target
    elif unmasked == "target":
        stand_in = target
    else:
        raise ValueError(f"unknown unmasked mode {unmasked!r}; expected prediction, mixed or target")
    m = mask[:, None].to(pred.dtype)
    keep = m + (1 - m) * unmasked_weight
    return pred * keep + stand_in * (1 - keep)
