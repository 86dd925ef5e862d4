"""Probes of a frozen encoder on features computed once: a linear classifier and the weighted kNN classifier.

The usual way self-supervised work reads a representation without finetuning it away. Deliberate difference from
MAE's linear probe (BatchNorm without affine, then a linear head trained 90 epochs with LARS on augmented crops): the
features are computed once, without augmentation, standardised with the training features' mean and standard
deviation (what MAE's BatchNorm does at test time), and the head is a multinomial logistic regression fitted to
convergence with full-batch L-BFGS and an L2 penalty. On small data sets that is minutes less and deterministic;
the kNN classifier is the one ``finetune.probe=knn`` uses (cosine similarity, k neighbours, votes exp(sim / T)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mixmask.evaluation.classification import knn_predict

Classify = Callable[[torch.Tensor], torch.Tensor]  # features (N, D) -> class scores (N, C)


def linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 500
) -> Classify:
    """Multinomial logistic regression on standardised features, ``weight_decay / 2 * ||W||^2`` added to the mean
    cross-entropy, fitted with L-BFGS from zero weights (a convex problem: the result does not depend on a seed)."""
    features = features.double()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def classify(query: torch.Tensor) -> torch.Tensor:
        return ((query.double() - mean) / std) @ weight.T + bias

    return classify


def knn_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07
) -> Classify:
    """The weighted kNN vote of the training features (the bank) for each query."""

    def classify(query: torch.Tensor) -> torch.Tensor:
        return knn_predict(features, labels, query, num_classes, k, temperature)

    return classify
