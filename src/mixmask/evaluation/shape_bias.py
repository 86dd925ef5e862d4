"""Cue-conflict shape bias (Geirhos et al. 2019): on images whose shape says one class and whose colour and texture
say another, how often a model that picks either cue picks the shape.

Predictions that match neither cue are left out of the ratio (but reported as ``shape_or_texture_fraction``), as in
Geirhos et al.; per-class numbers are grouped by the shape class.

ImageNet models are scored on the public stimulus set (a local folder ``<category>/<shape><k>-<texture><j>.png``,
``CueConflictFolder``) by the 16-category protocol: the 1000-class softmax probabilities are averaged within each
category's ImageNet classes (``IMAGENET16``, the WordNet mapping of the model-vs-human toolbox) and the decision is
the top category (``category_scores``). Stimuli whose shape and texture categories agree are left out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mixmask.data.common import DataError, collate
from mixmask.data.folders import ClassFolderDataset


def _read_categories() -> dict[str, list[int]]:
    text = (resources.files("mixmask") / "resources" / "imagenet16_categories.txt").read_text()
    lines = (line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {name.strip(): [int(i) for i in indices.split()] for name, indices in lines}


IMAGENET16: dict[str, list[int]] = _read_categories()  # category -> its ImageNet-1k class indices, sorted by name
STIMULUS = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.png$")


def category_columns(columns: Sequence[int], categories: Mapping[str, Sequence[int]] = IMAGENET16) -> list[list[int]]:
    """For each category, the logit columns of its classes; ``columns[c]`` is the ImageNet-1k index of column c.
    A category without any of its classes among the columns is a ``ValueError`` naming it."""
    position = {index: c for c, index in enumerate(columns)}
    members = {name: [position[i] for i in indices if i in position] for name, indices in categories.items()}
    missing = [name for name, found in members.items() if not found]
    if missing:
        raise ValueError(f"the classifier has none of the ImageNet classes of: {', '.join(missing)}")
    return list(members.values())


def category_scores(
    logits: torch.Tensor, columns: Sequence[int] | None = None, categories: Mapping[str, Sequence[int]] = IMAGENET16
) -> torch.Tensor:
    """``(B, classes)`` logits -> ``(B, len(categories))``: the softmax probabilities averaged within each category
    (``columns`` as in ``category_columns``; default: the 1000 ImageNet classes in order)."""
    members = category_columns(range(logits.shape[1]) if columns is None else columns, categories)
    probabilities = logits.double().softmax(dim=1)
    return torch.stack([probabilities[:, found].mean(dim=1) for found in members], dim=1)


class CueConflictFolder(ClassFolderDataset):
    """The cue-conflict stimuli of Geirhos et al. in their public layout, ``root/<category>/<shape><k>-<texture><j>.png``
    with the 16 category folders; items are labelled by the shape category and ``annotation(i)`` gives the shape and
    texture category indices. Stimuli whose two cues name the same category are left out (``same_cue`` counts them),
    a file name that does not follow the layout is a ``DataError``."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, strict: bool = False):
        super().__init__(root, transform=transform, strict=strict, extensions=(".png",))
        if self.classes != sorted(IMAGENET16):
            raise DataError(
                f"the cue-conflict folder {root} must hold the 16 category folders ({', '.join(sorted(IMAGENET16))}); "
                f"found {', '.join(self.classes)}"
            )
        self.cues: list[tuple[int, int]] = []
        kept = []
        for path, label in self.samples:
            found = STIMULUS.match(os.path.basename(path))
            if not found or found[1] not in self.class_to_idx or found[3] not in self.class_to_idx:
                raise DataError(
                    f"cue-conflict stimulus {path}: expected a name <shape><k>-<texture><j>.png with two of the 16 "
                    f"categories ({', '.join(self.classes)})"
                )
            shape, texture = self.class_to_idx[found[1]], self.class_to_idx[found[3]]
            if shape != label:
                raise DataError(f"cue-conflict stimulus {path}: its shape {found[1]!r} is not its folder's category")
            if shape != texture:
                kept.append((path, label))
                self.cues.append((shape, texture))
        self.same_cue = len(self.samples) - len(kept)
        if not kept:
            raise DataError(f"no cue-conflict stimuli in {root}: every image's shape and texture name one category")
        self.samples = kept

    def annotation(self, index: int) -> dict[str, int]:
        shape, texture = self.cues[index]
        return {"shape": shape, "texture": texture}


def _labels(values, name: str, n_classes: int) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = array.reshape(-1) if array.ndim else array.reshape(1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must be integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= n_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{first}] = {int(array[first])} is not a class index (there are {n_classes} classes, 0..{n_classes - 1})"
        )
    return array


def _ratio(shape: int, texture: int) -> float | None:
    return shape / (shape + texture) if shape + texture else None


def shape_bias(
    predictions: Sequence[int] | torch.Tensor,
    shape_labels: Sequence[int] | torch.Tensor,
    texture_labels: Sequence[int] | torch.Tensor,
    class_names: Sequence[str],
) -> dict:
    """shape_bias = shape decisions / (shape + texture decisions), overall and per shape class. JSON-ready: a ratio
    with no shape-or-texture decision behind it is None."""
    n_classes = len(class_names)
    if n_classes < 2:
        raise ValueError(f"shape bias needs at least 2 classes, got {n_classes}")
    predictions = _labels(predictions, "predictions", n_classes)
    shape = _labels(shape_labels, "shape_labels", n_classes)
    texture = _labels(texture_labels, "texture_labels", n_classes)
    if not len(predictions) == len(shape) == len(texture):
        raise ValueError(
            f"predictions, shape_labels and texture_labels must have the same length, got "
            f"{len(predictions)}, {len(shape)} and {len(texture)}"
        )
    if len(predictions) == 0:
        raise ValueError("shape bias needs at least one cue-conflict image")
    same = shape == texture
    if same.any():
        first = int(np.flatnonzero(same)[0])
        raise ValueError(
            f"image {first} has shape and texture label {int(shape[first])}: cue-conflict images need different cues"
        )
    is_shape = predictions == shape
    is_texture = predictions == texture
    per_class = {}
    for c, name in enumerate(class_names):
        in_class = shape == c
        s, t = int(is_shape[in_class].sum()), int(is_texture[in_class].sum())
        per_class[str(name)] = {"shape_bias": _ratio(s, t), "shape": s, "texture": t, "images": int(in_class.sum())}
    s, t, n = int(is_shape.sum()), int(is_texture.sum()), len(predictions)
    return {
        "shape_bias": _ratio(s, t),
        "shape_decisions": s,
        "texture_decisions": t,
        "images": n,
        "shape_or_texture_fraction": (s + t) / n,
        "per_class": per_class,
    }


@torch.no_grad()
def cue_conflict_predictions(
    classify: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Top-1 predictions, shape labels, texture labels and data-set indices of the images on a cue-conflict split: ``dataset`` yields
    ``(image tensor, label, index)`` items (ShapesX("cue_conflict", transform=...)) and ``dataset.annotation(i)`` has
    ``shape`` and ``texture``. ``classify(images)`` returns logits; put the model in eval mode first. Unreadable
    images are skipped (they appear in none of the lists)."""
    if not hasattr(dataset, "annotation"):
        raise ValueError("the cue-conflict dataset must have annotation(i) giving 'shape' and 'texture'")
    first = dataset[0]
    if isinstance(first, tuple) and not isinstance(first[0], torch.Tensor):
        raise ValueError("cue-conflict images must be tensors: give the dataset a transform (e.g. eval_transform)")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    predictions: list[int] = []
    shapes: list[int] = []
    textures: list[int] = []
    indices: list[int] = []
    for batch in loader:
        if len(batch) == 0:
            continue
        predictions.extend(classify(batch.images.to(device)).argmax(dim=1).cpu().tolist())
        indices.extend(batch.indices.tolist())
        for index in batch.indices.tolist():
            annotation = dataset.annotation(index)
            shapes.append(int(annotation["shape"]))
            textures.append(int(annotation["texture"]))
    return predictions, shapes, textures, indices
