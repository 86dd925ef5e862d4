"""The ShapesX data set: a split rendered on the fly, sample ``i`` drawn from ``np.random.default_rng([seed, split,
i])``, with labels, file names and ImageNet-X-style annotations."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from mixmask.data.shapesx.sampling import (
    cue_conflict_pair,
    cue_conflict_scene,
    factor_label,
    factor_plan,
    factor_scene,
    train_scene,
)
from mixmask.data.shapesx.scenes import Scene, draw, draw_image
from mixmask.data.shapesx.shapes import CLASSES
from mixmask.factors import FACTORS

SPLITS = ("train", "test", "cue_conflict")  # the exported splits
# ShapesX also has a "val" split: held-out images of the train distribution (own random stream), for model selection.
_SPLIT_IDS = {"train": 0, "val": 3, "test": 1, "cue_conflict": 2}  # seeds the random streams
DEFAULT_LENGTHS: dict[str, int] = {"train": 10000, "val": 2000, "test": 2720, "cue_conflict": 1000}


class ShapesX(Dataset):
    """ShapesX split rendered on the fly: items are ``(image, label, index)`` as in ``mixmask.data.common``."""

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None, seed: int = 0, transform=None):
        if split not in _SPLIT_IDS:
            raise ValueError(f"unknown ShapesX split {split!r}; valid splits: {', '.join(_SPLIT_IDS)}")
        if not 32 <= size <= 224:
            raise ValueError(f"ShapesX size must be between 32 and 224 pixels, got {size}")
        length = DEFAULT_LENGTHS[split] if length is None else length
        if length < 1:
            raise ValueError(f"ShapesX length must be at least 1, got {length}")
        if seed < 0:
            raise ValueError(f"ShapesX seed must be non-negative, got {seed}")
        self.split, self.size, self.length, self.seed, self.transform = split, size, length, seed, transform
        self.classes = list(CLASSES)
        self._split_id = _SPLIT_IDS[split]

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        i = int(i)
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for ShapesX {self.split} of length {self.length}")
        return i % self.length

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._split_id, i])

    def scene(self, i: int) -> Scene:
        """The drawn parameters of sample i; depends only on (seed, split, i)."""
        i = self._index(i)
        rng = self._rng(i)
        if self.split in ("train", "val"):
            return train_scene(rng, i % len(CLASSES))
        if self.split == "test":
            return factor_scene(rng, factor_label(i), factor_plan(rng, i)[1])
        return cue_conflict_scene(rng, i)

    def render(self, i: int) -> np.ndarray:
        """Sample i as a uint8 (size, size, 3) array."""
        return draw(self.scene(i), self.size)

    def label(self, i: int) -> int:
        i = self._index(i)
        if self.split == "test":
            return factor_label(i)
        return i % len(CLASSES)  # train and val cycle through classes, cue-conflict labels its shape

    def file_name(self, i: int) -> str:
        """Unique across splits: the join key of ImageNet-X-style evaluation."""
        return f"{self.split}_{self._index(i):06d}.png"

    def annotation(self, i: int) -> dict:
        """test: class, the 16 factor columns (0/1) and the top factor ("none" for prototypes); cue_conflict:
        shape and texture class; train and val: class."""
        i = self._index(i)
        out = {"file_name": self.file_name(i), "class": self.label(i)}
        if self.split == "test":
            top, factors = factor_plan(self._rng(i), i)
            out.update({f: int(f in factors) for f in FACTORS})
            out["top"] = top
        elif self.split == "cue_conflict":
            shape, texture = cue_conflict_pair(i)
            out.update(shape=shape, texture=texture, shape_name=CLASSES[shape], texture_name=CLASSES[texture])
        return out

    def __getitem__(self, i: int) -> tuple:
        image = draw_image(self.scene(i), self.size)
        return (self.transform(image) if self.transform else image), self.label(i), self._index(i)
