"""ImageNet-X factor accuracies and error ratios (Idrissi et al., 2022), computed with numpy alone.

The numbers equal those of the ``imagenet-x`` package (``augment_model_predictions`` + ``compute_factor_accuracies``
+ ``error_ratio``): predictions are inner-joined with the annotations on ``file_name``, so only annotated images
count (and, by default, not the 3,000 prototype images shown to the annotators); ``acc_f`` is the accuracy over
the joined images that carry factor ``f``, ``average`` the accuracy over all joined images, and the error ratio is
``(1 - acc_f) / (1 - average)``. The annotation files are read from the installed package (never copied) once per
process, without importing it, since the package pulls in pandas and scipy. One deliberate difference: when not one
prediction is correct the package reports every factor as NaN (its count of correct images per factor comes from
an empty group); here they are 0.

On ImageNet-100 most factors are thin (the Kaggle list has 21 texture images under the top factor), so every
result carries the image count and a 95 % Wilson interval per factor and flags factors below ``min_count``.
``evaluate_annotations`` applies the same scoring to any rows in the ImageNet-X schema, such as ShapesX test
annotations.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mixmask.factors import FACTORS

WHICH_FACTORS = ("top", "multi")
NUM_CLASSES = 1000
Z95 = 1.959964  # two-sided 95 % normal quantile
_EXAMPLES = 5  # offending entries quoted in an error message


class PredictionError(ValueError):
    """Predictions (or their class list) that cannot be scored; the message says what is wrong."""


# --- the package's annotation files --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def annotation_dir() -> Path:
    """The ``annotations`` folder inside the installed ``imagenet_x`` package.

    ``find_spec`` locates the package without executing its ``__init__`` (which imports pandas and scipy)."""
    spec = importlib.util.find_spec("imagenet_x")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "ImageNet-X evaluation needs the 'imagenet-x' package (pip install 'imagenet-x>=0.0.7'), which ships "
            "the annotations"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "annotations"
    if not path.is_dir():
        raise FileNotFoundError(f"the imagenet_x package at {path.parent} has no annotations folder")
    return path


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids; position i is class index i (sorted-wnid order)."""
    with open(annotation_dir() / "imagenet_labels.txt", newline="") as f:
        return tuple(row[0] for row in csv.reader(f) if row)


@lru_cache(maxsize=1)
def _val_images() -> tuple[np.ndarray, dict[str, int]]:
    """The 50,000 val file names of filename_label.csv and a name -> position lookup."""
    with open(annotation_dir() / "filename_label.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        names = [row[0] for row in reader if row]
    return np.array(names), {name: i for i, name in enumerate(names)}


@lru_cache(maxsize=1)
def _prototypes() -> frozenset[str]:
    with open(annotation_dir() / "prototypical_paths.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return frozenset(row[0] for row in reader if row)


# Every line of the shipped files has this key order, so one regular expression reads them about four times faster
# than json.loads per line; any file it does not match line for line goes through json instead.
_FILE_KEYS = (
    "multiple_objects",
    "background",
    "color",
    "brighter",
    "darker",
    "style",
    "larger",
    "smaller",
    "object_blocking",
    "person_blocking",
    "partial_view",
    "pattern",
    "pose",
    "shape",
    "subcategory",
    "texture",
)
_LINE = re.compile(
    r'^\{"file_name":"([^"\\]*)","class":(\d+),' + ",".join(f'"{k}":([01])' for k in _FILE_KEYS) + ",", re.M
)
_FILE_ORDER = np.array([_FILE_KEYS.index(f) for f in FACTORS])


def _parse_fast(text: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    matches = _LINE.findall(text)
    if len(matches) != sum(1 for line in text.splitlines() if line.strip()):
        return None
    names = [m[0] for m in matches]
    classes = np.array([int(m[1]) for m in matches], dtype=np.int64)
    digits = "".join("".join(m[2:]) for m in matches).encode()
    factors = (np.frombuffer(digits, dtype=np.uint8).reshape(-1, len(_FILE_KEYS)) == ord("1"))[:, _FILE_ORDER]
    return names, classes, factors


def _parse_json(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    names = [row["file_name"] for row in rows]
    classes = np.array([row["class"] for row in rows], dtype=np.int64)
    factors = np.array([[row[f] for f in FACTORS] for row in rows], dtype=np.int64)
    if not np.isin(factors, (0, 1)).all():
        raise ValueError("ImageNet-X annotation factor columns must be 0 or 1")
    return names, classes, factors.astype(bool)


@dataclass(frozen=True)
class _Annotations:
    names: np.ndarray  # (n,) file names
    classes: np.ndarray  # (n,) int64, ImageNet-1k index
    factors: np.ndarray  # (n, 16) bool, FACTORS order
    val_index: np.ndarray  # (n,) position of each row in filename_label.csv, for a vectorised join
    prototype: np.ndarray  # (n,) bool, file listed in prototypical_paths.csv


@lru_cache(maxsize=2)
def _annotations(which_factor: str) -> _Annotations:
    """The val annotations of ``imagenet_x_val_{which_factor}_factor.jsonl`` as numpy arrays."""
    text = (annotation_dir() / f"imagenet_x_val_{which_factor}_factor.jsonl").read_text()
    names, classes, factors = _parse_fast(text) or _parse_json(text)
    _, position = _val_images()
    prototypes = _prototypes()
    return _Annotations(
        names=np.array(names),
        classes=classes,
        factors=factors,
        val_index=np.array([position[n] for n in names], dtype=np.int64),
        prototype=np.array([n in prototypes for n in names]),
    )


# --- results -------------------------------------------------------------------------------------------------------


def wilson_interval(correct: int, count: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion correct / count; (nan, nan) without observations."""
    if count == 0:
        return (math.nan, math.nan)
    p = correct / count
    denominator = 1 + z * z / count
    centre = (p + z * z / (2 * count)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count))
    # the bounds reach 0 and 1 exactly at p = 0 and p = 1; rounding would leave 1e-17 there
    return (0.0 if correct == 0 else centre - half, 1.0 if correct == count else centre + half)


def _none_if_nan(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def _fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


@dataclass
class FactorResults:
    """Per-factor accuracy, error ratio, image count and 95 % interval of one set of predictions."""

    accuracy: dict[str, float]
    error_ratio: dict[str, float]
    counts: dict[str, int]
    correct: dict[str, int]
    interval: dict[str, tuple[float, float]]
    average: float
    worst_factor: str
    images: int
    thin: list[str]
    settings: dict = field(default_factory=dict)
    # the scored images, for paired comparisons and re-analysis: file name, correct, factor matrix (n, 16)
    scored: tuple[list[str], np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready; nan becomes None."""
        return {
            "average": self.average,
            "worst_factor": self.worst_factor,
            "images": self.images,
            "thin": list(self.thin),
            "settings": dict(self.settings),
            "factors": {
                f: {
                    "accuracy": _none_if_nan(self.accuracy[f]),
                    "error_ratio": _none_if_nan(self.error_ratio[f]),
                    "count": self.counts[f],
                    "correct": self.correct[f],
                    "ci95": [_none_if_nan(v) for v in self.interval[f]],
                    "thin": f in self.thin,
                }
                for f in FACTORS
            },
        }

    def table(self) -> str:
        """Fixed-width text table, one line per factor; thin factors are marked in the last column."""
        s = self.settings
        min_count = s.get("min_count", "?")
        lines = [
            f"ImageNet-X ({s.get('source', '?')}, {s.get('which_factor', '?')} factor, "
            f"prototypes {'filtered' if s.get('filter_prototypes', True) else 'kept'}): {self.images:,} images, "
            f"average accuracy {self.average:.4f}, worst factor {self.worst_factor}",
            f"{'factor':<18}{'count':>7}{'correct':>9}{'accuracy':>10}{'95% CI':>17}{'error ratio':>13}  thin",
        ]
        for f in FACTORS:
            lo, hi = self.interval[f]
            ci = "n/a" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
            lines.append(
                f"{f:<18}{self.counts[f]:>7,}{self.correct[f]:>9,}{_fmt(self.accuracy[f]):>10}{ci:>17}"
                f"{_fmt(self.error_ratio[f], '.2f'):>13}  {'THIN' if f in self.thin else ''}".rstrip()
            )
        if self.thin:
            lines.append(f"THIN: fewer than {min_count} images; read those rows as anecdotes, not as accuracies.")
        return "\n".join(lines)


def _score(correct: np.ndarray, factors: np.ndarray, min_count: int, settings: dict, names: list[str]) -> FactorResults:
    """Results from per-image correctness (n,) and the factor matrix (n, 16) of the joined images (``names``)."""
    counts = factors.sum(0)
    hits = (factors & correct[:, None]).sum(0)
    images = int(correct.size)
    average = int(correct.sum()) / images
    accuracy = {f: (int(hits[k]) / int(counts[k]) if counts[k] else math.nan) for k, f in enumerate(FACTORS)}
    # 0/0 stays undefined: with every image correct no factor has an error to compare
    ratio = {f: ((1 - a) / (1 - average) if average < 1 else math.nan) for f, a in accuracy.items()}
    present = [f for f in FACTORS if not math.isnan(accuracy[f])]
    return FactorResults(
        accuracy=accuracy,
        error_ratio=ratio,
        counts={f: int(counts[k]) for k, f in enumerate(FACTORS)},
        correct={f: int(hits[k]) for k, f in enumerate(FACTORS)},
        interval={f: wilson_interval(int(hits[k]), int(counts[k])) for k, f in enumerate(FACTORS)},
        average=average,
        worst_factor=min(present, key=accuracy.__getitem__) if present else "",
        images=images,
        thin=[f for k, f in enumerate(FACTORS) if counts[k] < min_count],
        settings={**settings, "min_count": min_count},
        scored=(list(names), correct.astype(bool), factors.astype(bool)),
    )


# --- input checks --------------------------------------------------------------------------------------------------


def _examples(items: Sequence) -> str:
    shown = ", ".join(repr(x) for x in items[:_EXAMPLES])
    return shown + (", ..." if len(items) > _EXAMPLES else "")


def _check_options(which_factor: str, min_count: int) -> None:
    if which_factor not in WHICH_FACTORS:
        raise PredictionError(f"which_factor must be 'top' or 'multi', not {which_factor!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int | np.integer) or min_count < 0:
        raise PredictionError(f"min_count must be a non-negative integer, not {min_count!r}")


def _split_predictions(predictions: Mapping[str, int]) -> tuple[list[str], np.ndarray]:
    """File base names and int64 class indices; rejects empty input, non-string keys, repeated base names
    and class indices that are not non-negative integers."""
    if not isinstance(predictions, Mapping):
        raise PredictionError(f"predictions must be a mapping file name -> class index, not {type(predictions)}")
    if not predictions:
        raise PredictionError("predictions are empty: give a mapping file name -> predicted class index")
    names = []
    for key in predictions:
        if not isinstance(key, str | os.PathLike):
            raise PredictionError(f"prediction keys must be file names (str), found {key!r} ({type(key).__name__})")
        names.append(os.fspath(key).replace("\\", "/").rsplit("/", 1)[-1])
    if len(set(names)) != len(names):
        repeated = sorted(n for n, c in Counter(names).items() if c > 1)
        raise PredictionError(
            f"{len(repeated)} file name(s) occur more than once after reducing paths to base names "
            f"({_examples(repeated)}); give one prediction per image"
        )
    values = list(predictions.values())
    array = np.asarray(values) if values else np.zeros(0, np.int64)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        bad = [
            (n, v)
            for n, v in zip(names, values, strict=True)
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer)
        ]
        if bad:
            raise PredictionError(
                f"{len(bad)} predicted class(es) are not integer class indices, e.g. "
                + ", ".join(f"{n}: {v!r}" for n, v in bad[:_EXAMPLES])
            )
        if any(v < 0 or v >= 2**62 for v in values):  # Python ints beyond int64 still need a clear message
            array = np.array([v if 0 <= v < 2**62 else -1 for v in values], dtype=np.int64)
        else:
            array = np.array(values, dtype=np.int64)
    array = array.astype(np.int64, copy=False)
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise PredictionError(
            f"{negative.size} predicted class(es) are negative or too large, e.g. "
            + ", ".join(f"{names[i]}: {values[i]!r}" for i in negative[:_EXAMPLES])
        )
    return names, array


def _check_range(names: list[str], classes: np.ndarray, num_classes: int, what: str) -> None:
    out = np.flatnonzero(classes >= num_classes)
    if out.size:
        raise PredictionError(
            f"{out.size} predicted class(es) are >= {num_classes}, the number of {what}, e.g. "
            + ", ".join(f"{names[i]}: {int(classes[i])}" for i in out[:_EXAMPLES])
        )


def _wnid_to_1k(wnids: Sequence[str]) -> np.ndarray:
    """Index into ``wnids`` -> ImageNet-1k index."""
    if isinstance(wnids, str) or not isinstance(wnids, Sequence):
        raise PredictionError(f"wnids must be a list of ImageNet wnids such as 'n01440764', not {type(wnids)}")
    if not wnids:
        raise PredictionError("wnids is empty: give the model's class list (one ImageNet wnid per class index)")
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in position]
    if unknown:
        raise PredictionError(
            f"{len(unknown)} of {len(wnids)} wnids are not ImageNet-1k wnids ({_examples(unknown)}); "
            "wnids look like 'n01440764'"
        )
    if len(set(wnids)) != len(wnids):
        repeated = sorted(w for w, c in Counter(wnids).items() if c > 1)
        raise PredictionError(f"wnids repeat ({_examples(repeated)}); each class index needs its own wnid")
    return np.array([position[w] for w in wnids], dtype=np.int64)


def wnid_indices(wnids: Sequence[str]) -> list[int]:
    """The ImageNet-1k index of each wnid (a clear error for anything that is not one)."""
    return _wnid_to_1k(wnids).tolist()


# --- scoring -------------------------------------------------------------------------------------------------------


def evaluate(
    predictions: Mapping[str, int],
    which_factor: str = "top",
    filter_prototypes: bool = True,
    wnids: Sequence[str] | None = None,
    min_count: int = 30,
) -> FactorResults:
    """ImageNet-X on ImageNet-1k val predictions keyed by val file name (e.g. 'ILSVRC2012_val_00000001.JPEG'; a
    path is reduced to its base name). Class index is an ImageNet-1k index (sorted-wnid order), or, with `wnids`,
    an index into `wnids` (models trained on a subset such as ImageNet-100), mapped to 1k indices through the wnid
    list. Unannotated images and, with ``filter_prototypes``, prototype images drop out of the join, as in the
    ``imagenet-x`` package; ``settings`` records how many."""
    _check_options(which_factor, min_count)
    names, classes = _split_predictions(predictions)
    if wnids is None:
        _check_range(names, classes, NUM_CLASSES, "ImageNet-1k classes")
    else:
        to_1k = _wnid_to_1k(wnids)
        _check_range(names, classes, len(to_1k), "wnids given")
        classes = to_1k[classes]
    val_names, position = _val_images()
    index = [position.get(n, -1) for n in names]
    unknown = [n for n, i in zip(names, index, strict=True) if i < 0]
    if unknown:
        raise PredictionError(
            f"{len(unknown)} of {len(names)} prediction file names are not ImageNet-1k val images "
            f"({_examples(unknown)}); keys must be val file names such as 'ILSVRC2012_val_00000001.JPEG'"
        )
    predicted = np.full(len(val_names), -1, dtype=np.int64)  # per val image, -1 where no prediction was given
    predicted[np.array(index, dtype=np.int64)] = classes

    ann = _annotations(which_factor)
    row_prediction = predicted[ann.val_index]
    has_prediction = row_prediction >= 0
    keep = has_prediction & ~ann.prototype if filter_prototypes else has_prediction
    images = int(keep.sum())
    prototypes_dropped = int((has_prediction & ann.prototype).sum()) if filter_prototypes else 0
    settings = {
        "source": "imagenet-x",
        "which_factor": which_factor,
        "filter_prototypes": bool(filter_prototypes),
        "classes": NUM_CLASSES if wnids is None else len(wnids),
        "predictions": len(names),
        "unannotated": len(names) - int(has_prediction.sum()),
        "prototypes_dropped": prototypes_dropped,
    }
    if images == 0:
        raise PredictionError(
            f"none of the {len(names)} predicted images is an annotated ImageNet-X image "
            f"({settings['unannotated']} unannotated, {prototypes_dropped} prototypes dropped): nothing to score"
        )
    if wnids is not None:
        # a subset model cannot be right on images of other classes; worth knowing when reading the numbers
        settings["outside_classes"] = int((~np.isin(ann.classes[keep], to_1k)).sum())
    correct = row_prediction[keep] == ann.classes[keep]
    return _score(correct, ann.factors[keep], min_count, settings, [val_names[i] for i in ann.val_index[keep]])


def evaluate_annotations(
    predictions: Mapping[str, int],
    rows: Sequence[Mapping],
    which_factor: str = "top",
    filter_prototypes: bool = True,
    min_count: int = 30,
    source: str = "shapesx",
    num_classes: int | None = None,
) -> FactorResults:
    """The same scoring on any rows in the ImageNet-X schema (file_name, class, 16 factor columns, top) such as
    ShapesX test annotations: top-factor mode uses only the `top` column (one-hot), multi uses the factor columns;
    filter_prototypes drops rows whose top is 'none'. Predictions index the same classes as the rows' `class`;
    with ``num_classes`` they are checked to be below it. Every prediction must name a row; rows without a
    prediction drop out of the join."""
    _check_options(which_factor, min_count)
    names, classes = _split_predictions(predictions)
    if num_classes is not None:
        _check_range(names, classes, num_classes, "classes")
    if not rows:
        raise PredictionError("no annotation rows given")
    row_names, row_classes, row_factors, prototype = [], [], [], []
    needs_top = which_factor == "top" or filter_prototypes
    for k, row in enumerate(rows):
        try:
            row_names.append(str(row["file_name"]))
            row_classes.append(int(row["class"]))
            if which_factor == "multi":
                row_factors.append([bool(row[f]) for f in FACTORS])
            top = row["top"] if needs_top else None
        except KeyError as error:
            raise PredictionError(
                f"annotation row {k} has no {error.args[0]!r} column; rows need file_name, class, the 16 factor "
                "columns and top"
            ) from None
        if needs_top and top not in FACTORS and top != "none":
            raise PredictionError(f"annotation row {k} has top factor {top!r}; expected one of FACTORS or 'none'")
        if which_factor == "top":
            row_factors.append([top == f for f in FACTORS])
        prototype.append(top == "none")
    position = {n: i for i, n in enumerate(row_names)}
    if len(position) != len(row_names):
        raise PredictionError("annotation rows repeat file names; each image needs exactly one row")
    index = [position.get(n, -1) for n in names]
    unknown = [n for n, i in zip(names, index, strict=True) if i < 0]
    if unknown:
        raise PredictionError(
            f"{len(unknown)} of {len(names)} prediction file names are not among the {len(row_names)} annotation "
            f"rows ({_examples(unknown)})"
        )
    index_array = np.array(index, dtype=np.int64)
    keep = ~np.array(prototype)[index_array] if filter_prototypes else np.ones(len(index), dtype=bool)
    if not keep.any():
        raise PredictionError(f"all {len(names)} predicted images are prototypes (top 'none'): nothing to score")
    rows_kept = index_array[keep]
    correct = classes[keep] == np.array(row_classes, dtype=np.int64)[rows_kept]
    factors = np.array(row_factors, dtype=bool).reshape(len(row_names), len(FACTORS))[rows_kept]
    settings = {
        "source": source,
        "which_factor": which_factor,
        "filter_prototypes": bool(filter_prototypes),
        "classes": num_classes,
        "predictions": len(names),
        "rows": len(row_names),
        "prototypes_dropped": int((~keep).sum()),
    }
    return _score(correct, factors, min_count, settings, [names[i] for i in np.flatnonzero(keep)])


def shapesx_rows(dataset) -> list[dict]:
    """The annotation rows of a ShapesX test split, for ``evaluate_annotations``."""
    return [dataset.annotation(i) for i in range(len(dataset))]
