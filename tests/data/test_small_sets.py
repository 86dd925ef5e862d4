import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mixmask.data import small_sets
from mixmask.data.common import DataError, collate
from mixmask.data.small_sets import FASHION_MNIST_CLASSES, open_small_set, read_idx


def idx_bytes(array):
    """An IDX file of unsigned bytes, as the MNIST / Fashion-MNIST files are."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def fake_fashion(folder, prefix, n=5, gz=False):
    images = np.arange(n * 6 * 4, dtype=np.uint8).reshape(n, 6, 4)
    labels = np.arange(n) % 10
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as file:
                file.write(idx_bytes(array))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return images, labels


def test_fashion_mnist_torchvision_layout(tmp_path):
    images, labels = fake_fashion(tmp_path / "FashionMNIST" / "raw", "train")
    fake_fashion(tmp_path / "FashionMNIST" / "raw", "t10k", n=3)
    ds = open_small_set("fashion_mnist", tmp_path, train=True)
    assert len(ds) == 5 and ds.classes == list(FASHION_MNIST_CLASSES) and len(ds.classes) == 10
    image, label, index = ds[2]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (4, 6)
    assert (label, index) == (2, 2) and ds.label(2) == 2 and ds.file_name(2) == "train_00002.png"
    assert np.array_equal(np.asarray(image), np.repeat(images[2][..., None], 3, axis=2))
    test = open_small_set("fashion_mnist", tmp_path, train=False)
    assert len(test) == 3 and test.file_name(1) == "test_00001.png"


def test_fashion_mnist_debian_layout_is_the_default(tmp_path, monkeypatch):
    images, labels = fake_fashion(tmp_path / "debian", "t10k", n=4, gz=True)
    monkeypatch.setattr(small_sets, "DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    for root in (None, "", tmp_path / "debian"):
        ds = open_small_set("fashion_mnist", root, train=False)
        assert [ds.label(i) for i in range(len(ds))] == labels.tolist()
        assert np.array_equal(np.asarray(ds[3][0])[..., 1], images[3])


def test_batches_of_transformed_items(tmp_path):
    fake_fashion(tmp_path, "train", n=5)
    ds = open_small_set("fashion_mnist", tmp_path, transform=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1))
    batch = collate([ds[i] for i in range(5)])
    assert batch.images.shape == (5, 3, 6, 4) and batch.images.dtype == torch.uint8
    assert batch.labels.tolist() == [0, 1, 2, 3, 4] and batch.indices.tolist() == [0, 1, 2, 3, 4]


def test_missing_files_say_where_and_never_download(tmp_path):
    fake_fashion(tmp_path, "train")
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(DataError) as info:
        open_small_set("fashion_mnist", tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte (plain or .gz)" in message
    assert f"{tmp_path / 'FashionMNIST' / 'raw'}, {tmp_path}." in message and "never downloads" in message
    with pytest.raises(DataError, match=r"data_batch_1, .*batches\.meta .* in .*cifar-10-batches-py.*never downloads"):
        open_small_set("cifar10", tmp_path)
    with pytest.raises(DataError, match="cifar100 needs a root folder"):
        open_small_set("cifar100", "")
    with pytest.raises(DataError, match="unknown small data set 'mnist'"):
        open_small_set("mnist", tmp_path)


def test_corrupt_idx_files(tmp_path):
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((2, 3, 3)))[:-1])
    with pytest.raises(DataError, match=r"truncated or corrupt: its header says \(2, 3, 3\), it holds 17 bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "png")


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(obj, file)


def _cifar_rows(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10_torchvision_layout_and_pixel_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = [_cifar_rows(2, seed) for seed in range(5)]
    for i, data in enumerate(batches, start=1):
        _pickle(folder / f"data_batch_{i}", {"data": data, "labels": [i, i + 1], "filenames": ["a", "b"]})
    _pickle(folder / "test_batch", {"data": _cifar_rows(3, 9), "labels": [9, 0, 1]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names})
    ds = open_small_set("cifar10", tmp_path)
    assert len(ds) == 10 and ds.classes == names
    assert [ds.label(i) for i in range(10)] == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    image, label, index = ds[5]  # second image of data_batch_3
    row = batches[2][1]
    assert image.size == (32, 32) and image.mode == "RGB" and (label, index) == (4, 5)
    assert image.getpixel((7, 3)) == (row[3 * 32 + 7], row[1024 + 3 * 32 + 7], row[2048 + 3 * 32 + 7])
    test = open_small_set("cifar10", folder, train=False)  # the data folder itself as root
    assert len(test) == 3 and test.label(0) == 9 and test.file_name(2) == "test_00002.png"


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _pickle(folder / "train", {"data": _cifar_rows(4, 0), "fine_labels": [0, 99, 5, 7], "coarse_labels": [0] * 4})
    _pickle(folder / "test", {"data": _cifar_rows(1, 1), "fine_labels": [42], "coarse_labels": [3]})
    _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []})
    ds = open_small_set("cifar100", tmp_path)
    assert len(ds) == 4 and len(ds.classes) == 100 and ds.label(1) == 99 and ds.classes[99] == "c99"
    assert open_small_set("cifar100", tmp_path, train=False).label(0) == 42
    _pickle(folder / "test", {"data": _cifar_rows(1, 1), "fine_labels": [100]})
    with pytest.raises(DataError, match=r"cifar-100-python: labels 100\.\.100 do not fit 100 classes"):
        open_small_set("cifar100", tmp_path, train=False)


@pytest.mark.skipif(
    not os.path.exists(f"{small_sets.DEBIAN_FASHION_MNIST}/t10k-labels-idx1-ubyte.gz"),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist_test_split():
    ds = open_small_set("fashion_mnist", None, train=False)
    assert len(ds) == 10_000 and np.bincount(ds.labels).tolist() == [1000] * 10
    image, label, _ = ds[0]
    assert image.size == (28, 28) and ds.classes[label] == "Ankle boot"


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    import pickle

    from mixmask.data.common import DataError
    from mixmask.data.small_sets import _unpickle

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(DataError, match="builtins.print"):
        _unpickle(path)
