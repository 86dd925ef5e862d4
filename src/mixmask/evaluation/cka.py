"""Linear CKA (Kornblith et al. 2019) between representations, and how invariant each stage is to occlusion.

``occlusion_invariance`` compares, stage by stage, the pooled features of clean images with those of the same images
occluded (``mixmask.evaluation.occlusion``, same seeds, so every model sees identical inputs). CKA near 1 means the
stage represents the occluded images much as the clean ones. The default is the exact full-data linear CKA (pooled
features are small enough to keep); ``debiased=True`` gives the minibatch estimator of Nguyen, Raghu & Kornblith
(2021), which needs no features kept but is noisier and may leave [0, 1] slightly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch

from mixmask.data.common import Batch
from mixmask.evaluation.occlusion import OcclusionSettings, map_over_ratios


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (n, d) feature matrix, got shape {tuple(x.shape)}")
    return x.detach().to(dtype=torch.float64)


def linear_cka(x: torch.Tensor, y: torch.Tensor, method: str = "auto") -> float:
    """Linear CKA between feature matrices (n, d1) and (n, d2), in float64: centre the columns, then
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F). ``method``: ``features`` uses the d x d products (cheap for n >> d),
    ``gram`` the n x n Gram matrices (cheap for d >> n), ``auto`` whichever costs less. nan if a side is constant."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    n, d1 = x.shape
    d2 = y.shape[1]
    if y.shape[0] != n:
        raise ValueError(f"x and y must have the same number of rows (examples), got {n} and {y.shape[0]}")
    if method == "auto":
        method = "gram" if n * (d1 + d2) < d1 * d2 + d1 * d1 + d2 * d2 else "features"
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    if method == "features":
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm_x = torch.linalg.matrix_norm(x.T @ x)
        norm_y = torch.linalg.matrix_norm(y.T @ y)
    elif method == "gram":
        k, gram_l = x @ x.T, y @ y.T  # already centred: H K H = K for centred columns
        cross = (k * gram_l).sum()
        norm_x = torch.linalg.matrix_norm(k)
        norm_y = torch.linalg.matrix_norm(gram_l)
    else:
        raise ValueError(f"unknown CKA method {method!r}; expected auto, features or gram")
    denominator = float(norm_x * norm_y)
    return float(cross) / denominator if denominator > 0 else math.nan


def unbiased_hsic(k: torch.Tensor, gram_l: torch.Tensor) -> float:
    """Song et al. (2012) unbiased HSIC estimator of two n x n Gram matrices (n >= 4), float64."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 examples, got {n}")
    k = k.to(torch.float64).clone()
    gram_l = gram_l.to(torch.float64).clone()
    k.fill_diagonal_(0)
    gram_l.fill_diagonal_(0)
    ones_k = k.sum(dim=0)  # 1^T K
    ones_l = gram_l.sum(dim=0)
    value = (k * gram_l).sum() + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2)) - 2 * (ones_k @ ones_l) / (n - 2)
    return float(value / (n * (n - 3)))


class MinibatchCKA:
    """Debiased minibatch linear CKA (Nguyen, Raghu & Kornblith 2021): the unbiased HSIC (Song et al. 2012) of
    (K, L), (K, K) and (L, L) is averaged over minibatches of linear Gram matrices, and
    cka = hsic_kl / sqrt(hsic_kk * hsic_ll). Each minibatch needs at least 4 examples."""

    def __init__(self) -> None:
        self.hsic_kl = self.hsic_kk = self.hsic_ll = 0.0
        self.batches = 0
        self.examples = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of rows (examples), got {x.shape[0]} and {y.shape[0]}")
        k, gram_l = x @ x.T, y @ y.T
        self.hsic_kl += unbiased_hsic(k, gram_l)
        self.hsic_kk += unbiased_hsic(k, k)
        self.hsic_ll += unbiased_hsic(gram_l, gram_l)
        self.batches += 1
        self.examples += x.shape[0]

    def compute(self) -> float:
        """The CKA over all minibatches so far; nan before any update or when a side has no variance."""
        denominator = self.hsic_kk * self.hsic_ll
        if self.batches == 0 or denominator <= 0:
            return math.nan
        return self.hsic_kl / math.sqrt(denominator)


def _pool(features: torch.Tensor) -> torch.Tensor:
    """Global average pool of a (B, C, h, w) feature map or of (B, N, C) tokens (or pass-through of (B, C))."""
    if features.ndim == 3:
        return features.float().mean(dim=1)
    return features.float().mean(dim=(2, 3)) if features.ndim == 4 else features.float().flatten(1)


def vit_token_drop(backbone) -> Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    """``drop`` for ``occlusion_invariance`` on a ``ViTBackbone``: the stages' visible patch tokens with the dropped
    patches left out of the encoder's input (``ViTBackbone.forward_visible``); the cells must be its patches."""

    def drop(images: torch.Tensor, dropped: torch.Tensor) -> list[torch.Tensor]:
        if dropped.shape[1] != backbone.grid[0] * backbone.grid[1]:
            raise ValueError(f"token drop needs the ViT's {backbone.grid} patch grid as cells, got {dropped.shape[1]}")
        keep = torch.argsort(dropped.to(torch.int8), dim=1, stable=True)[:, : int((~dropped[0]).sum())]
        return backbone.forward_visible(images, keep)

    return drop


def _json(value: float) -> float | None:
    return None if math.isnan(value) else value


@torch.no_grad()
def occlusion_invariance(
    stage_features: Callable[[torch.Tensor], list[torch.Tensor]],
    batches: Iterable[Batch],
    settings: OcclusionSettings,
    debiased: bool = False,
    device: torch.device | str = "cpu",
    max_images: int | None = None,
    drop: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]] | None = None,
) -> dict:
    """For every stage of ``stage_features`` (e.g. ``Backbone.forward_stages``, model in eval mode), the linear CKA
    between the globally average-pooled features of the clean images and of the same images occluded at each ratio.

    Full-data linear CKA by default: pooled features are kept on the CPU in float32, n x sum(C) x (1 + ratios)
    numbers (ResNet-50, 2720 images, 10 ratios: about 0.5 GB); ``max_images`` caps n. ``debiased=True`` keeps no
    features and averages the unbiased HSIC over batches instead (batches under 4 images are skipped and not counted).
    Ratios that drop no cell reuse the clean features, so they give exactly 1. ``drop(images, dropped)`` (see
    ``map_over_ratios``) gives the stage features with the dropped cells left out of the input instead of filled
    (``vit_token_drop``); ``stage_features`` still gives the clean ones."""
    ratios = settings.ratios
    with_clean = replace(settings, ratios=(0.0, *ratios))  # the clean features come out of the same call
    clean: list[list[torch.Tensor]] = []  # stage -> batches
    occluded: list[list[list[torch.Tensor]]] = []  # ratio -> stage -> batches
    meters: list[list[MinibatchCKA]] = []  # ratio -> stage
    images_used = 0

    def pooled(images: torch.Tensor) -> list[torch.Tensor]:
        return [_pool(f).cpu() for f in stage_features(images)]

    for batch in batches:
        if max_images is not None and images_used >= max_images:
            break
        take = len(batch) if max_images is None else min(len(batch), max_images - images_used)
        if take == 0 or (debiased and take < 4):
            continue
        images = batch.images[:take].to(device)
        dropped = None if drop is None else lambda x, cells: [_pool(f).cpu() for f in drop(x, cells)]
        full, *per_ratio = map_over_ratios(pooled, images, batch.indices[:take], with_clean, dropped)
        if not clean:
            clean = [[] for _ in full]
            occluded = [[[] for _ in full] for _ in ratios]
            meters = [[MinibatchCKA() for _ in full] for _ in ratios]
        for r, stage_outputs in enumerate(per_ratio):
            for s, features in enumerate(stage_outputs):
                if debiased:
                    meters[r][s].update(full[s], features)
                else:
                    occluded[r][s].append(features)
        if not debiased:
            for s, features in enumerate(full):
                clean[s].append(features)
        images_used += take
    n_stages = len(meters[0]) if meters else 0  # known once a batch was used
    stages: dict[str, list[float | None]] = {str(s): [] for s in range(n_stages)}
    for s in range(n_stages):
        for r in range(len(ratios)):
            if debiased:
                value = meters[r][s].compute()
            else:
                value = linear_cka(torch.cat(clean[s]), torch.cat(occluded[r][s]))
            stages[str(s)].append(_json(value))
    return {
        "ratios": list(ratios),
        "stages": stages,
        "images": images_used,
        "patch_size": settings.patch_size,
        "fill": settings.fill,
        "debiased": debiased,
        "seed": settings.seed,
    }
