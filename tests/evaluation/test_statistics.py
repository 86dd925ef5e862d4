"""The paired tests against direct computations: an exact binomial sum, closed-form intervals, Holm by hand."""

import math

import numpy as np
import pytest

from mixmask.evaluation.shape_bias import shape_bias as shape_bias_of_predictions
from mixmask.evaluation.statistics import (
    Z95,
    accuracy,
    error_ratio,
    hierarchical_bootstrap,
    holm,
    mcnemar,
    observed,
    paired_bootstrap,
    shape_bias,
)


def _mean(columns, weights):
    return weights @ columns["value"] / weights.sum(axis=1)


def test_mcnemar_p_value_is_the_exact_binomial_sum_over_discordant_pairs():
    # 7 images only the model gets right, 2 only the reference, 30 both, 11 neither
    reference = np.array([0] * 7 + [1] * 2 + [1] * 30 + [0] * 11, bool)
    model = np.array([1] * 7 + [0] * 2 + [1] * 30 + [0] * 11, bool)
    result = mcnemar(reference, model)
    direct = 2 * sum(math.comb(9, i) for i in range(3)) / 2**9  # two-sided: both tails of Binomial(9, 1/2)
    assert result.p_value == pytest.approx(direct, rel=1e-12) and direct == pytest.approx(0.1796875)
    assert result.difference == pytest.approx(5 / 50) and result.value == pytest.approx(37 / 50)
    half = Z95 * math.sqrt(9 - 25 / 50) / 50  # Wald interval of a paired difference of proportions
    assert (result.ci_low, result.ci_high) == pytest.approx((0.1 - half, 0.1 + half))
    same = mcnemar(reference, reference)
    assert same.p_value == 1.0 and same.difference == 0 and same.ci_low == same.ci_high == 0
    with pytest.raises(ValueError, match="equally long"):
        mcnemar(reference, model[:-1])


def test_paired_bootstrap_interval_matches_the_closed_form_of_a_mean_difference():
    rng = np.random.default_rng(1)
    n = 400
    reference = rng.normal(0.0, 1.0, n)
    model = reference + rng.normal(0.3, 0.5, n)  # paired: the difference has sd 0.5, far less than either value
    result = paired_bootstrap(_mean, {"value": reference}, {"value": model}, resamples=4000, seed=3)
    d = model - reference
    half = Z95 * d.std() / math.sqrt(n)  # the bootstrap's plug-in standard error of the mean difference
    assert result.difference == pytest.approx(d.mean())
    assert result.ci_low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert result.ci_high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert result.p_value == pytest.approx(2 / 4001)  # no resample crosses 0: the smallest p the test can give
    unpaired_half = Z95 * math.sqrt((reference.var() + model.var()) / n)
    assert result.ci_high - result.ci_low < unpaired_half  # pairing is what makes it narrow: width < half-width


def test_hierarchical_bootstrap_carries_the_spread_between_seeds():
    rng = np.random.default_rng(2)
    k, n = 40, 50
    seed_effects = rng.normal(0.2, 0.3, k)  # no spread within a seed: the interval is the seeds' bootstrap
    pairs = [({"value": np.zeros(n)}, {"value": np.full(n, e)}) for e in seed_effects]
    result = hierarchical_bootstrap(_mean, pairs, resamples=4000, seed=0)
    half = Z95 * seed_effects.std() / math.sqrt(k)
    assert result.difference == pytest.approx(seed_effects.mean()) and result.n_seeds == k
    assert result.ci_low == pytest.approx(seed_effects.mean() - half, abs=0.12 * half)
    assert result.ci_high == pytest.approx(seed_effects.mean() + half, abs=0.12 * half)
    # one seed: the images' bootstrap, as the paired one
    reference = rng.normal(0, 1, 300)
    one = [({"value": reference}, {"value": reference + rng.normal(0.1, 0.4, 300)})]
    single = hierarchical_bootstrap(_mean, one, resamples=4000, seed=5)
    flat = paired_bootstrap(_mean, *one[0], resamples=4000, seed=5)
    assert single.ci_low == pytest.approx(flat.ci_low, abs=0.01) and single.ci_high == pytest.approx(
        flat.ci_high, abs=0.01
    )


def test_holm_matches_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9, 0.5]) == [1.0, 1.0] and holm([]) == []


def test_statistics_agree_with_the_evaluations_they_stand_for():
    correct = np.array([1, 1, 0, 1, 0, 0, 1, 1], bool)
    texture = np.array([1, 0, 1, 1, 0, 0, 0, 0], bool)
    assert observed(accuracy, {"correct": correct}) == pytest.approx(5 / 8)
    # texture images: 1 of 3 wrong against 3 of 8 overall
    assert observed(error_ratio("texture"), {"correct": correct, "factor/texture": texture}) == pytest.approx(
        (1 / 3) / (3 / 8)
    )
    predictions, shapes, textures = np.array([0, 1, 2, 2, 0]), np.array([0, 1, 1, 0, 1]), np.array([1, 2, 2, 2, 0])
    expected = shape_bias_of_predictions(predictions, shapes, textures, ["a", "b", "c"])["shape_bias"]
    columns = {"shape": predictions == shapes, "texture": predictions == textures}
    assert observed(shape_bias, columns) == pytest.approx(expected) == pytest.approx(2 / 5)


def test_bootstrap_of_an_accuracy_matches_the_closed_form_mcnemar_interval():
    """On 0/1 columns the resamples are multinomial counts over the distinct rows: their interval is the normal
    approximation of the paired difference of proportions when the counts are large."""
    reference = np.array([0] * 150 + [1] * 100 + [1] * 1200 + [0] * 550, bool)  # b = 150, c = 100, n = 2000
    model = np.array([1] * 150 + [0] * 100 + [1] * 1200 + [0] * 550, bool)
    exact = mcnemar(reference, model)
    boot = paired_bootstrap(accuracy, {"correct": reference}, {"correct": model}, resamples=8000, seed=4)
    half = (exact.ci_high - exact.ci_low) / 2
    assert boot.difference == pytest.approx(exact.difference) and exact.difference == 50 / 2000
    assert boot.ci_low == pytest.approx(exact.ci_low, abs=0.06 * half)
    assert boot.ci_high == pytest.approx(exact.ci_high, abs=0.06 * half)
    assert boot.p_value == pytest.approx(exact.p_value, rel=0.35)  # both about 0.002
