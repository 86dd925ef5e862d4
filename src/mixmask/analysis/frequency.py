"""Frequency and variance of feature maps (A2MIM paper, section 3.3 and appendix B.3), after Park and Kim, "How do
vision transformers work?": masked modeling is said to make CNN features keep more high-frequency content.

For a feature map (images, channels, H, W): the 2-D Fourier amplitude per channel, as ``log(|FFT| + 1e-6)``, shifted
so that DC is central and averaged over images and channels; its diagonal from DC outward (to the highest frequency
both axes reach) minus its DC value is the *relative log amplitude*; its last value is the highest frequency's. The
*spatial variance* is each channel's variance over positions, averaged over channels and images. Both are read at
the stem and after every residual block of a timm ResNet-style backbone; maps smaller than ``min_size`` are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

MIN_SIZE = 8  # maps smaller than this on a side have too few frequencies to read
BLOCK = re.compile(r"^(layer\d+|stages\.\d+\.blocks)\.\d+$")  # timm ResNet blocks, and staged CNNs' blocks


@dataclass(frozen=True)
class LayerFrequency:
    """One layer's measures: ``depth`` in [0, 1] (stem 0, last block 1), its map size, the relative log amplitude
    along the diagonal from DC (first value 0) and the mean spatial variance."""

    layer: str
    depth: float
    size: tuple[int, int]
    relative_log_amplitude: list[float]
    spatial_variance: float

    @property
    def highest(self) -> float:
        """The relative log amplitude at the highest frequency on the diagonal."""
        return self.relative_log_amplitude[-1]


def relative_log_amplitude(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> the mean shifted log amplitude's diagonal from DC outward, minus its DC value."""
    amplitude = torch.fft.fftshift(torch.fft.fft2(features.double()).abs(), dim=(-2, -1))
    mean = torch.log(amplitude + 1e-6).mean(dim=(0, 1))
    height, width = mean.shape
    cy, cx = height // 2, width // 2
    steps = min(height - cy, width - cx)
    diagonal = mean[torch.arange(cy, cy + steps), torch.arange(cx, cx + steps)]
    return diagonal - diagonal[0]


def spatial_variance(features: torch.Tensor) -> float:
    """Each channel's variance over positions, averaged over channels and images."""
    return float(features.double().flatten(2).var(dim=2, unbiased=False).mean())


@torch.no_grad()
def feature_frequency(
    timm_model: torch.nn.Module, images: torch.Tensor, min_size: int = MIN_SIZE
) -> list[LayerFrequency]:
    """The measures at the stem (its activation, before pooling) and after every residual block of ``timm_model``,
    in depth order, for ``images``; maps smaller than ``min_size`` on a side are left out."""
    names = [name for name, _ in timm_model.named_modules() if BLOCK.match(name)]
    stem = next((n for n in ("act1", "stem") if dict(timm_model.named_modules()).get(n) is not None), None)
    layers = ([stem] if stem else []) + names
    if not names:
        raise ValueError("no residual blocks found (expected timm names such as layer1.0 or stages.0.blocks.0)")
    captured: dict[str, torch.Tensor] = {}
    modules = dict(timm_model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in layers
    ]
    try:
        was_training = timm_model.training
        timm_model.eval()
        timm_model(images)
        timm_model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    results = []
    for k, name in enumerate(layers):
        features = captured[name]
        if features.ndim != 4 or min(features.shape[-2:]) < min_size:
            continue
        depth = k / (len(layers) - 1) if len(layers) > 1 else 0.0
        amplitude = relative_log_amplitude(features).tolist()
        results.append(LayerFrequency(name, depth, tuple(features.shape[-2:]), amplitude, spatial_variance(features)))
    return results
