"""MaskFeat's HOG targets against a float64 loop written from the official HOGLayerC's definition, their
invariance to the normalisation, and MaskFeat's per-patch arrangement."""

import math

import pytest
import torch

from mixmask.config import hog_cell_for
from mixmask.targets import hog_histograms, hog_map, hog_patches


def reference_hog(image: torch.Tensor, cell: int, bins: int = 9) -> torch.Tensor:
    """One image (3, H, W) -> (3, bins, H / cell, W / cell), pixel by pixel in float64: reflect padding by one, the
    Sobel filter as HOGLayerC applies it (cross-correlation with [[1, 0, -1], [2, 0, -2], [1, 0, -1]] for gx and its
    transpose for gy), magnitude sqrt(gx^2 + gy^2), bin floor(atan2(gx, gy) / pi * bins) mod bins, sums per cell,
    then each cell's bins divided by their L2 norm."""
    channels, height, width = image.shape
    x = image.double().tolist()

    def at(c, i, j):  # reflect padding: index -1 -> 1, index H -> H - 2
        i = -i if i < 0 else 2 * (height - 1) - i if i >= height else i
        j = -j if j < 0 else 2 * (width - 1) - j if j >= width else j
        return x[c][i][j]

    sobel = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    out = torch.zeros(channels, bins, height // cell, width // cell, dtype=torch.float64)
    for c in range(channels):
        for i in range(height):
            for j in range(width):
                gx = sum(sobel[u][v] * at(c, i + u - 1, j + v - 1) for u in range(3) for v in range(3))
                gy = sum(sobel[v][u] * at(c, i + u - 1, j + v - 1) for u in range(3) for v in range(3))
                magnitude = math.sqrt(gx * gx + gy * gy)
                k = math.floor(math.atan2(gx, gy) / math.pi * bins) % bins
                out[c, k, i // cell, j // cell] += magnitude
    norm = out.pow(2).sum(dim=1, keepdim=True).sqrt()
    return out / norm.clamp(min=1e-12)


def test_hog_equals_the_reference_loop():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images[1, :, :4, :4] = 0.3  # a flat cell: no gradient inside, but its border sees the neighbours
    images[1, 2] = 0.7  # a flat channel: every cell's histogram stays zero
    hog = hog_histograms(images, cell=4)
    assert hog.shape == (2, 27, 4, 4) and hog.dtype == torch.float32
    for b in range(2):
        expected = reference_hog(images[b], cell=4).flatten(0, 1).float()
        torch.testing.assert_close(hog[b], expected, rtol=0, atol=1e-5)
    assert torch.equal(hog[1, 18:], torch.zeros(9, 4, 4))
    norms = hog[0].view(3, 9, 4, 4).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_hog_of_a_normalised_image_is_the_hog_of_the_image():
    """MaskFeat takes the HOG of the normalised input: a per-channel shift and positive scale change nothing."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    normalised = (images - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(hog_histograms(normalised, 4), hog_histograms(images, 4), rtol=0, atol=1e-4)


def test_edges_fill_one_bin_and_opposite_edges_share_it():
    """A step from dark (left) to bright (right) has gx < 0 (left minus right), gy = 0: atan2(gx, gy) = -pi/2 ->
    -4.5 -> bin -5 mod 9 = 4; bright to dark gives pi/2 -> bin 4 too (unsigned). A horizontal edge has gx = 0:
    atan2 = +-pi -> +-9 -> bin 0."""
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    hog = hog_histograms(image, cell=8).view(3, 9)
    torch.testing.assert_close(hog, torch.eye(9)[4].expand(3, 9))
    torch.testing.assert_close(hog_histograms(1 - image, cell=8).view(3, 9), hog)
    horizontal = image.transpose(2, 3)
    torch.testing.assert_close(hog_histograms(horizontal, cell=8).view(3, 9), torch.eye(9)[0].expand(3, 9))
    torch.testing.assert_close(hog_histograms(1 - horizontal, cell=8).view(3, 9), torch.eye(9)[0].expand(3, 9))


def test_patches_follow_maskfeats_unfold_and_invert():
    histograms = torch.randn(2, 27, 8, 8)
    patches = hog_patches(histograms, cells=2)
    assert patches.shape == (2, 16, 108)
    # MaskFeat: permute to (B, h, w, D), unfold rows then columns, flatten (patch grid) and (D, cell row, column)
    official = histograms.permute(0, 2, 3, 1).unfold(1, 2, 2).unfold(2, 2, 2).flatten(1, 2).flatten(2)
    assert torch.equal(patches, official)
    assert torch.equal(hog_map(patches, 2, (4, 4)), histograms)


def test_hog_runs_in_fp32_under_autocast_and_without_gradient():
    images = torch.rand(1, 3, 16, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hog = hog_histograms(images, 4)
    assert hog.dtype == torch.float32 and not hog.requires_grad
    torch.testing.assert_close(hog, hog_histograms(images, 4))
    with pytest.raises(ValueError, match="does not divide"):
        hog_histograms(images, 3)


@pytest.mark.parametrize(("size", "cell"), [(224, 8), (64, 2), (32, 1), (448, 16), (192, 7)])
def test_cell_scales_with_the_input(size, cell):
    assert hog_cell_for(size) == cell
