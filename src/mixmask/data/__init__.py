"""Data sets from a config: the embedded ShapesX benchmark, class folders (ImageNet, ImageNet-100, any), and local
Fashion-MNIST / CIFAR files. Every data set returns ``(image, label, index)`` items, has ``classes`` and
``file_name(i)``, and is batched with ``collate`` (see ``common.py``)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from mixmask.config import DataConfig
from mixmask.data.common import Batch, DataError, Unreadable, collate

__all__ = [
    "Batch",
    "DataError",
    "Unreadable",
    "build_dataset",
    "check_dataset",
    "collate",
    "eval_loader",
    "label_fraction",
    "pretraining_subset",
    "resolve_num_workers",
    "usable_cores",
]

SPLITS = ("train", "val", "test", "cue_conflict")


def build_dataset(cfg: DataConfig, split: str, transform: Callable | None = None) -> Dataset:
    """The ``split`` of the configured data set. ``test`` and ``cue_conflict`` exist for ShapesX only; for the
    other data sets validation is ``val``. Class lists of train and val are checked to agree."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if cfg.dataset == "shapesx":
        from mixmask.data.shapesx import ShapesX

        length = getattr(cfg.shapesx, split)
        return ShapesX(split, size=cfg.image_size, length=length, seed=cfg.shapesx.seed, transform=transform)
    if split in ("test", "cue_conflict"):
        raise DataError(f"the {split} split exists for ShapesX only; data.dataset={cfg.dataset} has train and val")
    if cfg.dataset == "folder":
        from mixmask.data.folders import ClassFolderDataset, check_splits

        root = os.path.join(cfg.root, cfg.train_dir)
        train = ClassFolderDataset(root, transform=transform, strict=cfg.strict)
        if split == "train":
            return train
        val_root = os.path.join(cfg.root, cfg.val_dir)
        val = ClassFolderDataset(val_root, transform=transform, strict=cfg.strict)
        check_splits(train, val)
        return val
    from mixmask.data.small_sets import open_small_set

    return open_small_set(cfg.dataset, cfg.root, train=split == "train", transform=transform)


class LabelledSubset(Subset):
    """Some images of a data set, keeping its ``classes``, ``label(i)`` and ``file_name(i)`` (``i`` in the subset);
    items keep their own data-set index."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        super().__init__(dataset, indices)
        self.classes = dataset.classes

    def label(self, i: int) -> int:
        return self.dataset.label(self.indices[i])

    def file_name(self, i: int) -> str:
        return self.dataset.file_name(self.indices[i])


def label_fraction(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A class-balanced share of the labelled images for low-label training: ``round(fraction * n_c)`` images (at
    least one) of each class c, chosen by ``seed`` alone, so two variants trained with the same seed see the same
    images. ``fraction`` 1 returns the data set itself."""
    if fraction >= 1:
        return dataset
    labels = np.array([dataset.label(i) for i in range(len(dataset))])
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(members)[: max(1, round(fraction * len(members)))].tolist())
    return LabelledSubset(dataset, sorted(keep))


def few_images(dataset: Dataset, count: int, seed: int, in_order: bool = False) -> LabelledSubset:
    """``count`` images taken from the classes in turn (a class that runs out is skipped): each class's images in a
    random order drawn from ``seed``, or in index order with ``in_order`` (ShapesX, whose labels cycle, so the
    pick is its first ``count`` images)."""
    if count > len(dataset):
        raise DataError(f"data.subset={count}, but the training split has only {len(dataset)} images")
    labels = np.array([dataset.label(i) for i in range(len(dataset))])
    rng = np.random.default_rng(seed)
    queues = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    queues = [q if in_order else rng.permutation(q) for q in queues]
    picked: list[int] = []
    for depth in range(max(len(q) for q in queues)):
        picked.extend(int(q[depth]) for q in queues if depth < len(q))
        if len(picked) >= count:
            break
    return LabelledSubset(dataset, picked[:count])


class Repeated(Dataset):
    """Every image of ``dataset`` ``times`` times in a row of ``len(dataset) * times`` items (each item keeps its
    own data-set index; the trainer draws each position's augmentation afresh)."""

    def __init__(self, dataset: Dataset, times: int):
        self.dataset, self.times = dataset, times
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]


def pretraining_subset(dataset: Dataset, cfg: DataConfig, seed: int) -> Dataset:
    """``data.subset`` images of the training split, repeated ``data.repeat`` times (``auto``: enough to keep the
    epoch at the full split's size); the split itself without a subset."""
    if not cfg.subset:
        return dataset
    chosen = few_images(dataset, cfg.subset, seed, in_order=cfg.dataset == "shapesx")
    times = -(-len(dataset) // cfg.subset) if cfg.repeat == "auto" else cfg.repeat
    return Repeated(chosen, times)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_num_workers(value: int | str) -> int:
    """``auto``: the cores this process may use, shared with the other processes of this machine (torchrun's
    ``LOCAL_WORLD_SIZE``: one per local GPU), less one for the process itself; no workers when a process has 2
    cores or fewer (they would only compete with it)."""
    if value != "auto":
        return int(value)
    per_process = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return 0 if per_process <= 2 else per_process - 1


def check_dataset(cfg: DataConfig, progress: bool = True) -> dict[str, Any]:
    """Read every image of the train and val splits; count images per class and list the unreadable ones."""
    from mixmask.data.transforms import eval_transform_for

    transform = eval_transform_for(cfg)
    report: dict[str, Any] = {"dataset": cfg.dataset, "root": cfg.root, "splits": {}}
    for split in ("train", "val"):
        dataset = build_dataset(cfg, split, transform)
        loader = DataLoader(
            dataset, batch_size=64, num_workers=resolve_num_workers(cfg.num_workers), collate_fn=collate
        )
        per_class: Counter[str] = Counter()
        unreadable: list[Unreadable] = []
        for batch in tqdm(loader, desc=f"checking {split}", unit="batch", disable=not progress):
            per_class.update(dataset.classes[label] for label in batch.labels.tolist())
            unreadable.extend(batch.skipped)
        report["splits"][split] = {
            "images": sum(per_class.values()),
            "per_class": dict(sorted(per_class.items())),
            "unreadable": [{"path": u.path, "error": u.error} for u in unreadable],
        }
    return report


def eval_loader(dataset: Dataset, cfg: DataConfig, batch_size: int, max_images: int = 0) -> DataLoader:
    """In-order batches for evaluation. ``max_images`` > 0 keeps that many images drawn at random with a fixed seed,
    the same for every model: the first N would cover only the first classes of sorted class folders, and every
    k-th image only some classes of ShapesX, whose labels cycle."""
    if 0 < max_images < len(dataset):
        chosen = np.random.default_rng(0).choice(len(dataset), size=max_images, replace=False)
        dataset = Subset(dataset, sorted(chosen.tolist()))  # items keep their own dataset index
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(cfg.num_workers),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )
