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
        return focal_frequency_distance(diff, alpha, log_matrix, batch_matrix, focal)


def focal_frequency_distance(
    diff: torch.Tensor, alpha: float = 1.0, log_matrix: bool = True, batch_matrix: bool = True, focal: bool = True
) -> torch.Tensor:
    """The focal frequency loss of a difference ``pred - target`` (N, C, H, W); with ``ave_spectrum`` that is the
    batch mean of the differences (N = 1), which ``masked_reconstruction_losses`` gives."""
    with torch.autocast(device_type=diff.device.type, enabled=False):
        spectrum = torch.fft.rfft2(diff.float(), norm="ortho")
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

        width = diff.shape[-1]
        mirrored = torch.full((spectrum.shape[-1],), 2.0, device=diff.device)
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


def masked_reconstruction_losses(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "focal_l1",
    focal_alpha: float = 0.2,
    focal_gamma: float = 1.0,
    unmasked: str = "mixed",
    unmasked_weight: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A2MIM's two reconstruction terms of a prediction: ``masked_spatial_loss(pred, target, mask, kind, ...)`` and
    the batch mean of what the frequency loss compares, ``(frequency input - target).mean(0)``, to be weighed by
    ``focal_frequency_distance`` (the focal frequency loss with ``ave_spectrum``, A2MIM's setting).

    The frequency input is the prediction on masked pixels and, on unmasked ones, a stand-in that carries only
    ``unmasked_weight`` (w) of the gradient: ``pred * keep + stand_in * (1 - keep)`` with keep = 1 on masked pixels and
    w on unmasked ones, the stand-in being the detached prediction (``prediction``: with w = 0 the A2MIM paper's
    ``pred * M + sg(pred) * (1 - M)``), ``0.5 * sg(pred) + 0.5 * target`` (``mixed``, the official ResNet-50 setting,
    w = 1e-3) or the target (``target``). Minus the target that is ``a * (pred - target)`` with a = 1 on masked pixels
    and 1, (1 + w) / 2 or w on unmasked ones, and its gradient is ``keep``.

    Both terms are computed together, their gradient written out (``_MaskedReconstruction``):
    autograd through the composed elementwise operations makes some 35 passes over prediction-sized tensors, this
    about 15 (with the frequency distance, forward + backward on a 64 x 3 x 64 x 64 batch on the CPU: 1.29 x
    [1.26, 1.32] as fast). Tests compare values and gradients with autograd through the composition in float64."""
    if kind not in ("l1", "l2", "focal_l1"):
        raise ValueError(f"unknown spatial loss {kind!r}; expected l1, focal_l1 or l2")
    unmasked_share = {"prediction": 1.0, "mixed": (1 + unmasked_weight) / 2, "target": unmasked_weight}.get(unmasked)
    if unmasked_share is None:
        raise ValueError(f"unknown unmasked mode {unmasked!r}; expected prediction, mixed or target")
    return _MaskedReconstruction.apply(
        pred, target, mask, kind, focal_alpha, focal_gamma, unmasked_share, unmasked_weight
    )


class _MaskedReconstruction(torch.autograd.Function):
    """``masked_reconstruction_losses`` with its gradient computed in the forward pass (in fp32, or fp64 for fp64
    input): d = pred - target; the spatial term is sum(l(d) * M) / (sum(M) * C), its gradient l'(d) * M / (sum(M) * C);
    the frequency term is mean_b(a * d), its gradient keep / B. Fresh tensors are updated in place where they can be:
    each temporary costs a pass over memory."""

    @staticmethod
    def forward(ctx, pred, target, mask, kind, focal_alpha, focal_gamma, unmasked_share, unmasked_weight):
        ctx.set_materialize_grads(False)
        dtype = torch.promote_types(pred.dtype, torch.float32)
        d = pred.to(dtype) - target.to(dtype)
        masked = mask[:, None].to(dtype)  # (B, 1, H, W)
        count = (masked.sum() * pred.shape[1]).clamp(min=1.0)
        scale = 1.0  # of the loss summed below
        if kind == "l2":
            loss, slope = d.square(), d * 2
        elif kind == "l1":
            loss, slope = d.abs(), d.sign()
        else:  # focal L1: |d| f^gamma with f = 2 sigmoid(alpha |d|) - 1 = tanh(u), u = alpha |d| / 2
            u = d.abs().mul_(focal_alpha / 2)
            focus = u.tanh()
            scale = 2 / focal_alpha  # the loss is u f^gamma * 2 / alpha
            if focal_gamma == 1:  # slope f + u (1 - f^2) = (f + u) - (u f) f: few passes, and u f is the loss
                loss = focus * u
                slope = torch.add(focus, u).addcmul_(loss, focus, value=-1)
            else:  # slope f^gamma + gamma u f^(gamma - 1) (1 - f^2)
                powered = focus.pow(focal_gamma)
                slope = u * focus.pow(focal_gamma - 1) * (1 - focus.square()) * focal_gamma + powered
                loss = u * powered
            slope.copysign_(d)
        spatial = (loss.sum(1, keepdim=True) * masked).sum() * scale / count
        if pred.requires_grad:
            keep = (masked * (1 - unmasked_weight) + unmasked_weight) / pred.shape[0]
            ctx.save_for_backward(slope.mul_(masked / count), keep)
        ctx.pred_dtype = pred.dtype
        difference = d.mul_(masked * (1 - unmasked_share) + unmasked_share).mean(0, keepdim=True)  # a = 1 if masked
        return spatial, difference

    @staticmethod
    def backward(ctx, spatial_grad, difference_grad):
        spatial_slope, keep = ctx.saved_tensors
        if spatial_grad is None and difference_grad is None:
            return None, *[None] * 7
        grad = spatial_slope * spatial_grad if spatial_grad is not None else torch.zeros_like(spatial_slope)
        if difference_grad is not None:
            grad.addcmul_(keep, difference_grad)
        return grad.to(ctx.pred_dtype), *[None] * 7
