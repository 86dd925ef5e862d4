"""Feature-map frequency against numpy on known spectra, and the layers it reads in a timm ResNet."""

import math

import numpy as np
import pytest
import torch

from mixmask._compat import timm
from mixmask.analysis.frequency import feature_frequency, relative_log_amplitude, spatial_variance


def test_relative_log_amplitude_of_a_diagonal_cosine():
    n, f = 16, 3
    h, w = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    wave = np.cos(2 * np.pi * f * (h + w) / n)  # all its energy at (f, f) and (-f, -f): amplitude n^2 / 2 each
    diagonal = relative_log_amplitude(torch.from_numpy(wave)[None, None]).numpy()
    assert len(diagonal) == n // 2 and diagonal[0] == 0.0
    dc = np.log(np.abs(np.fft.fft2(wave))[0, 0] + 1e-6)  # about 0: the wave has zero mean
    assert diagonal[f] == pytest.approx(np.log(n * n / 2 + 1e-6) - dc, rel=1e-9)
    assert all(diagonal[t] < diagonal[f] - 10 for t in range(1, n // 2) if t != f)


def test_relative_log_amplitude_equals_numpy_on_random_maps():
    x = torch.randn(3, 5, 10, 12, dtype=torch.float64)
    spectrum = np.fft.fftshift(np.log(np.abs(np.fft.fft2(x.numpy())) + 1e-6), axes=(-2, -1)).mean(axis=(0, 1))
    expected = np.array([spectrum[5 + t, 6 + t] for t in range(5)])
    assert relative_log_amplitude(x).numpy() == pytest.approx(expected - expected[0])
    assert spatial_variance(x) == pytest.approx(float(x.numpy().reshape(3, 5, -1).var(axis=2).mean()))


def test_feature_frequency_reads_the_stem_and_every_block():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0)
    layers = feature_frequency(model, torch.randn(2, 3, 64, 64))
    names = [layer.layer for layer in layers]
    assert names[0] == "act1" and names[1:] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]  # 4x4 maps skipped
    assert layers[0].size == (32, 32) and layers[-1].size == (8, 8) and layers[0].depth == 0.0
    assert layers[-1].depth == pytest.approx(4 / 8)  # 9 layers in all: stem + 8 blocks
    assert all(math.isfinite(layer.highest) and layer.spatial_variance > 0 for layer in layers)
    assert len(layers[0].relative_log_amplitude) == 16
