"""Paired comparisons of two models on the same images: McNemar's exact test for accuracies, a paired bootstrap over
images for ratios (error ratio, shape bias), a hierarchical bootstrap (seeds, then images) for the mean difference
over replicate seeds, and Holm's correction across a table's rows.

A metric is a *statistic* of per-image columns: ``statistic(columns, weights) -> values``, where ``columns`` maps names
to arrays with one entry per row (``correct``, ``shape``, ...) and ``weights`` is an ``(R, rows)`` array saying how
often each row is drawn in each of R resamples (all ones for the observed value). The two models' columns must be
aligned image by image: the resamples draw the same images for both, which is what makes the comparison paired.

Images that agree on every column of both models are interchangeable, so a resample of n images with replacement
is drawn as multinomial counts over the distinct rows: the same distribution as drawing image indices, at the cost
of the few distinct rows (8 for an accuracy on 0/1 columns) instead of n.

Choices, written down: bootstrap intervals are percentile intervals; a bootstrap p-value is the two-sided
``2 * min(P(d <= 0), P(d >= 0))`` of the resampled differences with the +1 correction of Davison & Hinkley, so it
is never 0; McNemar's interval for the accuracy difference is the Wald interval of a paired difference of
proportions (the p-value is exact). scipy provides the binomial test; the bootstraps are here because scipy's
``bootstrap`` has no hierarchical form and no p-value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

Columns = dict[str, np.ndarray]
Statistic = Callable[[Columns, np.ndarray], np.ndarray]  # (columns, weights (R, rows)) -> (R,)
Z95 = 1.959963984540054
RESAMPLES = 10_000  # p-values cannot go below 2 / (RESAMPLES + 1): small enough for a Holm family of 50


@dataclass(frozen=True)
class PairedTest:
    """A model against a reference on the same images: both values, their difference (model minus reference), its
    95 % interval and two-sided p-value, the test that produced them and how much data it saw."""

    test: str  # mcnemar | bootstrap | hierarchical_bootstrap
    value: float
    reference_value: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_seeds: int = 1


# ------------------------------------------------------------------------------------------------ statistics


def accuracy(columns: Columns, weights: np.ndarray) -> np.ndarray:
    """Share of correct images (column ``correct``)."""
    return weights @ columns["correct"] / weights.sum(axis=1)


def error_ratio(factor: str) -> Statistic:
    """ImageNet-X's error ratio of ``factor``: its images' error over the error of all annotated images (columns
    ``correct`` and ``factor/<name>``, one boolean per image). NaN in a resample without a factor image or an
    error."""

    def statistic(columns: Columns, weights: np.ndarray) -> np.ndarray:
        correct, shows = columns["correct"], columns[f"factor/{factor}"]
        with np.errstate(divide="ignore", invalid="ignore"):
            factor_error = 1 - weights @ (correct * shows) / (weights @ shows)
            return factor_error / (1 - weights @ correct / weights.sum(axis=1))

    return statistic


def shape_bias(columns: Columns, weights: np.ndarray) -> np.ndarray:
    """Shape decisions over shape-or-texture decisions on cue-conflict images (columns ``shape``, ``texture``)."""
    shape, texture = weights @ columns["shape"], weights @ columns["texture"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return shape / (shape + texture)


def masked_psnr(columns: Columns, weights: np.ndarray) -> np.ndarray:
    """PSNR in dB of [0, 1] images over their masked pixel-channels, pooled over the images: 10 log10(count /
    squared error), from each image's summed squared error (column ``sse``) and masked pixel-channels (``count``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10 * np.log10((weights @ columns["count"]) / (weights @ columns["sse"]))


def observed(statistic: Statistic, columns: Columns) -> float:
    n = len(next(iter(columns.values())))
    return float(statistic(_floats(columns), np.ones((1, n)))[0])


# ------------------------------------------------------------------------------------------------ tests


def mcnemar(reference_correct: np.ndarray, correct: np.ndarray) -> PairedTest:
    """McNemar's exact test of two accuracies on the same images: the discordant pairs (``b``: only the model is
    right, ``c``: only the reference) are Binomial(b + c, 1/2) when both are equally accurate."""
    reference_correct, correct = np.asarray(reference_correct, bool), np.asarray(correct, bool)
    _check_paired(reference_correct, correct)
    n = len(correct)
    b, c = int((correct & ~reference_correct).sum()), int((reference_correct & ~correct).sum())
    difference = (b - c) / n
    half = Z95 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    value, reference_value = float(correct.mean()), float(reference_correct.mean())
    return PairedTest("mcnemar", value, reference_value, difference, difference - half, difference + half, p_value, n)


def paired_bootstrap(
    statistic: Statistic, reference: Columns, columns: Columns, resamples: int = RESAMPLES, seed: int = 0
) -> PairedTest:
    """The statistic's difference (model minus reference) with a percentile interval from ``resamples`` resamples
    of the images, the same images for both models."""
    n = _check_columns(reference, columns)
    differences = _resampled_differences(statistic, reference, columns, resamples, np.random.default_rng(seed))
    value, reference_value = observed(statistic, columns), observed(statistic, reference)
    return _from_resamples("bootstrap", value, reference_value, differences, n, 1)


def hierarchical_bootstrap(
    statistic: Statistic,
    pairs: Sequence[tuple[Columns, Columns]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedTest:
    """The mean over seeds of the per-seed difference, ``pairs`` holding (reference, model) columns per seed.
    Each resample draws seeds with replacement, then images with replacement within each drawn seed (a fresh draw
    for every draw of a seed), so the interval carries the spread between seeds as well as within them."""
    if not pairs:
        raise ValueError("hierarchical_bootstrap needs at least one seed")
    rng = np.random.default_rng(seed)
    k = len(pairs)
    # per seed, k independent image resamples per bootstrap round: whichever slot a seed is drawn into
    per_seed = []
    for reference, columns in pairs:
        _check_columns(reference, columns)
        per_seed.append(_resampled_differences(statistic, reference, columns, resamples * k, rng).reshape(resamples, k))
    drawn = rng.integers(0, k, size=(resamples, k))
    differences = np.stack(per_seed)[drawn, np.arange(resamples)[:, None], np.arange(k)[None]].mean(axis=1)
    value = float(np.mean([observed(statistic, columns) for _, columns in pairs]))
    reference_value = float(np.mean([observed(statistic, reference) for reference, _ in pairs]))
    n_images = sum(len(next(iter(columns.values()))) for _, columns in pairs)
    return _from_resamples("hierarchical_bootstrap", value, reference_value, differences, n_images, k)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# ------------------------------------------------------------------------------------------------ helpers


def _floats(columns: Columns) -> Columns:
    return {name: np.asarray(values, dtype=float) for name, values in columns.items()}


def _resampled_differences(
    statistic: Statistic, reference: Columns, columns: Columns, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """``resamples`` draws of model minus reference, each on n images drawn with replacement (the same images for
    both), drawn as multinomial counts over the distinct joint rows."""
    names = sorted(columns)
    joint = np.stack([np.asarray(reference[c], float) for c in names] + [np.asarray(columns[c], float) for c in names])
    rows, counts = np.unique(joint.T, axis=0, return_counts=True)
    n = int(counts.sum())
    weights = rng.multinomial(n, counts / n, size=resamples).astype(float)
    ref = {c: rows[:, i] for i, c in enumerate(names)}
    model = {c: rows[:, len(names) + i] for i, c in enumerate(names)}
    return statistic(model, weights) - statistic(ref, weights)


def _from_resamples(
    test: str, value: float, reference_value: float, differences: np.ndarray, n_images: int, n_seeds: int
) -> PairedTest:
    finite = differences[np.isfinite(differences)]
    if len(finite) == 0:
        nan = float("nan")
        return PairedTest(test, value, reference_value, value - reference_value, nan, nan, nan, n_images, n_seeds)
    low, high = np.percentile(finite, [2.5, 97.5])
    below, above = (finite <= 0).sum(), (finite >= 0).sum()
    p_value = float(min(1.0, 2 * (min(below, above) + 1) / (len(finite) + 1)))
    return PairedTest(
        test, value, reference_value, value - reference_value, float(low), float(high), p_value, n_images, n_seeds
    )


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired tests need two equally long, non-empty vectors; got shapes {a.shape} and {b.shape}")


def _check_columns(reference: Columns, columns: Columns) -> int:
    lengths = {len(v) for v in (*reference.values(), *columns.values())}
    if len(lengths) != 1 or 0 in lengths or set(reference) != set(columns):
        raise ValueError("paired tests need the same columns, one entry per image, for both models")
    return lengths.pop()
