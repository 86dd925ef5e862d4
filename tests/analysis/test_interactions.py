"""J(m) against exact enumeration of every context, and against the analytic value of a polynomial model."""

import itertools

import numpy as np
import pytest
import torch

from mixmask.analysis.interactions import (
    DEFAULT_RATIOS,
    _patch_masks,
    interaction_strength,
    log_odds,
    neighbour_pairs,
)

GRID, N = 3, 9


class PatchPolynomial(torch.nn.Module):
    """Log-odds of class 0 = a + sum_k b_k x_k + sum_{k<l} c_kl x_k x_l + d x_0 x_1 x_2, x_k the patch's mean."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a, self.b = 0.3, torch.randn(N, generator=g, dtype=torch.float64)
        self.c = torch.triu(0.5 + torch.rand(N, N, generator=g, dtype=torch.float64), diagonal=1)  # all positive
        self.d = 0.8

    def forward(self, images):
        x = images[:, 0].double().unfold(1, 4, 4).unfold(2, 4, 4).mean((-1, -2)).flatten(1)  # (B, 9), 12 px images
        value = self.a + x @ self.b + ((x @ self.c) * x).sum(1) + self.d * x[:, 0] * x[:, 1] * x[:, 2]
        return torch.stack([value, torch.zeros_like(value)], 1)


def test_neighbour_pairs_and_patch_masks():
    assert len(neighbour_pairs(3)) == 72 and (0, 8) in neighbour_pairs(3)  # every pair within distance 2 on 3x3
    assert (0, 3) not in neighbour_pairs(4) and (0, 2) in neighbour_pairs(4)
    keep = torch.zeros(1, 9, dtype=torch.bool)
    keep[0, 4] = True
    mask = _patch_masks(keep, 3, (12, 12))[0, 0]
    assert mask.sum() == 16 and mask[4:8, 4:8].all()
    assert log_odds(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(2 - np.log(2))


def test_j_equals_exact_enumeration_of_every_context():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 144, 5)).eval()  # fmt: skip
    images, labels = torch.randn(2, 3, 12, 12), torch.tensor([1, 3])
    points = interaction_strength(model, images, labels, GRID, pairs=72, contexts=35, seed=0)
    # brute force: v of all 512 kept-patch sets, then every m-subset of every pair
    keep = torch.tensor(list(itertools.product([False, True], repeat=N)))
    expected = np.zeros(len(DEFAULT_RATIOS))
    for image, label in zip(images, labels, strict=True):
        batch = torch.where(_patch_masks(keep, GRID, (12, 12)), image[None], torch.zeros(1))
        v = {
            tuple(k.tolist()): x for k, x in zip(keep, log_odds(model(batch).double(), label.repeat(512)), strict=True)
        }

        def value(s, v=v):
            return v[tuple(k in s for k in range(N))]

        for r, ratio in enumerate(DEFAULT_RATIOS):
            m = int(7 * ratio)
            per_pair = []
            for i, j in neighbour_pairs(GRID):
                others = [k for k in range(N) if k not in (i, j)]
                terms = [value({*s, i, j}) - value({*s, i}) - value({*s, j}) + value(set(s))
                         for s in itertools.combinations(others, m)]  # fmt: skip
                per_pair.append(abs(float(np.mean(terms))))
            expected[r] += np.mean(per_pair) / 2
    assert [p.strength for p in points] == pytest.approx(expected.tolist(), rel=1e-6)
    assert np.mean([p.normalised for p in points]) == pytest.approx(1.0)
    assert [p.order for p in points] == [int(7 * r) for r in DEFAULT_RATIOS]


def test_j_of_a_polynomial_model_is_its_analytic_value():
    model = PatchPolynomial()
    images, labels = torch.ones(1, 3, 12, 12), torch.tensor([0])
    points = interaction_strength(model, images, labels, GRID, pairs=72, contexts=35, seed=1)
    triple = {(0, 1): 2, (1, 0): 2, (0, 2): 1, (2, 0): 1, (1, 2): 0, (2, 1): 0}  # pair -> the third patch
    for point in points:
        # I_m(i, j) = c_ij + d * P(the third patch of {0, 1, 2} is in S) = c_ij + d * m / 7 for pairs inside {0, 1, 2}
        values = [float(model.c[min(i, j), max(i, j)]) + (model.d * point.order / 7 if (i, j) in triple else 0.0)
                  for i, j in neighbour_pairs(GRID)]  # fmt: skip
        assert point.strength == pytest.approx(np.mean(values), rel=1e-9)


def test_sampled_contexts_are_seeded_and_the_same_for_every_model():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2)).eval()
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    first = interaction_strength(model, images, labels, 4, ratios=[0.0, 0.5, 1.0], pairs=4, contexts=3, seed=7)
    again = interaction_strength(model, images, labels, 4, ratios=[0.0, 0.5, 1.0], pairs=4, contexts=3, seed=7)
    assert first == again
    # two classes and linear logits: the log-odds is linear in the patches, so no pair interacts
    assert all(p.strength == pytest.approx(0.0, abs=1e-5) for p in first)
