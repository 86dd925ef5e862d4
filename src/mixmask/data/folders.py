"""Images in class folders (``root/<class>/**/<image>``): ImageNet, the ImageNet-100 symlink tree, any such data.

Classes are the sorted folder names, as torchvision's ImageFolder orders them, so a wnid's label on full ImageNet is
its ImageNet-1k index. Problems with the tree itself (missing root, empty class) raise ``DataError`` when the data
set is built, before any training; an image that cannot be decoded is returned as ``Unreadable`` (``collate``
drops it and the training loop counts it) or, with ``strict=True``, raises ``UnreadableImageError``. Large trees
are listed once and indexed (``list_class_images``); under torchrun rank 0 lists, the other ranks read its index.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from mixmask.data.common import DataError, Unreadable

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class UnreadableImageError(DataError):
    """An image file that PIL cannot open or fully decode (raised only by strict data sets)."""


def is_image_file(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether ``name`` ends with one of ``extensions`` (case-insensitive: ImageNet's files end in ``.JPEG``)."""
    return name.lower().endswith(tuple(e.lower() for e in extensions))


def list_images(
    folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, walked: list[str] | None = None
) -> list[str]:
    """Image files under ``folder`` (recursive, following symlinks), sorted by path relative to ``folder``; the
    folders walked are added to ``walked``."""
    suffixes = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if walked is not None:
            walked.append(dirpath)
        found.extend(os.path.join(dirpath, name) for name in filenames if name.lower().endswith(suffixes))
    return sorted(found)


CACHE_MIN_IMAGES = 10_000  # smaller trees list in well under a second: not worth a cache file


def index_cache_dir() -> Path:
    """Where folder indexes are kept: ``$MIXMASK_CACHE``, else ``$XDG_CACHE_HOME/mixmask``, else ``~/.cache/mixmask``."""
    if os.environ.get("MIXMASK_CACHE"):
        return Path(os.environ["MIXMASK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixmask"


def _folder_times(folders: Sequence[str]) -> dict[str, int]:
    return {folder: os.stat(folder).st_mtime_ns for folder in folders}


def list_class_images(root: str, classes: Sequence[str], extensions: Sequence[str]) -> list[list[str]]:
    """Each class folder's image files (``list_images``), read from an index file when no folder under ``root``
    changed since it was written: a folder's modification time changes whenever a file is added to it, removed
    from it or renamed in it, so the index is kept with the time of every folder it walked and used only when all
    still match. Walking ImageNet's 1.28 M files takes minutes on a network file system; checking its 1,000
    folders' times does not. Trees under ``CACHE_MIN_IMAGES`` images are listed without an index. The index is
    written atomically; one that cannot be read or written is ignored."""
    key = hashlib.sha256(json.dumps([os.path.abspath(root), list(classes), list(extensions)]).encode()).hexdigest()
    index = index_cache_dir() / "index" / f"{key[:32]}.json"
    try:
        cached = json.loads(index.read_text())
        if _folder_times(cached["folders"]) == cached["folders"]:
            return cached["images"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no index yet, a changed tree or a damaged file: list the tree
    walked: list[str] = []
    images = [list_images(os.path.join(root, name), extensions, walked) for name in classes]
    if sum(map(len, images)) >= CACHE_MIN_IMAGES:
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=index.parent, prefix=f".{index.name}.")
            with os.fdopen(fd, "w") as handle:
                json.dump({"root": os.path.abspath(root), "folders": _folder_times(walked), "images": images}, handle)
            os.replace(tmp, index)
        except OSError:
            pass  # a read-only home: the next run lists the tree again
    return images


@contextmanager
def rank_zero_first():
    """Under torchrun, rank 0 runs the block first (listing the tree and writing its index), then the others (which
    read the index); rank 0 releases them even when it fails, so they fail with the same error instead of waiting."""
    import torch.distributed as dist

    multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if multi and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if multi and dist.get_rank() == 0:
            dist.barrier()


def _class_folders(root: str) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``root``, symlinked folders included."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _listing(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` with at most ``limit`` names, then ``... (N in all)``."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


class ClassFolderDataset(Dataset):
    """Images under ``root/<class>/``, labelled by the position of their class in ``classes``.

    ``classes`` defaults to the sorted class folder names; pass the train set's ``classes`` to a val set so both
    share one labelling (a folder missing from, or extra to, that list is a ``DataError``). Items are
    ``(image, label, index)`` where ``image`` is ``transform(pil_rgb_image)`` (the PIL image without a transform).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        strict: bool = False,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = os.fspath(root)
        self.transform = transform
        self.strict = strict
        wanted = ", ".join(extensions)
        if not os.path.exists(self.root):
            raise DataError(
                f"image folder {self.root} does not exist; expected class folders {self.root}/<class>/<image> "
                "(check data.root and the train/val folder names)"
            )
        if not os.path.isdir(self.root):
            raise DataError(
                f"{self.root} is a file, not a folder; expected a folder of class folders {self.root}/<class>/<image>"
            )
        found = _class_folders(self.root)
        if not found:
            loose = [n for n in os.listdir(self.root) if is_image_file(n, extensions)]
            hint = f" ({len(loose)} images lie directly in it: move them into one folder per class)" if loose else ""
            raise DataError(
                f"no class folders in {self.root}{hint}; expected {self.root}/<class>/<image> with images ending "
                f"in {wanted}"
            )
        if classes is None:
            self.classes = found
        else:
            self.classes = list(classes)
            missing = sorted(set(self.classes) - set(found))
            extra = sorted(set(found) - set(self.classes))
            if missing or extra:
                parts = [f"missing folders: {_listing(missing)}"] if missing else []
                parts += [f"folders not in the class list: {_listing(extra)}"] if extra else []
                raise DataError(
                    f"the class folders in {self.root} do not match the {len(self.classes)} given classes "
                    f"({'; '.join(parts)}); train and val need the same class folders"
                )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        with rank_zero_first():
            listed = list_class_images(self.root, self.classes, extensions)
        for label, (name, paths) in enumerate(zip(self.classes, listed, strict=True)):
            if not paths:
                empty.append(name)
            self.samples.extend((path, label) for path in paths)
        if not self.samples:
            raise DataError(
                f"no images in the {len(self.classes)} class folders of {self.root}; looked for files ending in "
                f"{wanted} (any case) under {self.root}/<class>/"
            )
        if empty:
            raise DataError(
                f"{len(empty)} class folder(s) in {self.root} hold no images (files ending in {wanted}): "
                f"{_listing(empty)}; remove those folders or add their images"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> int:
        """Class index of item ``index``."""
        return self.samples[index][1]

    def path(self, index: int) -> str:
        """Full path of item ``index``."""
        return self.samples[index][0]

    def file_name(self, index: int) -> str:
        """Bare file name of item ``index`` (``ILSVRC2012_val_00000001.JPEG``): ImageNet-X joins on it."""
        return os.path.basename(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, int, int] | Unreadable:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")  # decodes the whole file, so truncated images fail here, not later
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            if self.strict:
                raise UnreadableImageError(
                    f"cannot read image {path}: {type(error).__name__}: {error} (data.strict=false skips and counts "
                    "unreadable images instead)"
                ) from error
            return Unreadable(index, path, f"{type(error).__name__}: {error}")
        return (self.transform(image) if self.transform is not None else image), label, index


def check_splits(train: ClassFolderDataset, val: ClassFolderDataset) -> None:
    """Raise ``DataError`` unless ``train`` and ``val`` have the same classes in the same order (same labels)."""
    if list(train.classes) == list(val.classes):
        return
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    parts = [f"only in train ({train.root}): {_listing(only_train)}"] if only_train else []
    parts += [f"only in val ({val.root}): {_listing(only_val)}"] if only_val else []
    if not parts:
        parts = ["same names in a different order"]
    raise DataError(
        f"train and val have different classes ({len(train.classes)} vs {len(val.classes)}; {'; '.join(parts)}); "
        "both need one folder per class with the same names"
    )
