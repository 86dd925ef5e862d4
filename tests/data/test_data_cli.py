"""The data commands and the handling of unreadable images, as a user meets them."""

import json

import numpy as np
from PIL import Image

from mixmask.cli import main
from mixmask.config import load_config
from mixmask.tasks.pretrain import pretrain


def class_folders(root, per_class=40, size=32, broken=("train/b/broken.png",)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 8):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    for path in broken:
        (root / path).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def test_data_check_counts_images_and_names_unreadable_files(tmp_path, capsys):
    root = class_folders(tmp_path / "data")
    report_path = tmp_path / "report.json"
    code = main(
        [
            "data",
            "check",
            "data.dataset=folder",
            f"data.root={root}",
            "data.image_size=32",
            "--quiet",
            "--out",
            str(report_path),
        ]
    )
    assert code == 1  # an unreadable image is worth a non-zero exit
    out = capsys.readouterr().out
    assert "train: 80 images in 2 classes, 1 unreadable" in out and "broken.png" in out
    report = json.loads(report_path.read_text())
    assert report["splits"]["val"] == {"images": 16, "per_class": {"a": 8, "b": 8}, "unreadable": []}


def test_pretraining_skips_counts_and_reports_unreadable_images(tmp_path, capsys):
    root = class_folders(tmp_path / "data")
    overrides = [
        "data.dataset=folder",
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "train.batch_size=16",
        "train.epochs=2",
        "masking.strategies=[{patch_size: 8}]",
    ]
    run = pretrain(load_config(None, overrides), out=tmp_path / "run")
    unreadable = json.loads((run / "results.json").read_text())["unreadable_images"]
    assert len(unreadable) == 2  # the broken file, once per epoch
    assert all(u["path"].endswith("broken.png") for u in unreadable)
    assert "unreadable image(s) skipped" in capsys.readouterr().err


def test_strict_data_stops_with_the_file_name(tmp_path, capsys):
    root = class_folders(tmp_path / "data")
    code = main(
        [
            "pretrain",
            "data.dataset=folder",
            f"data.root={root}",
            "data.image_size=32",
            "data.strict=true",
            "train.batch_size=16",
            "data.num_workers=0",
            "masking.strategies=[{patch_size: 8}]",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "broken.png" in capsys.readouterr().err


def test_missing_root_and_class_mismatch_fail_before_training(tmp_path, capsys):
    assert (
        main(["pretrain", "data.dataset=folder", f"data.root={tmp_path / 'nowhere'}", "--out", str(tmp_path / "r1")])
        == 2
    )
    assert "nowhere" in capsys.readouterr().err
    root = class_folders(tmp_path / "data", broken=())
    (root / "val" / "c").mkdir()
    Image.new("RGB", (32, 32)).save(root / "val" / "c" / "x.png")
    assert main(["data", "check", "data.dataset=folder", f"data.root={root}", "--quiet"]) == 2
    assert "c" in capsys.readouterr().err


def test_shapesx_export_command(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "shapesx",
                "--out",
                str(tmp_path),
                "--size",
                "32",
                "--train",
                "20",
                "--test",
                "34",
                "--cue-conflict",
                "10",
                "--quiet",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "train").rglob("*.png"))) == 20
    rows = [json.loads(line) for line in (tmp_path / "test_annotations.jsonl").read_text().splitlines()]
    assert len(rows) == 34 and {r["top"] for r in rows} >= {"pose", "texture", "none"}
    assert "ShapesX written to" in capsys.readouterr().out
