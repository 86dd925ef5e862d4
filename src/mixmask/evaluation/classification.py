"""Classification metrics: predictions over a data set, top-k accuracy, and the weighted kNN classifier on frozen
features (the usual self-supervised protocol: cosine similarity, k neighbours, votes weighted exp(sim / T))."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mixmask.data.common import Batch, Unreadable


@dataclass
class Outputs:
    """Per-image outputs of a model over a data set, in loader order."""

    values: torch.Tensor  # (N, D) logits or features, float32 on the CPU
    labels: torch.Tensor  # (N,)
    indices: torch.Tensor  # (N,) dataset indices (for file names)
    skipped: list[Unreadable] = field(default_factory=list)


@torch.no_grad()
def collect(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    device: torch.device,
    desc: str = "evaluate",
    progress: bool = True,
) -> Outputs:
    """Run ``fn`` (logits or features) over every batch; unreadable images are kept in ``skipped``."""
    values, labels, indices, skipped = [], [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        skipped += batch.skipped
        if len(batch) == 0:
            continue
        values.append(fn(batch.images.to(device)).float().cpu())
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not values:
        raise ValueError("no readable images to evaluate")
    return Outputs(torch.cat(values), torch.cat(labels), torch.cat(indices), skipped)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``; k larger than the number of classes counts every image as correct."""
    ks = list(ks)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``(N, num_classes)`` of a weighted kNN vote: the k most cosine-similar training images each vote
    for their class with weight ``exp(similarity / temperature)``."""
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(features), chunk):
        query = F.normalize(features[start : start + chunk].float(), dim=1)
        similarity, neighbour = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes)
        votes.scatter_add_(1, train_labels[neighbour], (similarity / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)
