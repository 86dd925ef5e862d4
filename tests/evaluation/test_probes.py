"""The frozen-encoder probes: the linear probe reaches the optimum of its objective, the kNN probe is the kNN vote."""

import torch
import torch.nn.functional as F

from mixmask.evaluation.classification import knn_predict
from mixmask.evaluation.probes import knn_probe, linear_probe

CENTRES = 3 * torch.randn(3, 16, generator=torch.Generator().manual_seed(0))


def _blobs(n=300, seed=0):
    labels = torch.arange(n) % 3
    return CENTRES[labels] + torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)), labels


def test_linear_probe_solves_its_regularised_logistic_regression():
    features, labels = _blobs()
    features = features * torch.linspace(0.1, 10, 16)  # badly scaled on purpose: the probe standardises
    classify = linear_probe(features, labels, 3, weight_decay=1e-2)
    assert (classify(features).argmax(1) == labels).float().mean() > 0.97
    test, test_labels = _blobs(seed=1)
    assert (classify(test * torch.linspace(0.1, 10, 16)).argmax(1) == test_labels).float().mean() > 0.9
    # at the returned solution the objective's gradient vanishes (float64, L-BFGS to tolerance)
    x = (features.double() - features.double().mean(0)) / features.double().std(0)
    scores = classify(features)
    weight = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1), scores).solution
    w, b = weight[:-1].T.clone().requires_grad_(), weight[-1].clone().requires_grad_()
    loss = F.cross_entropy(x @ w.T + b, labels) + 1e-2 / 2 * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5
    assert torch.equal(linear_probe(features, labels, 3, weight_decay=1e-2)(test), classify(test))  # no seed


def test_knn_probe_is_the_weighted_knn_vote():
    features, labels = _blobs()
    query, _ = _blobs(seed=2)
    assert torch.equal(
        knn_probe(features, labels, 3, k=5, temperature=0.1)(query), knn_predict(features, labels, query, 3, 5, 0.1)
    )
