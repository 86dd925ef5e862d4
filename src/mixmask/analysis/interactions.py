"""Multi-order interactions J(m) (Deng et al., "Discovering and explaining the representation bottleneck of DNNs",
as the A2MIM paper, section 3.2, uses them to show what masked modeling teaches).

The image is cut into a ``grid`` x ``grid`` lattice of n patches. ``v(S)`` is the log-odds of the true class (its
logit minus the logsumexp of the other logits) for the image whose patches outside S are set to ``baseline`` (0.0 in
normalised space: the data set's mean colour). The interaction of patches i and j at order m is

    I_m(i, j) = E_S [v(S + i + j) - v(S + i) - v(S + j) + v(S)],  S drawn uniformly among the m-subsets of the
                                                                   patches other than i and j,

and J(m) averages |I_m(i, j)| (the expectation over contexts taken first) over pairs and images. Pairs are (i, j)
with j within Chebyshev distance 2 of i. When there are no more m-subsets than ``contexts``, all of them are used
(exact); otherwise ``contexts`` are drawn. Pairs and contexts come from ``seed`` alone, so every model compared sees
the same ones. The four forwards of a context are batched and forwards that coincide (the same kept patches) are
computed once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class InteractionPoint:
    """J at one order: the ratio asked for, the order m = int((n - 2) * ratio), J(m) and J(m) / mean over orders."""

    ratio: float
    order: int
    strength: float
    normalised: float


def neighbour_pairs(grid: int, reach: int = 2) -> list[tuple[int, int]]:
    """Every ordered pair (i, j), i != j, with j within Chebyshev distance ``reach`` of i on the patch grid."""
    pairs = []
    for i in range(grid * grid):
        for j in range(grid * grid):
            if i != j and max(abs(i // grid - j // grid), abs(i % grid - j % grid)) <= reach:
                pairs.append((i, j))
    return pairs


def _contexts(others: list[int], order: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """All m-subsets of ``others`` when there are at most ``count`` of them, else ``count`` uniform draws."""
    if math.comb(len(others), order) <= count:
        return list(itertools.combinations(others, order))
    return [tuple(rng.choice(others, size=order, replace=False).tolist()) for _ in range(count)]


def _patch_masks(keep: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """``(k, n)`` kept-patch flags -> ``(k, 1, H, W)`` pixel masks (the last patch row and column take the rest)."""
    height, width = size
    rows = torch.div(torch.arange(height) * grid, height, rounding_mode="floor")
    cols = torch.div(torch.arange(width) * grid, width, rounding_mode="floor")
    cell = rows[:, None] * grid + cols[None, :]  # (H, W) patch index of each pixel
    return keep[:, cell][:, None]


@torch.no_grad()
def log_odds(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The true class's logit minus the logsumexp of the other logits."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


@torch.no_grad()
def image_strengths(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    grid: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    pairs: int = 16,
    contexts: int = 32,
    seeds: Sequence[int] | None = None,
    baseline: float = 0.0,
    batch_size: int = 256,
) -> np.ndarray:
    """``(images, ratios)``: J at each order for each image on its own, its pairs and contexts drawn from its own seed
    (``seeds[k]``, default k), so an image gets the same pairs and contexts whichever other images are scored."""
    n = grid * grid
    if n < 3:
        raise ValueError(f"grid {grid} has {n} patch(es); interactions need at least 3")
    orders = [int((n - 2) * r) for r in ratios]
    candidates = neighbour_pairs(grid)
    seeds = list(range(len(images))) if seeds is None else list(seeds)
    out = np.zeros((len(images), len(orders)))
    for row, (image, label, seed) in enumerate(zip(images, labels, seeds, strict=True)):
        rng = np.random.default_rng(seed)
        chosen = [candidates[k] for k in rng.choice(len(candidates), size=min(pairs, len(candidates)), replace=False)]
        # every kept-patch set this image needs, each computed once
        plans: list[list[list[tuple[frozenset, ...]]]] = []  # per order, per pair: the four sets of each context
        needed: dict[frozenset, int] = {}
        for order in orders:
            per_pair = []
            for i, j in chosen:
                others = [k for k in range(n) if k not in (i, j)]
                quads = []
                for context in _contexts(others, order, contexts, rng):
                    s = frozenset(context)
                    quad = (s | {i, j}, s | {i}, s | {j}, s)
                    for kept in quad:
                        needed.setdefault(kept, len(needed))
                    quads.append(quad)
                per_pair.append(quads)
            plans.append(per_pair)
        keep = torch.zeros(len(needed), n, dtype=torch.bool)
        for kept, index in needed.items():
            keep[index, list(kept)] = True
        values = torch.empty(len(needed), dtype=torch.float64)
        for start in range(0, len(needed), batch_size):
            masks = _patch_masks(keep[start : start + batch_size], grid, image.shape[-2:]).to(image.device)
            batch = torch.where(masks, image[None], torch.full_like(image[None], baseline))
            logits = model(batch).double()
            values[start : start + len(batch)] = log_odds(logits, label.expand(len(batch)).to(image.device)).cpu()
        for k, per_pair in enumerate(plans):
            strengths = []
            for quads in per_pair:
                v = values[torch.tensor([[needed[kept] for kept in quad] for quad in quads])]  # (contexts, 4)
                strengths.append(abs(float((v[:, 0] - v[:, 1] - v[:, 2] + v[:, 3]).mean())))
            out[row, k] = np.mean(strengths)
    return out


def curve(ratios: Sequence[float], grid: int, strengths: np.ndarray) -> list[InteractionPoint]:
    """The J(m) curve of per-image strengths ``(images, ratios)``: their mean, and that divided by its mean over
    the orders."""
    strength = strengths.mean(axis=0)
    mean = strength.mean()
    return [
        InteractionPoint(float(r), int((grid * grid - 2) * r), float(s), float(s / mean) if mean > 0 else float("nan"))
        for r, s in zip(ratios, strength, strict=True)
    ]


@torch.no_grad()
def interaction_strength(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    grid: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    pairs: int = 16,
    contexts: int = 32,
    seed: int = 0,
    baseline: float = 0.0,
    batch_size: int = 256,
) -> list[InteractionPoint]:
    """J(m) of ``model`` (logits) on ``images`` ``(B, 3, H, W)`` with their true ``labels``, for each ratio: ``pairs``
    neighbour pairs per image and ``contexts`` contexts per pair and order (see the module docstring), image k's
    drawn from ``(seed, k)``. Give the images the model classifies correctly (and, to compare models, the same images
    for each)."""
    seeds = [seed * 1_000_003 + k for k in range(len(images))]
    strengths = image_strengths(model, images, labels, grid, ratios, pairs, contexts, seeds, baseline, batch_size)
    return curve(ratios, grid, strengths)
