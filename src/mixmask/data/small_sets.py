"""Fashion-MNIST and CIFAR-10/100 read from the files already on disk; mixmask never downloads anything.

Layouts read: torchvision's (``root/FashionMNIST/raw/*-ubyte``, ``root/cifar-10-batches-py``,
``root/cifar-100-python``), the data folder itself as ``root``, and Debian's ``dataset-fashion-mnist`` package
(gzipped IDX files in ``/usr/share/datasets/fashion-mnist``, the default when no root is given). The files are
parsed here rather than through ``torchvision.datasets``: its CIFAR classes md5-check every batch file and its
FashionMNIST reads only uncompressed IDX files, so it cannot open the Debian layout. Items are
``(image, label, index)`` with ``image`` a 3-channel RGB PIL image (or ``transform`` of it); resizing is the
transform's job.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mixmask.data.common import DataError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class ArrayImageSet(Dataset):
    """Images held as one uint8 array, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, with integer labels;
    ``source`` says where they were read from (for messages)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        classes: Sequence[str],
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        source: str = "",
    ) -> None:
        self.labels = [int(x) for x in labels]
        self.classes = list(classes)
        if len(images) != len(self.labels):
            raise DataError(f"{source}: {len(images)} images but {len(self.labels)} labels")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.classes):
            raise DataError(
                f"{source}: labels {min(self.labels)}..{max(self.labels)} do not fit {len(self.classes)} classes"
            )
        self.source = source
        self.images = images
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> int:
        """Class index of item ``index``."""
        return self.labels[index]

    def file_name(self, index: int) -> str:
        """A stable name for item ``index``, ``<split>_<index:05d>.png`` (these sets have no file per image)."""
        return f"{self.split}_{index:05d}.png"

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(image) if self.transform is not None else image), self.labels[index], index


def _find(names: Sequence[str], folders: Sequence[Path], what: str) -> list[Path]:
    """The first folder holding all ``names`` (each possibly with ``.gz``), as paths; else a ``DataError``."""
    for folder in folders:
        found = []
        for name in names:
            candidates = [folder / name, folder / f"{name}.gz"]
            found += [p for p in candidates if p.is_file()][:1]
        if len(found) == len(names):
            return found
    raise DataError(
        f"{what} not found: looked for {', '.join(names)} (plain or .gz) in {', '.join(map(str, folders))}. "
        "mixmask never downloads data; put the files there (torchvision's layout or, for Fashion-MNIST, "
        "`apt-get install dataset-fashion-mnist`) and point data.root at it"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format, plain or gzipped) as a uint8 array of the shape in its header."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: its header says {shape}, it holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def fashion_mnist(
    root: str | os.PathLike | None = None, train: bool = True, transform: Callable | None = None
) -> ArrayImageSet:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images, 10 classes) from torchvision's
    ``root/FashionMNIST/raw``, from ``root`` itself, or (``root=None``) from the Debian package's folder."""
    folders = [Path(root) / "FashionMNIST" / "raw", Path(root)] if root else [Path(DEBIAN_FASHION_MNIST)]
    prefix = "train" if train else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    image_file, label_file = _find(names, folders, "Fashion-MNIST")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{image_file} ({images.shape}) and {label_file} ({labels.shape}) do not match")
    split = "train" if train else "test"
    return ArrayImageSet(images, labels, FASHION_MNIST_CLASSES, split, transform, str(image_file.parent))


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches hold only dicts, lists, strings and numpy arrays; anything else in the pickle (which could run
    code) is refused."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{module}.{name} in a CIFAR file: not a plain CIFAR batch, refusing to load it")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """One CIFAR python-version batch: a pickled dict, read without running any code it may hold."""
    with open(path, "rb") as file:
        return _CifarUnpickler(file, encoding="latin1").load()


def _cifar(
    root: str | os.PathLike,
    folder: str,
    files: Sequence[str],
    keys: tuple[str, str, str],
    train: bool,
    transform: Callable | None,
) -> ArrayImageSet:
    """A CIFAR python-version folder under or at ``root``: batch ``files`` and the meta file, read with
    ``keys`` = (meta file, label key, class-name key); images become (N, 32, 32, 3)."""
    meta, label_key, names_key = keys
    paths = _find([*files, meta], [Path(root) / folder, Path(root)], f"CIFAR ({folder})")
    batches = [_unpickle(p) for p in paths[:-1]]
    images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = [label for b in batches for label in b[label_key]]
    classes = _unpickle(paths[-1])[names_key]
    split = "train" if train else "test"
    return ArrayImageSet(np.ascontiguousarray(images), labels, classes, split, transform, str(paths[0].parent))


def cifar10(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ArrayImageSet:
    """CIFAR-10 (50,000 train / 10,000 test 32x32 images) from ``root/cifar-10-batches-py`` or that folder."""
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _cifar(root, "cifar-10-batches-py", files, ("batches.meta", "labels", "label_names"), train, transform)


def cifar100(root: str | os.PathLike, train: bool = True, transform: Callable | None = None) -> ArrayImageSet:
    """CIFAR-100 with its 100 fine labels, from ``root/cifar-100-python`` or that folder."""
    files = ["train"] if train else ["test"]
    keys = ("meta", "fine_labels", "fine_label_names")
    return _cifar(root, "cifar-100-python", files, keys, train, transform)


SMALL_SETS: dict[str, Callable[..., ArrayImageSet]] = {
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
}


def open_small_set(
    name: str, root: str | os.PathLike | None, train: bool = True, transform: Callable | None = None
) -> ArrayImageSet:
    """The train (``train=True``) or test split of ``fashion_mnist``, ``cifar10`` or ``cifar100`` under ``root``.

    An empty ``root`` means the Debian package's folder for Fashion-MNIST and is an error for CIFAR.
    """
    if name not in SMALL_SETS:
        raise DataError(f"unknown small data set {name!r}; expected one of {', '.join(SMALL_SETS)}")
    if not root and name != "fashion_mnist":
        raise DataError(f"{name} needs a root folder (the one holding its python-version files)")
    return SMALL_SETS[name](root or None, train=train, transform=transform)
