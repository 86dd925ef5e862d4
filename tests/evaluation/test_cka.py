"""Linear CKA against a float64 reference, its invariances, the debiased minibatch estimator, and occlusion
invariance of a real backbone."""

import itertools
import math

import numpy as np
import pytest
import torch

from mixmask.data.common import Batch
from mixmask.evaluation.cka import MinibatchCKA, linear_cka, occlusion_invariance, unbiased_hsic, vit_token_drop
from mixmask.evaluation.occlusion import OcclusionSettings
from mixmask.models.backbone import Backbone

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SETTINGS = OcclusionSettings([0.3], 4, "zero", MEAN, STD)


def reference_cka(x, y):
    """Kornblith et al. 2019: HSIC(K, L) = tr(K H L H) / (n - 1)^2 with linear kernels, in float64 numpy."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, gram_l):
        return np.trace(k @ h @ gram_l @ h) / (n - 1) ** 2

    k, gram_l = x @ x.T, y @ y.T
    return hsic(k, gram_l) / math.sqrt(hsic(k, k) * hsic(gram_l, gram_l))


def reference_unbiased_hsic(k, gram_l):
    """Song et al. 2012, eq. 5, written out with explicit ones vectors."""
    k, gram_l = np.array(np.asarray(k), dtype=np.float64), np.array(np.asarray(gram_l), dtype=np.float64)
    n = len(k)
    np.fill_diagonal(k, 0)
    np.fill_diagonal(gram_l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ gram_l)
        + (one @ k @ one) * (one @ gram_l @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ k @ gram_l @ one
    ) / (n * (n - 3))


def brute_force_hsic(k, gram_l):
    """The U-statistic the unbiased estimator equals: the mean over distinct (i, j, q, r) of the symmetrised kernel."""
    n = len(k)
    total, count = 0.0, 0
    for quad in itertools.permutations(range(n), 4):
        h = 0.0
        for t, u, v, w in itertools.permutations(quad):
            h += k[t, u] * gram_l[t, u] + k[t, u] * gram_l[v, w] - 2 * k[t, u] * gram_l[t, v]
        total += h / 24
        count += 1
    return total / count


def features(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_matches_the_reference():
    x = features(50, 20, 0)
    y = x[:, :8] @ features(8, 12, 1) + 0.5 * features(50, 12, 2)
    expected = reference_cka(x.numpy(), y.numpy())
    assert 0.2 < expected < 0.95
    for method in ("auto", "features", "gram"):
        assert linear_cka(x, y, method=method) == pytest.approx(expected, rel=1e-10)


def test_feature_and_gram_forms_agree():
    for n, d1, d2 in [(300, 5, 7), (10, 64, 32), (40, 40, 40)]:
        x, y = features(n, d1, 3), features(n, d2, 4)
        assert linear_cka(x, y, method="features") == pytest.approx(linear_cka(x, y, method="gram"), rel=1e-9)


def test_invariances():
    x = features(200, 16, 5).double()
    y = torch.tanh(x @ features(16, 10, 6).double())
    value = linear_cka(x, y)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(value, rel=1e-12)  # symmetric
    assert linear_cka(3.7 * x, y) == pytest.approx(value, rel=1e-10)  # isotropic scaling
    q, _ = torch.linalg.qr(features(16, 16, 7).double())
    assert linear_cka(x @ q, y) == pytest.approx(value, rel=1e-10)  # orthogonal rotation
    assert linear_cka(x + 100.0, y - 5.0) == pytest.approx(value, rel=1e-8)  # constant offsets
    assert linear_cka(x @ q * 0.01 + 2.0, x) == pytest.approx(1.0, abs=1e-10)


def test_independent_features_give_low_cka():
    assert linear_cka(features(4000, 10, 8), features(4000, 12, 9)) < 0.1


def test_constant_features_give_nan_and_bad_shapes_raise():
    assert math.isnan(linear_cka(torch.ones(10, 3), features(10, 3, 0)))
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(features(10, 3, 0), features(11, 3, 0))
    with pytest.raises(ValueError, match="feature matrix"):
        linear_cka(features(10, 3, 0).view(10, 3, 1), features(10, 3, 0))


def test_unbiased_hsic_is_the_u_statistic():
    x, y = features(6, 3, 10), features(6, 2, 11)
    k, gram_l = (x @ x.T).double(), (y @ y.T).double()
    assert unbiased_hsic(k, gram_l) == pytest.approx(brute_force_hsic(k.numpy(), gram_l.numpy()), rel=1e-9)
    assert unbiased_hsic(k, gram_l) == pytest.approx(reference_unbiased_hsic(k, gram_l), rel=1e-10)
    with pytest.raises(ValueError, match="at least 4"):
        unbiased_hsic(k[:3, :3], gram_l[:3, :3])


def test_minibatch_cka():
    x = features(64, 20, 12).double()
    y = x[:, :5] @ features(5, 9, 13).double() + features(64, 9, 14).double()
    meter = MinibatchCKA()
    assert math.isnan(meter.compute())
    meter.update(x, y)
    k, gram_l = (x @ x.T).numpy(), (y @ y.T).numpy()
    expected = reference_unbiased_hsic(k, gram_l) / math.sqrt(
        reference_unbiased_hsic(k, k) * reference_unbiased_hsic(gram_l, gram_l)
    )
    assert meter.compute() == pytest.approx(expected, rel=1e-10)

    same = MinibatchCKA()
    for seed in range(6):
        batch = features(32, 16, 20 + seed)
        same.update(batch, batch)
    assert same.compute() == pytest.approx(1.0, abs=1e-12)
    assert same.batches == 6 and same.examples == 192

    independent = MinibatchCKA()
    for seed in range(10):
        independent.update(features(256, 8, 40 + seed), features(256, 8, 60 + seed))
    assert abs(independent.compute()) < 0.05  # debiased: near 0, not the biased estimator's d / n offset


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return Backbone("resnet_tiny").eval()


def image_batches(n=24, size=32, batch_size=8):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    return [
        Batch(images[i : i + batch_size], labels[i : i + batch_size], torch.arange(i, min(i + batch_size, n)))
        for i in range(0, n, batch_size)
    ]


def test_occlusion_invariance_of_a_backbone(backbone):
    ratios = [0.0, 0.25, 0.5, 0.9]  # at 1.0 with zero fill every image is the same black image: CKA undefined
    result = occlusion_invariance(
        backbone.forward_stages, image_batches(), OcclusionSettings(ratios, 4, "zero", MEAN, STD, seed=2)
    )
    assert set(result) == {"ratios", "stages", "images", "patch_size", "fill", "debiased", "seed"}
    assert result["images"] == 24 and result["ratios"] == ratios and result["debiased"] is False
    assert list(result["stages"]) == [str(s) for s in range(len(backbone.stage_modules))]
    for values in result["stages"].values():
        assert len(values) == len(ratios)
        assert all(-1e-9 <= v <= 1 + 1e-9 for v in values)
        assert values[0] == pytest.approx(1.0, abs=1e-6)
        assert values[1] < 1 - 1e-6  # occlusion changes every stage

    # the same images, batched differently, give the same numbers
    rebatched = occlusion_invariance(
        backbone.forward_stages, image_batches(batch_size=5), OcclusionSettings(ratios, 4, "zero", MEAN, STD, seed=2)
    )
    for s, values in result["stages"].items():
        assert rebatched["stages"][s] == pytest.approx(values, abs=1e-5)


def test_occlusion_invariance_debiased_and_max_images(backbone):
    result = occlusion_invariance(
        backbone.forward_stages,
        image_batches(),
        OcclusionSettings([0.0, 0.5], 4, "mean", MEAN, STD),
        debiased=True,
        max_images=19,
    )
    assert result["debiased"] is True and result["images"] == 16  # the 3-image remainder is too small to use
    for values in result["stages"].values():
        assert values[0] == pytest.approx(1.0, abs=1e-9)
        assert values[1] < 1.0

    capped = occlusion_invariance(backbone.forward_stages, image_batches(), SETTINGS, max_images=10)
    assert capped["images"] == 10
    empty = occlusion_invariance(backbone.forward_stages, [], SETTINGS)
    assert empty["images"] == 0 and empty["stages"] == {}


def test_token_drop_leaves_the_occluded_patches_out_of_a_vit():
    """cka_drop=tokens: the cells are the ViT's patches, the ones the pixel masks would hide are dropped from the
    input, and the numbers are CKA of the pooled visible tokens against the clean pooled features."""
    from mixmask.evaluation.occlusion import occlusion_masks
    from mixmask.models.backbone import build_backbone

    torch.manual_seed(0)
    vit = build_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=2, embed_dim=48, num_heads=3).eval()
    settings = OcclusionSettings([0.0, 0.25, 0.5], 8, "zero", MEAN, STD, seed=3)
    drop = vit_token_drop(vit)
    seen = []

    def watched(images, dropped):
        seen.append(dropped.clone())
        return drop(images, dropped)

    result = occlusion_invariance(vit.forward_stages, image_batches(n=16), settings, drop=watched)
    assert [tuple(d.shape) for d in seen] == [(8, 16)] * 4 and [int(d[0].sum()) for d in seen] == [4, 8, 4, 8]
    pixels = occlusion_masks(torch.arange(8), 32, 8, 0.25, seed=3)[:, 0, ::8, ::8].flatten(1)
    assert torch.equal(seen[0], pixels)  # the same cells as the pixel occlusion hides
    for values in result["stages"].values():
        assert values[0] == pytest.approx(1.0, abs=1e-6) and all(0 < v < 1 for v in values[1:])

    # a direct computation for the first stage at ratio 0.5: the mean of the visible patch embeddings
    batches = image_batches(n=16)
    images = torch.cat([b.images for b in batches])
    with torch.no_grad():
        tokens = vit.model.patch_embed(images)
    dropped = torch.cat([seen[1], seen[3]])
    visible = torch.stack([tokens[i][~dropped[i]].mean(0) for i in range(16)])
    expected = linear_cka(tokens.mean(1), visible)
    assert result["stages"]["0"][2] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="patch grid"):
        drop(images[:2], torch.zeros(2, 4, dtype=torch.bool))
