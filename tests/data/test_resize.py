"""Resized copies (``mixmask data resize``, ``mixmask data imagenet100 --resize``): sizes, formats, names kept,
unreadable files counted and copied, resume, settings recorded."""

import numpy as np
import pytest
from PIL import Image

from mixmask.cli import main
from mixmask.data.common import DataError
from mixmask.data.folders import ClassFolderDataset
from mixmask.data.imagenet100 import build_imagenet100, format_summary
from mixmask.data.resize import resize_tree
from tests.data.test_imagenet100 import CMC, make_imagenet


def smooth_image(width, height, seed=0):
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    for folder in ("train/a", "train/b", "val/a"):
        (src / folder).mkdir(parents=True)
    smooth_image(600, 400).save(src / "train/a/wide.JPEG", quality=95)
    smooth_image(300, 500, seed=1).save(src / "train/b/tall.png")
    smooth_image(100, 80, seed=2).save(src / "val/a/small.jpg", quality=95)
    (src / "val/a/broken.JPEG").write_bytes(b"not an image")
    (src / "train/a/notes.txt").write_text("not an image file: not copied")
    return src


def test_resized_copies_keep_names_shrink_the_shorter_side_and_copy_the_rest(tree, tmp_path):
    out = tmp_path / "out"
    summary = resize_tree(tree, out, 128, quality=90, workers=1, progress=False)
    assert (summary["images"], summary["written"], summary["kept"]) == (4, 4, 0)
    assert [u["path"] for u in summary["unreadable"]] == [str(tree / "val/a/broken.JPEG")]
    with Image.open(out / "train/a/wide.JPEG") as wide, Image.open(out / "train/b/tall.png") as tall:
        assert (wide.size, wide.format, tall.size, tall.format) == ((192, 128), "JPEG", (128, 213), "PNG")
        reference = np.asarray(Image.open(tree / "train/a/wide.JPEG").resize((192, 128), Image.Resampling.BICUBIC))
        assert np.abs(np.asarray(wide, dtype=float) - reference).mean() < 2.0  # JPEG 90 on smooth content
    for name in ("val/a/small.jpg", "val/a/broken.JPEG"):  # never enlarged; unreadable copied as it is
        assert (out / name).read_bytes() == (tree / name).read_bytes()
    assert not (out / "train/a/notes.txt").exists() and not list(out.rglob("*.part"))
    assert len(ClassFolderDataset(str(out / "train"))) == 2

    (out / "train/a/wide.JPEG").unlink()  # as if stopped before this file: the rerun writes it and keeps the rest
    again = resize_tree(tree, out, 128, quality=90, workers=1, progress=False)
    assert (again["written"], again["kept"]) == (1, 3)
    with pytest.raises(DataError, match="resized with .*'shorter_side': 128.*choose another --out"):
        resize_tree(tree, out, 160, quality=90, workers=1, progress=False)
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match="--quality 1..100, got 128, 0"):  # refused before the folder is marked
        resize_tree(tree, fresh, 128, quality=0, workers=1, progress=False)
    assert resize_tree(tree, fresh, 128, quality=90, workers=1, progress=False)["written"] == summary["written"]
    with pytest.raises(DataError, match="lies in --src"):
        resize_tree(tree, tree / "inside", 128)


def test_cli_resize_prints_counts_and_unreadable_files(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "resize", "--src", str(tree), "--out", str(out), "--resize", "64", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "4 images of" in printed and "4 written, 0 kept" in printed and "broken.JPEG" in printed
    assert main(["data", "resize", "--src", str(tree), "--out", str(out), "--resize", "32", "--quiet"]) == 2
    assert "resized with" in capsys.readouterr().err


def test_imagenet100_as_resized_copies(tmp_path):
    root, out = tmp_path / "imagenet", tmp_path / "in100"
    make_imagenet(root, CMC)  # empty files: unreadable, copied as they are
    wnid = sorted(CMC)[0]
    smooth_image(500, 375).save(root / "train" / wnid / f"{wnid}_0.JPEG", quality=95)
    summary = build_imagenet100(root, out, progress=False, resize=160, workers=1)
    resized = summary["resized"]
    assert (resized["written"], resized["kept"], len(resized["unreadable"])) == (300, 0, 299)
    with Image.open(out / "train" / wnid / f"{wnid}_0.JPEG") as image:
        assert image.size == (213, 160)
    assert not any(path.is_symlink() for path in out.rglob("*.JPEG"))
    assert "300 written, 0 kept from an earlier run, 299 unreadable" in format_summary(summary)
    assert build_imagenet100(root, out, progress=False, resize=160, workers=1)["resized"]["kept"] == 300
    with pytest.raises(DataError, match="real files where the symlinks go"):
        build_imagenet100(root, out, progress=False)  # links never replace copies


def test_resize_settings_without_resize_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--quality and --workers set how --resize copies are written"):
        main(["data", "imagenet100", "--imagenet-root", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "2"])
