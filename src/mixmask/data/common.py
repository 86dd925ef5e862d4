"""What every mixmask dataset returns, and the collate function that skips unreadable images.

A dataset item is ``(image, label, index)``; a dataset that cannot read an item returns ``Unreadable`` instead
(unless it runs strict), and ``collate`` drops it from the batch and lists it in ``Batch.skipped`` so the training
loop can count and report it. The index lets evaluation find each prediction's file name (``dataset.file_name(i)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Unreadable:
    index: int
    path: str
    error: str


@dataclass
class Batch:
    images: torch.Tensor | tuple[torch.Tensor, ...]  # (B, 3, H, W) float; a tuple for crops of several sizes
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64, positions in the dataset
    skipped: list[Unreadable] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def collate(samples: list) -> Batch:
    good = [s for s in samples if not isinstance(s, Unreadable)]
    skipped = [s for s in samples if isinstance(s, Unreadable)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped)
    first = good[0][0]
    if isinstance(first, tuple):  # DINO's (global crops, local crops): each part batched on its own
        images = tuple(torch.stack(parts) for parts in zip(*(s[0] for s in good), strict=True))
    else:
        images = torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    indices = torch.tensor([s[2] for s in good], dtype=torch.long)
    return Batch(images, labels, indices, skipped)


class DataError(ValueError):
    """Data that cannot be used as configured; the message says what was looked for, where, and what to do."""
