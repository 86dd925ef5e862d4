"""Build ImageNet-100 as a tree of symlinks into a local ImageNet-1k copy, without copying or decoding an image (or,
with ``resize``, as resized copies: ``mixmask.data.resize``).

Two class lists ship with mixmask: ``cmc`` (Tian et al.'s CMC list, the usual "IN-100" of self-supervised papers,
A2MIM's) and ``kaggle`` (the Kaggle ``ambityga/imagenet100`` classes, which the Mix-and-Mask paper evaluated).
The source is ``R/train/<wnid>/*.JPEG`` plus either ``R/val/<wnid>/*.JPEG`` or a flat ``R/val/*.JPEG`` with a label
file. The result, ``out/{train,val}/<wnid>/<file>`` of absolute symlinks plus ``out/classes.txt``, is a class-folder
tree that ``ClassFolderDataset`` reads (``classes.txt`` lists the wnids sorted: line i is label i). Everything is
checked before anything is written; re-running replaces the links, and real files are never deleted. Resized copies
keep the file names, so the ImageNet-X join by file name still holds; a stopped resize resumes when run again.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mixmask.data.common import DataError
from mixmask.data.folders import is_image_file
from mixmask.data.resize import QUALITY, check_marker, write_resized

CLASS_LISTS = {"cmc": "imagenet100_cmc.txt", "kaggle": "imagenet100_kaggle.txt"}
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.csv", "val_labels.txt", "filename_label.csv")
LABEL_FORMATS = (
    "Kaggle's LOC_val_solution.csv (ImageId,PredictionString), lines 'file_name wnid' (space, tab or comma), or "
    "'file_name,index' with ImageNet-1k indices in sorted-wnid order"
)
_WNID = re.compile(r"n\d{8}")

Plan = dict[str, list[tuple[str, str]]]  # wnid -> [(absolute source path, link name)]


def load_class_list(name_or_path: str | os.PathLike) -> list[str]:
    """The wnids of a shipped list (``"cmc"``, ``"kaggle"``) or of a text file with one wnid per line.

    Blank lines and ``#`` comments are skipped; a malformed or repeated wnid is a ``DataError`` naming its line.
    Any list of at least 2 classes is accepted; one that does not have 100 gives a warning.
    """
    name = os.fspath(name_or_path)
    if name in CLASS_LISTS:
        text = (resources.files("mixmask") / "resources" / CLASS_LISTS[name]).read_text()
        source = f"the shipped {name} class list"
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(
                f"class list {name!r} is neither a shipped list ({', '.join(CLASS_LISTS)}) nor an existing file; "
                "give one of those names or a text file with one wnid (e.g. n01440764) per line"
            )
        text = path.read_text()
        source = f"class list {path}"
    wnids: list[str] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _WNID.fullmatch(entry):
            raise DataError(
                f"{source}, line {number}: {entry!r} is not a WordNet id ('n' and 8 digits, e.g. n01440764); "
                "the file needs one wnid per line"
            )
        if entry in first_seen:
            raise DataError(f"{source}, line {number}: {entry} repeats line {first_seen[entry]}; list each class once")
        first_seen[entry] = number
        wnids.append(entry)
    if len(wnids) < 2:
        raise DataError(f"{source} lists {len(wnids)} class(es); a class list needs at least 2 wnids, one per line")
    if len(wnids) != 100:
        warnings.warn(f"{source} lists {len(wnids)} classes, not 100: the result is not ImageNet-100", stacklevel=2)
    return wnids


def read_val_labels(path: str | os.PathLike, train_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Map ImageNet val file names without extension (``ILSVRC2012_val_00000001``) to wnids.

    The format is detected: Kaggle's ``ImageId,PredictionString`` CSV (the prediction string starts with the
    wnid), ``file_name wnid`` (space, tab or comma separated), or ``file_name,index`` with the ImageNet-1k index in
    sorted-wnid order, which is resolved through the 1000 sorted class folders of ``train_dir``. A header line
    is skipped. Names may carry an extension or a folder; only the bare stem is kept.
    """
    path = Path(path)
    rows: list[tuple[str, str, int]] = []
    kind = None  # "wnid" or "index", set by the first label line
    first_line = True
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = next(csv.reader([line])) if "," in line else line.split()
        value = fields[1].split()[0] if len(fields) > 1 and fields[1].split() else ""
        row_kind = "wnid" if _WNID.fullmatch(value) else "index" if value.isdigit() else None
        if row_kind is None and first_line:  # a header naming the columns
            first_line = False
            continue
        first_line = False
        if row_kind is None or kind not in (None, row_kind):
            raise DataError(
                f"{path}, line {number}: cannot read {line.strip()[:80]!r}; expected {LABEL_FORMATS}, one "
                "format for the whole file"
            )
        kind = row_kind
        rows.append((os.path.splitext(os.path.basename(fields[0].strip()))[0], value, number))
    if not rows:
        raise DataError(f"{path} holds no labels; expected {LABEL_FORMATS}")
    if kind == "index":
        wnid_of = _imagenet1k_wnids(path, train_dir)
        for _, value, number in rows:
            if int(value) >= len(wnid_of):
                raise DataError(f"{path}, line {number}: class index {value} is not an ImageNet-1k index (0..999)")
        rows = [(stem, wnid_of[int(value)], number) for stem, value, number in rows]
    labels: dict[str, str] = {}
    for stem, wnid, number in rows:
        if labels.setdefault(stem, wnid) != wnid:
            raise DataError(f"{path}, line {number}: {stem} is labelled {wnid} here and {labels[stem]} before")
    return labels


def _imagenet1k_wnids(label_file: Path, train_dir: str | os.PathLike | None) -> list[str]:
    """The sorted ImageNet-1k wnids (index order), read from the class folders of a full train split."""
    found = (
        sorted(e.name for e in os.scandir(train_dir) if e.is_dir()) if train_dir and os.path.isdir(train_dir) else []
    )
    if len(found) != 1000 or not all(_WNID.fullmatch(w) for w in found):
        raise DataError(
            f"{label_file} labels val images with class indices; they are positions in the sorted list of the 1000 "
            f"ImageNet-1k wnids, read from the class folders of {train_dir}, which has {len(found)} folders "
            "(or names that are not wnids). Use a full ImageNet-1k train folder or a label file with wnids"
        )
    return found


def build_imagenet100(
    imagenet_root: str | os.PathLike,
    out: str | os.PathLike,
    classes: str | os.PathLike = "cmc",
    val_labels: str | os.PathLike | None = None,
    progress: bool = True,
    resize: int | None = None,
    quality: int = QUALITY,
    workers: int | None = None,
) -> dict[str, Any]:
    """Link the chosen classes of ImageNet-1k at ``imagenet_root`` into ``out`` and return a summary.

    ``classes``: ``"cmc"``, ``"kaggle"`` or a file of wnids. ``val_labels``: the label file of a flat
    ``val/`` folder; when not given it is looked for (Kaggle's ``LOC_val_solution.csv`` and others) in the root,
    its ``val/`` and up to three parent folders. Every class must have train and val images, or nothing is
    written. ``resize``: write copies with the shorter side at most ``resize`` pixels (JPEG ``quality``, on
    ``workers`` processes) instead of links. Print the summary with ``format_summary``.
    """
    wnids = load_class_list(classes)
    root = Path(imagenet_root).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    for folder in (root / "train", root / "val"):
        if not folder.is_dir():
            raise DataError(
                f"{folder} is not a folder; --imagenet-root must hold ImageNet-1k as train/<wnid>/*.JPEG and val/ "
                "(class folders val/<wnid>/ or a flat val/*.JPEG with a label file)"
            )
    source = root.resolve()
    if out.resolve() == source or any(out.resolve().is_relative_to((source / s).resolve()) for s in ("train", "val")):
        raise DataError(f"--out {out} lies in the ImageNet source {root}; choose a folder outside it")

    train, problems = _class_folder_plan(root / "train", wnids)
    val, label_file, unlabeled, val_problems = _val_plan(root, wnids, val_labels)
    problems += val_problems
    if problems:
        raise DataError(
            f"cannot build ImageNet-100 from {root} with {len(wnids)} classes of {os.fspath(classes)}; nothing was "
            f"written. {' '.join(problems)} Check --imagenet-root (a full ImageNet-1k copy) and --classes"
        )

    if resize is not None:
        check_marker(out, resize, quality)
    old_links = _clear_links(out, copies=resize is not None)
    new_links: set[str] = set()
    resized = None
    if resize is not None:
        pairs = [
            (source_path, str(out / split / wnid / name))
            for split, plan in (("train", train), ("val", val))
            for wnid, files in plan.items()
            for source_path, name in files
        ]
        resized = write_resized(pairs, resize, quality, workers, progress)
    else:
        total = sum(len(files) for plan in (train, val) for files in plan.values())
        with tqdm(total=total, desc="linking ImageNet-100", unit="link", disable=not progress) as bar:
            for split, plan in (("train", train), ("val", val)):
                for wnid, files in plan.items():
                    folder = out / split / wnid
                    folder.mkdir(parents=True, exist_ok=True)
                    for source_path, name in files:
                        os.symlink(source_path, folder / name)
                        new_links.add(str(folder / name))
                    bar.update(len(files))
    listing = out / "classes.txt"
    tmp = listing.with_name("classes.txt.tmp")
    tmp.write_text("".join(f"{w}\n" for w in sorted(wnids)))
    os.replace(tmp, listing)

    return {
        "class_list": os.fspath(classes),
        "classes": sorted(wnids),
        "imagenet_root": str(root),
        "out": str(out),
        "val_layout": "class folders" if label_file is None else "flat",
        "val_labels": label_file,
        "train_counts": {w: len(train[w]) for w in sorted(wnids)},
        "val_counts": {w: len(val[w]) for w in sorted(wnids)},
        "train_images": sum(len(f) for f in train.values()),
        "val_images": sum(len(f) for f in val.values()),
        "unlabeled_val_images": unlabeled,
        "removed_stale_links": len(old_links - new_links),
        "resized": resized and {"shorter_side": resize, "quality": quality, **resized},
    }


def format_summary(summary: dict[str, Any], columns: int = 4) -> str:
    """The summary of ``build_imagenet100`` as text: totals, per-class ``train/val`` counts, min and max."""
    train, val = summary["train_counts"], summary["val_counts"]
    val_source = "class folders" if summary["val_labels"] is None else f"flat, labels from {summary['val_labels']}"
    lines = [
        f"ImageNet-100 ({summary['class_list']} class list): {len(summary['classes'])} classes, "
        f"{summary['train_images']:,} train + {summary['val_images']:,} val images",
        f"source {summary['imagenet_root']} (val: {val_source}) -> {summary['out']}",
        "per class (wnid train/val):",
    ]
    cells = [f"{w} {train[w]:>4}/{val[w]:<3}" for w in summary["classes"]]
    lines += ["   ".join(cells[i : i + columns]).rstrip() for i in range(0, len(cells), columns)]
    lines.append(
        f"train images per class {min(train.values())}..{max(train.values())}, "
        f"val images per class {min(val.values())}..{max(val.values())}"
    )
    if summary["unlabeled_val_images"]:
        lines.append(f"note: {summary['unlabeled_val_images']} flat val images have no label in the label file")
    if summary.get("resized"):
        done = summary["resized"]
        lines.append(
            f"resized copies (shorter side <= {done['shorter_side']} px, JPEG quality {done['quality']}): "
            f"{done['written']:,} written, {done['kept']:,} kept from an earlier run, "
            f"{len(done['unreadable'])} unreadable (copied as they are)"
        )
    if summary["removed_stale_links"]:
        lines.append(f"removed {summary['removed_stale_links']} links of an earlier build that are no longer wanted")
    return "\n".join(lines)


def _images_in(folder: Path) -> list[str]:
    """Sorted names of the image files directly in ``folder`` (symlinks to files count)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())


def _class_folder_plan(split_dir: Path, wnids: list[str]) -> tuple[Plan, list[str]]:
    """The images of ``split_dir/<wnid>/`` per wnid, and a sentence for missing or empty class folders."""
    plan: Plan = {}
    missing, empty = [], []
    for wnid in wnids:
        folder = split_dir / wnid
        if not folder.is_dir():
            missing.append(wnid)
            continue
        plan[wnid] = [(str(folder / name), name) for name in _images_in(folder)]
        if not plan[wnid]:
            empty.append(wnid)
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} class folders are missing from {split_dir} (looked for {split_dir}/<wnid>/): "
            f"{', '.join(missing)}."
        )
    if empty:
        problems.append(f"{len(empty)} class folders in {split_dir} hold no images: {', '.join(empty)}.")
    return plan, problems


def _val_plan(
    root: Path, wnids: list[str], val_labels: str | os.PathLike | None
) -> tuple[Plan, str | None, int, list[str]]:
    """Val images per wnid from class folders or a flat folder with labels; the label file used (None for class
    folders), how many flat images have no label, and the problems found. Class folders win unless a label file
    is given or no chosen class has a folder in val/."""
    val_dir = root / "val"
    loose = _images_in(val_dir)
    if val_labels is not None and not loose:
        raise DataError(
            f"--val-labels {val_labels} was given, but {val_dir} has no images directly in it; a label file "
            "is only needed for a flat val folder (class folders val/<wnid>/ need none)"
        )
    if val_labels is None and (not loose or any((val_dir / w).is_dir() for w in wnids)):
        plan, problems = _class_folder_plan(val_dir, wnids)
        return plan, None, 0, problems
    label_file = Path(val_labels).expanduser() if val_labels is not None else _find_label_file(root)
    if label_file is None or not label_file.is_file():
        given = f"the label file {label_file} does not exist" if label_file else "no label file was given or found"
        raise DataError(
            f"{val_dir} holds {len(loose)} images directly (a flat val folder) and {given}. Looked for "
            f"{', '.join(VAL_LABEL_FILES)} in {', '.join(map(str, _label_dirs(root)))}. Pass --val-labels FILE: "
            f"{LABEL_FORMATS}{_imagenet_x_hint()}"
        )
    labels = read_val_labels(label_file, root / "train")
    plan: Plan = {w: [] for w in wnids}
    unlabeled = 0
    for name in loose:
        wnid = labels.get(os.path.splitext(name)[0])
        if wnid is None:
            unlabeled += 1
        elif wnid in plan:
            plan[wnid].append((str(val_dir / name), name))
    if unlabeled == len(loose):
        raise DataError(
            f"none of the {len(loose)} images in {val_dir} (e.g. {loose[0]}) has a label in {label_file} "
            f"(which names e.g. {next(iter(labels))}); is it the label file of this val folder?"
        )
    empty = [w for w in wnids if not plan[w]]
    problems = (
        [f"{len(empty)} classes have no val image in {val_dir} by {label_file}: {', '.join(empty)}."] if empty else []
    )
    return plan, str(label_file), unlabeled, problems


def _label_dirs(root: Path) -> list[Path]:
    """Where a val label file is looked for: the root, its val/ and up to three parents (Kaggle's download keeps
    LOC_val_solution.csv three levels above ILSVRC/Data/CLS-LOC)."""
    return [root, root / "val", *list(root.parents)[:3]]


def _find_label_file(root: Path) -> Path | None:
    """The first known val label file in ``_label_dirs(root)``."""
    for folder in _label_dirs(root):
        for name in VAL_LABEL_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _imagenet_x_hint() -> str:
    """Points at the ``filename_label.csv`` that the installed imagenet-x package ships (index format)."""
    spec = importlib.util.find_spec("imagenet_x")
    if spec is None or spec.origin is None:
        return ""
    path = Path(spec.origin).parent / "annotations" / "filename_label.csv"
    return f" (the imagenet-x package ships one: {path})" if path.is_file() else ""


def _clear_links(out: Path, copies: bool = False) -> set[str]:
    """Remove the symlinks (and then empty folders) under ``out/train`` and ``out/val``; return their paths.

    Refuses, before removing anything, when a real file lies there (unless ``copies``: resized copies of an
    earlier run with the same settings): only this builder's own links are replaced.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder (it is created if missing)")
    links, real = [], []
    for split in ("train", "val"):
        top = out / split
        if top.is_symlink() or (top.exists() and not top.is_dir()):
            raise DataError(f"{top} is a link or a file, not a folder; remove it or choose another --out")
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    links.append(path)
                elif name in filenames:
                    real.append(path)
    if real and not copies:
        raise DataError(
            f"{out} holds {len(real)} real files where the symlinks go (e.g. {', '.join(real[:3])}); mixmask only "
            "replaces its own links and never deletes files: move them or choose an empty --out"
        )
    for path in links:
        os.unlink(path)
    for split in ("train", "val"):
        for dirpath, _, _ in os.walk(out / split, topdown=False):
            if dirpath != str(out / split) and not os.listdir(dirpath):
                os.rmdir(dirpath)
    return set(links)
