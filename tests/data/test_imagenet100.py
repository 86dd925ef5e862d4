import os
import re

import pytest

from mixmask.data.common import DataError
from mixmask.data.folders import ClassFolderDataset
from mixmask.data.imagenet100 import build_imagenet100, format_summary, load_class_list, read_val_labels

CMC = load_class_list("cmc")
KAGGLE = load_class_list("kaggle")
DISTRACTORS = ["n09999991", "n09999992", "n09999993"]
ALL = sorted(set(CMC) | set(KAGGLE) | set(DISTRACTORS))


def make_imagenet(root, wnids=ALL, flat_val=False, train_only=()):
    """A fake ImageNet-1k: 2 empty train JPEGs per class and 1 val image; returns {val file name: wnid}."""
    val_labels = {}
    for k, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        for j in range(2):
            (root / "train" / wnid / f"{wnid}_{j}.JPEG").touch()
        if wnid in train_only:
            continue
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        folder = root / "val" if flat_val else root / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
        val_labels[name] = wnid
    (root / "val").mkdir(exist_ok=True)
    return val_labels


def links_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def test_shipped_class_lists():
    assert len(CMC) == len(set(CMC)) == 100 and len(KAGGLE) == len(set(KAGGLE)) == 100
    assert all(re.fullmatch(r"n\d{8}", w) for w in CMC + KAGGLE)
    assert CMC[:2] == ["n02869837", "n01749939"] and KAGGLE[0] == "n01440764"
    assert len(set(CMC) & set(KAGGLE)) == 8


@pytest.mark.parametrize("classes, wnids", [("cmc", CMC), ("kaggle", KAGGLE)])
def test_build_from_class_folders(tmp_path, classes, wnids):
    root, out = tmp_path / "imagenet", tmp_path / "in100"
    val_labels = make_imagenet(root)
    (root / "val" / "stray.JPEG").touch()  # class folders win over a stray file when no label file is given
    summary = build_imagenet100(root, out, classes=classes, progress=False)
    assert summary["classes"] == sorted(wnids) and summary["val_layout"] == "class folders"
    assert summary["train_images"] == 200 and summary["val_images"] == 100
    assert set(summary["train_counts"].values()) == {2} and set(summary["val_counts"].values()) == {1}
    assert (out / "classes.txt").read_text().split() == sorted(wnids)
    assert sorted(os.listdir(out / "train")) == sorted(os.listdir(out / "val")) == sorted(wnids)
    for rel in links_under(out / "train"):
        link = out / "train" / rel
        assert link.is_symlink() and os.path.isabs(os.readlink(link))
        assert os.path.realpath(link) == os.path.realpath(root / "train" / rel)
    for rel in links_under(out / "val"):
        wnid, name = rel.split(os.sep)
        assert val_labels[name] == wnid
        assert os.path.realpath(out / "val" / rel) == os.path.realpath(root / "val" / wnid / name)
    train = ClassFolderDataset(out / "train")
    assert train.classes == sorted(wnids) and len(train) == 200
    text = format_summary(summary)
    assert "100 classes, 200 train + 100 val images" in text
    assert f"{sorted(wnids)[0]}    2/1" in text and "train images per class 2..2" in text


def _write_labels(path, val_labels, style):
    rows = sorted(val_labels.items())
    if style == "kaggle":
        lines = ["ImageId,PredictionString"]
        lines += [f"{name[:-5]},{wnid} 10 20 30 40 {wnid} 1 2 3 4" for name, wnid in rows]
    elif style == "space":
        lines = [f"{name} {wnid}" for name, wnid in rows]
    elif style == "tab-header":
        lines = ["file_name\tlabel"] + [f"val/{name}\t{wnid}" for name, wnid in rows]
    elif style == "comma":
        lines = [f"{name},{wnid}" for name, wnid in rows]
    else:  # index: position of the wnid in the sorted 1k list, as imagenet-x's filename_label.csv
        lines = ["file_name,label"] + [f"{name},{ALL_1K.index(wnid)}" for name, wnid in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


ALL_1K = sorted(ALL + [f"n0888{i:04d}" for i in range(1000 - len(ALL))])


@pytest.mark.parametrize("style", ["kaggle", "space", "tab-header", "comma", "index"])
def test_build_from_flat_val_with_each_label_format(tmp_path, style):
    root = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    val_labels = make_imagenet(root, ALL_1K if style == "index" else ALL, flat_val=True)
    (root / "val" / "ILSVRC2012_val_09999999.JPEG").touch()  # an image the label file does not know
    if style == "kaggle":  # found by itself, where Kaggle's download keeps it
        _write_labels(tmp_path / "kaggle" / "LOC_val_solution.csv", val_labels, style)
        given = None
    else:
        given = tmp_path / "labels.txt"
        _write_labels(given, val_labels, style)
    summary = build_imagenet100(root, tmp_path / "out", classes="kaggle", val_labels=given, progress=False)
    assert summary["val_layout"] == "flat" and summary["val_images"] == 100 and summary["unlabeled_val_images"] == 1
    assert summary["val_labels"].endswith("LOC_val_solution.csv" if style == "kaggle" else "labels.txt")
    for rel in links_under(tmp_path / "out" / "val"):
        wnid, name = rel.split(os.sep)
        assert val_labels[name] == wnid
        assert os.path.realpath(tmp_path / "out" / "val" / rel) == os.path.realpath(root / "val" / name)
    assert "1 flat val images have no label" in format_summary(summary)


def test_index_labels_need_the_1000_train_folders(tmp_path):
    root = tmp_path / "imagenet"
    val_labels = make_imagenet(root, flat_val=True)
    labels = tmp_path / "filename_label.csv"
    _write_labels(labels, val_labels, "index")
    with pytest.raises(DataError, match=r"class indices.*1000 ImageNet-1k wnids.*which has 195 folders"):
        build_imagenet100(root, tmp_path / "out", val_labels=labels, progress=False)
    assert not (tmp_path / "out").exists()


def test_flat_val_without_label_file_says_where_it_looked(tmp_path):
    root = tmp_path / "imagenet"
    make_imagenet(root, flat_val=True)
    with pytest.raises(DataError, match=r"flat val folder.*LOC_val_solution\.csv.*--val-labels"):
        build_imagenet100(root, tmp_path / "out", progress=False)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("other_image_1 n01440764\n")
    with pytest.raises(DataError, match=r"none of the 195 images .* has a label in .*wrong\.txt"):
        build_imagenet100(root, tmp_path / "out", val_labels=wrong, progress=False)
    wrong.write_text("a n01440764\nb 12\n")
    with pytest.raises(DataError, match=r"wrong\.txt, line 2: cannot read 'b 12'"):
        read_val_labels(wrong)


def test_missing_classes_fail_before_writing(tmp_path):
    root, out = tmp_path / "imagenet", tmp_path / "out"
    make_imagenet(root, [w for w in ALL if w not in (CMC[3], CMC[7])], train_only=[CMC[5]])
    with pytest.raises(DataError) as info:
        build_imagenet100(root, out, progress=False)
    message = str(info.value)
    assert f"2 class folders are missing from {root / 'train'}" in message
    assert CMC[3] in message and CMC[7] in message and "nothing was written" in message
    assert f"3 class folders are missing from {root / 'val'}" in message and CMC[5] in message
    assert not out.exists()


def test_rerun_is_idempotent_and_removes_stale_links(tmp_path):
    root, out = tmp_path / "imagenet", tmp_path / "out"
    make_imagenet(root)
    first = build_imagenet100(root, out, progress=False)
    links = links_under(out)
    again = build_imagenet100(root, out, progress=False)
    assert links_under(out) == links and again == first and again["removed_stale_links"] == 0
    switched = build_imagenet100(root, out, classes="kaggle", progress=False)
    assert sorted(os.listdir(out / "train")) == sorted(KAGGLE)
    assert switched["removed_stale_links"] == 92 * 3  # the CMC-only classes: 2 train + 1 val links each
    (out / "train" / KAGGLE[0] / "mine.JPEG").write_text("a real file")
    with pytest.raises(DataError, match=r"holds 1 real files .*mine\.JPEG.*never deletes files"):
        build_imagenet100(root, out, progress=False)
    assert (out / "train" / KAGGLE[0] / "mine.JPEG").read_text() == "a real file"
    assert len(links_under(out / "train")) == 201  # nothing was removed


def test_custom_class_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my subset\nn01440764\n\nn01443537  # goldfish\n")
    with pytest.warns(UserWarning, match="lists 2 classes, not 100"):
        assert load_class_list(path) == ["n01440764", "n01443537"]
    root = tmp_path / "imagenet"
    make_imagenet(root)
    with pytest.warns(UserWarning):
        summary = build_imagenet100(root, tmp_path / "out", classes=path, progress=False)
    assert summary["classes"] == ["n01440764", "n01443537"] and summary["train_images"] == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("n01440764\nn0144376\n", r"line 2: 'n0144376' is not a WordNet id"),
        ("n01440764\nn01443537\nn01440764\n", r"line 3: n01440764 repeats line 1"),
        ("n01440764\n", r"lists 1 class\(es\); a class list needs at least 2"),
        ("n01440764 tench\n", r"line 1: 'n01440764 tench' is not a WordNet id"),
    ],
)
def test_custom_class_file_errors(tmp_path, text, message):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_class_list(path)


def test_unknown_class_list_name():
    with pytest.raises(DataError, match=r"'cmc100' is neither a shipped list \(cmc, kaggle\) nor an existing file"):
        load_class_list("cmc100")


def test_out_inside_the_source_is_refused(tmp_path):
    root = tmp_path / "imagenet"
    make_imagenet(root)
    with pytest.raises(DataError, match="lies in the ImageNet source"):
        build_imagenet100(root, root / "train" / "in100", progress=False)
