import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mixmask.data import folders
from mixmask.data.common import Batch, DataError, Unreadable, collate
from mixmask.data.folders import ClassFolderDataset, UnreadableImageError, check_splits


def _save(path, color=(200, 10, 10), size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _jpeg_bytes(size=(64, 64)):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "train"
    _save(root / "n02" / "b.png", (0, 255, 0))
    _save(root / "n02" / "a.JPEG", (0, 255, 0), fmt="JPEG")
    _save(root / "n01" / "sub" / "z.PNG", (255, 0, 0))
    _save(root / "n01" / "c.jpg", (255, 0, 0), fmt="JPEG")
    (root / "n01" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_classes_sorted_samples_sorted_and_items(tree):
    ds = ClassFolderDataset(tree)
    assert ds.classes == ["n01", "n02"] and ds.class_to_idx == {"n01": 0, "n02": 1}
    assert [ds.file_name(i) for i in range(len(ds))] == ["c.jpg", "z.PNG", "a.JPEG", "b.png"]
    assert [ds.label(i) for i in range(len(ds))] == [0, 0, 1, 1]
    assert ds.path(1) == str(tree / "n01" / "sub" / "z.PNG")
    image, label, index = ds[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (12, 10)
    assert (label, index) == (1, 3) and image.getpixel((0, 0)) == (0, 255, 0)


def test_transform_applied_and_symlinked_files_followed(tree, tmp_path):
    linked = tmp_path / "links"
    (linked / "n01").mkdir(parents=True)
    os.symlink(tree / "n01" / "c.jpg", linked / "n01" / "c.jpg")
    os.symlink(tree / "n02", linked / "n02")  # a symlinked class folder
    ds = ClassFolderDataset(linked, transform=lambda img: torch.tensor(img.size))
    assert len(ds) == 3 and ds.classes == ["n01", "n02"]
    assert torch.equal(ds[0][0], torch.tensor([12, 10]))


def test_unreadable_images_are_returned_and_skipped_by_collate(tmp_path):
    root = tmp_path / "d"
    _save(root / "a" / "good.png")
    (root / "a" / "truncated.jpg").write_bytes(_jpeg_bytes()[:2000])
    (root / "b" / "garbage.jpeg").parent.mkdir(parents=True)
    (root / "b" / "garbage.jpeg").write_bytes(b"this is not a jpeg" * 10)
    ds = ClassFolderDataset(root, transform=lambda img: torch.zeros(3, 4, 4))
    assert [ds.file_name(i) for i in range(3)] == ["good.png", "truncated.jpg", "garbage.jpeg"]
    items = [ds[i] for i in range(len(ds))]
    assert not isinstance(items[0], Unreadable)
    assert items[1] == Unreadable(1, ds.path(1), items[1].error) and "truncated" in items[1].error
    assert isinstance(items[2], Unreadable) and items[2].path == ds.path(2)
    assert "UnidentifiedImageError" in items[2].error
    batch = collate(items)
    assert isinstance(batch, Batch) and len(batch) == 1 and batch.images.shape == (1, 3, 4, 4)
    assert batch.indices.tolist() == [0] and batch.labels.tolist() == [0]
    assert [u.index for u in batch.skipped] == [1, 2]


def test_strict_raises_naming_the_file(tmp_path):
    root = tmp_path / "d"
    _save(root / "a" / "good.png")
    (root / "a" / "truncated.jpg").write_bytes(_jpeg_bytes()[:2000])
    ds = ClassFolderDataset(root, strict=True)
    assert ds[0][1:] == (0, 0)
    with pytest.raises(UnreadableImageError, match=r"truncated\.jpg: OSError: image file is truncated") as info:
        ds[1]
    assert isinstance(info.value, DataError)


def test_missing_root_and_root_that_is_a_file(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*<class>/<image>"):
        ClassFolderDataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"is a file, not a folder"):
        ClassFolderDataset(tmp_path / "file")


def test_no_class_folders_mentions_loose_images(tmp_path):
    _save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"no class folders in .*1 images lie directly in it"):
        ClassFolderDataset(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    _save(tmp_path / "cat" / "a.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"1 class folder\(s\) .* hold no images .*: dog;"):
        ClassFolderDataset(tmp_path)


def test_no_images_at_all(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"no images in the 2 class folders .*\.jpg, \.jpeg"):
        ClassFolderDataset(tmp_path)


def test_given_classes_fix_labels_and_must_match_folders(tree, tmp_path):
    val = tmp_path / "val"
    _save(val / "n02" / "v.png")
    _save(val / "n01" / "v.png")
    ds = ClassFolderDataset(val, classes=["n01", "n02"])
    assert [ds.label(i) for i in range(2)] == [0, 1]
    with pytest.raises(DataError, match=r"missing folders: n03; folders not in the class list: n02"):
        ClassFolderDataset(val, classes=["n01", "n03"])


def test_check_splits(tree, tmp_path):
    val = tmp_path / "val"
    _save(val / "n01" / "v.png")
    _save(val / "n03" / "v.png")
    train_ds = ClassFolderDataset(tree)
    check_splits(train_ds, ClassFolderDataset(tree))
    with pytest.raises(DataError, match=r"only in train .*: n02; only in val .*: n03"):
        check_splits(train_ds, ClassFolderDataset(val))


def test_a_large_tree_is_listed_once_and_listed_again_when_a_folder_changes(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXMASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folders, "CACHE_MIN_IMAGES", 1)  # the fixture's tree counts as large
    first = ClassFolderDataset(tree)
    indexes = list((tmp_path / "cache" / "index").glob("*.json"))
    assert len(indexes) == 1

    def no_walk(*args, **kwargs):
        raise AssertionError("the tree was walked although its index is current")

    monkeypatch.setattr(folders.os, "walk", no_walk)
    assert ClassFolderDataset(tree).samples == first.samples  # from the index
    monkeypatch.undo()
    monkeypatch.setenv("MIXMASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folders, "CACHE_MIN_IMAGES", 1)
    added = tree / first.classes[0] / "zz_added.png"
    _save(added)
    os.utime(added.parent, ns=(0, os.stat(added.parent).st_mtime_ns + 1_000_000))  # coarse clocks: a new time
    again = ClassFolderDataset(tree)
    assert str(added) in {path for path, _ in again.samples} and len(again) == len(first) + 1
    indexes[0].write_text("{damaged")  # an unreadable index is ignored and rewritten
    assert ClassFolderDataset(tree).samples == again.samples


def test_small_trees_leave_no_index(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXMASK_CACHE", str(tmp_path / "cache"))
    ClassFolderDataset(tree)
    assert not (tmp_path / "cache").exists()


def _listing_worker(rank: int, world: int, init_file: str, queue, root: str, cache: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        os.environ["MIXMASK_CACHE"] = cache
        folders.CACHE_MIN_IMAGES = 1  # the fixture's tree counts as large
        walks = []
        walk = folders.os.walk
        folders.os.walk = lambda *args, **kwargs: walks.append(args) or walk(*args, **kwargs)
        samples = ClassFolderDataset(root).samples
        queue.put((rank, len(walks), repr(samples)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_under_torchrun_rank_0_lists_the_tree_and_the_other_ranks_read_its_index(tree, tmp_path):
    from tests.gloo import run_two_processes

    results = run_two_processes(_listing_worker, str(tmp_path / "init"), str(tree), str(tmp_path / "cache"))
    (walks_0, samples_0), (walks_1, samples_1) = results[0], results[1]
    assert walks_0 > 0 and walks_1 == 0 and samples_0 == samples_1
