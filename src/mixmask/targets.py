"""Prediction targets other than pixels: MaskFeat's HOG features (Wei et al., "Masked Feature Prediction for
Self-Supervised Visual Pre-Training", CVPR 2022; ViT-B on ImageNet-1k: HOG 83.6 top-1 vs pixels 82.5).

``hog_histograms`` is the official ``HOGLayerC`` (facebookresearch/SlowFast ``slowfast/models/operators.py``) as
MaskFeat builds it (``slowfast/models/masked.py``: ``HOGLayerC(nbins=9, pool=8)``): per RGB channel, the image is
reflect-padded by one pixel; Sobel gradients ``gx`` (left minus right) and ``gy`` (top minus bottom); magnitude
``sqrt(gx^2 + gy^2)``; orientation ``atan2(gx, gy) / pi * 9``, floored, modulo 9: 9 unsigned bins of 20 degrees,
hard assignment; magnitudes summed per bin over square cells; each cell's 9 bins L2-normalised on their own (no
blocks, no clipping). The Gaussian window ``HOGLayerC`` offers is off by default and MaskFeat does not turn it on.
``hog_patches`` arranges the cells of each prediction patch as MaskFeat's ``_get_hog_label_2d`` does: channel-major
(RGB x 9 bins), then cell row, then cell column (2 x 2 cells x 9 bins x 3 channels = 108 numbers for a 16 px patch).

MaskFeat computes the HOG of the model's input, i.e. of the normalised image. The HOG does not depend on which:
a per-channel mean shift has no gradient and a per-channel positive scale multiplies a cell's 9 bins alike, which
the L2 normalisation removes (up to rounding, and flat cells, which stay zero either way).

What differs from the official code:
- Written in plain tensor arithmetic (slices of the padded image for the Sobel filter, a sum over cells per bin)
  instead of grouped convolutions and ``scatter_add_``: the same numbers up to float rounding, and deterministic on
  GPUs (``scatter_add_`` uses atomics there).
- Always in fp32 with autocast off, whatever the training precision (a bf16 gradient would move pixels across bin
  edges); no gradient is tracked (the target is a constant, as ``HOGLayerC.forward`` is ``no_grad``).
- The cell is 8 px at 224 px scaled with the input (``loss.hog_cell: auto``, ``mixmask.config.hog_cell_for``;
  MaskFeat has 8 px at 224 px only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HOG_BINS = 9  # unsigned orientation bins over 180 degrees
HOG_CHANNELS = 3 * HOG_BINS  # a histogram per RGB channel


def hog_histograms(images: torch.Tensor, cell: int, bins: int = HOG_BINS) -> torch.Tensor:
    """Per-cell orientation histograms (B, 3 * bins, H / cell, W / cell) of images (B, 3, H, W), fp32: the bins of
    RGB channel c are channels ``c * bins ... c * bins + bins - 1``, each cell's bins of a channel of unit L2 norm
    (all zero on a flat cell)."""
    b, c, h, w = images.shape
    if h % cell or w % cell:
        raise ValueError(f"HOG cell of {cell} px does not divide the image ({h}x{w})")
    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        x = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
        # Sobel = [1, 2, 1] smoothing across the derivative's direction, central difference along it
        smooth_rows = x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]  # (B, C, H, W + 2)
        smooth_cols = x[..., :-2] + 2 * x[..., 1:-1] + x[..., 2:]  # (B, C, H + 2, W)
        gx = smooth_rows[..., :-2] - smooth_rows[..., 2:]  # left minus right, as HOGLayerC's weight_x
        gy = smooth_cols[:, :, :-2] - smooth_cols[:, :, 2:]  # top minus bottom, as its weight_y
        magnitude = torch.hypot(gx, gy)
        # atan2(gx, gy) in [-pi, pi] -> [-bins, bins]; floor, then modulo: opposite directions share a bin
        index = torch.floor(torch.atan2(gx, gy) / math.pi * bins).long().remainder(bins)
        per_bin = [
            torch.where(index == k, magnitude, 0.0).reshape(b, c, h // cell, cell, w // cell, cell).sum(dim=(3, 5))
            for k in range(bins)  # one bin at a time: no (B, C, bins, H, W) tensor
        ]
        histograms = F.normalize(torch.stack(per_bin, dim=2), p=2, dim=2)  # (B, C, bins, h, w), as HOGLayerC
    return histograms.flatten(1, 2)


def hog_patches(histograms: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, D, h, w) per-cell features -> (B, patches, D * cells * cells): each patch of ``cells`` x ``cells`` cells,
    patches row-major, its numbers ordered (feature, cell row, cell column) as MaskFeat's targets."""
    b, d, h, w = histograms.shape
    x = histograms.reshape(b, d, h // cells, cells, w // cells, cells).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // cells) * (w // cells), d * cells * cells)


def hog_map(patches: torch.Tensor, cells: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``hog_patches``: (B, h * w patches, D * cells * cells) -> (B, D, h * cells, w * cells)."""
    b = patches.shape[0]
    h, w = grid
    x = patches.reshape(b, h, w, -1, cells, cells).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, -1, h * cells, w * cells)
