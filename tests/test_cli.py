import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mixmask import __version__
from mixmask.cli import main
from mixmask.config import load_config, save_config
from mixmask.engine.checkpoint import write_checkpoint
from mixmask.engine.run_dir import new_run_dir
from mixmask.models.classifier import Classifier
from mixmask.store import ResultsStore


def test_version_and_help_list_only_working_commands(capsys):
    result = subprocess.run([sys.executable, "-m", "mixmask.cli", "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == f"mixmask {__version__}"
    assert main([]) == 0
    text = capsys.readouterr().out
    commands = ("config", "data", "pretrain", "finetune", "evaluate", "sweep", "report", "demo", "export")
    for command in commands:
        assert f"    {command} " in text
    for command in commands:  # every listed command imports and parses
        result = subprocess.run(
            [sys.executable, "-m", "mixmask.cli", command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_config_prints_resolved_config(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    assert main(["config", str(path), "optim.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["optim"]["lr"] == 0.01


def test_config_error_is_one_clear_line(capsys):
    assert main(["config", "masking.strategies.0.ratio=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixmask: error: config field `masking.strategies[0].ratio`: got 2")
    assert "Traceback" not in err


def one_error_line(capsys) -> str:
    """The single `mixmask: error:` line a failed command printed (and no traceback)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixmask: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0].removeprefix("mixmask: error: ")


TINY = ["data.image_size=32", "data.shapesx.train=64", "data.shapesx.val=16", "data.num_workers=0"]


def fake_run(folder: Path, task: str) -> Path:
    """A run folder as a task leaves it (run.json, config.yaml), with one checkpoint of a tiny classifier."""
    cfg = load_config(None, TINY)
    run = new_run_dir(cfg, task, folder)
    save_config(cfg, run / "config.yaml")
    write_checkpoint(run, Classifier(cfg.model.backbone, 10, image_size=32), None, {"step": 1})
    return run


def test_broken_config_and_sweep_files_are_one_line(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    for command in ("config", "sweep"):
        what = "config file" if command == "config" else "sweep file"
        assert main([command, str(tmp_path / "broken.yaml")]) == 2
        assert one_error_line(capsys) == (
            f"{what} {tmp_path / 'broken.yaml'} is not valid YAML: line 2, column 1: expected ',' or ']', but got "
            "'<stream end>'"
        )
        assert main([command, str(tmp_path)]) == 2
        assert one_error_line(capsys) == f"{what} {tmp_path} is a folder; expected a YAML file"
        assert main([command, str(tmp_path / "binary.yaml")]) == 2
        assert "not a text file" in one_error_line(capsys)
        assert main([command, str(tmp_path / "missing.yaml")]) == 2
        assert one_error_line(capsys) == f"{what} not found: {tmp_path / 'missing.yaml'}"


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["pretrain", *TINY, "--out", str(tmp_path / "file" / "run")]) == 2
    assert one_error_line(capsys) == (
        f"cannot create the run folder {tmp_path / 'file' / 'run'}: Not a directory; pick another --out or "
        "train.out_dir"
    )
    assert main(["data", "shapesx", "--out", str(tmp_path / "file" / "x"), "--train", "2", "--test", "2"]) == 2
    assert one_error_line(capsys).startswith(f"Not a directory: {tmp_path / 'file' / 'x'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "locked").mkdir(mode=0o500)
    assert main(["pretrain", *TINY, "--out", str(tmp_path / "locked" / "run")]) == 2
    assert "Permission denied" in one_error_line(capsys)


def test_resume_needs_a_run_of_the_same_task(tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path)]) == 2
    assert one_error_line(capsys) == f"{tmp_path} is not a run folder (no config.yaml)"
    run = fake_run(tmp_path / "ft", "finetune")
    assert main(["pretrain", "--resume", str(run)]) == 2
    assert one_error_line(capsys) == (
        f"--resume {run}: that folder is a finetune run, not a pretrain run; continue it with "
        f"`mixmask finetune --resume {run}`"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")
def test_impossible_training_settings_are_config_errors(tmp_path, capsys):
    assert main(["pretrain", *TINY, "train.device=cuda", "--out", str(tmp_path / "a")]) == 2
    assert one_error_line(capsys).startswith("config field `train.device`: got 'cuda' but no CUDA device is visible")
    assert not (tmp_path / "a").exists()
    assert main(["pretrain", *TINY, "train.batch_size=128", "--out", str(tmp_path / "b")]) == 2
    assert one_error_line(capsys).startswith("config field `train.batch_size`: got 128, but 64 images cannot fill")


def test_overrides_may_follow_options(tmp_path, capsys):
    assert main(["pretrain", *TINY, "--out", str(tmp_path / "r"), "train.keep_checkpoints=0"]) == 2
    assert one_error_line(capsys).startswith("config field `train.keep_checkpoints`: got 0")
    with pytest.raises(SystemExit) as info:
        main(["pretrain", *TINY, "--outt", str(tmp_path / "r")])
    assert info.value.code == 2 and "unrecognized arguments: --outt" in capsys.readouterr().err


def test_export_names_the_file_it_cannot_write(tmp_path, capsys):
    run = fake_run(tmp_path / "ft", "finetune")
    with pytest.raises(SystemExit) as info:
        main(["export", str(run), "--out", str(tmp_path / "weights.pth")])
    assert info.value.code == 2 and "give a name ending in .safetensors" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["export", str(run), "--out", str(tmp_path / "file" / "w.safetensors")]) == 2
    assert (
        one_error_line(capsys)
        == f"cannot write {tmp_path / 'file' / 'w.safetensors'}: {tmp_path / 'file'} is a file, not a folder"
    )
    assert main(["export", str(run), "--out", str(tmp_path / "w.safetensors")]) == 0


def test_programming_errors_keep_their_traceback(monkeypatch):
    import mixmask.tasks.pretrain

    def broken(*args, **kwargs):
        raise TypeError("a bug, not bad input")

    monkeypatch.setattr(mixmask.tasks.pretrain, "pretrain", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["pretrain", *TINY])


def test_damaged_run_and_sweep_records_are_one_line(tmp_path, capsys):
    run = fake_run(tmp_path / "ft", "finetune")
    (run / "run.json").write_text("{")
    assert main(["export", str(run), "--out", str(tmp_path / "w.safetensors")]) == 2
    assert (
        one_error_line(capsys)
        == f'{run / "run.json"} is damaged: expected JSON with the run\'s task, as {{"task": "pretrain"}}'
    )

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.sqlite").write_text("not a database, a text file in its place\n" * 20)
    assert main(["report", str(tmp_path / "sweep")]) == 2
    assert one_error_line(capsys) == (
        f"{tmp_path / 'sweep' / 'results.sqlite'} is not a usable mixmask results store (file is not a database)"
    )

    sweep_file = tmp_path / "s.yaml"  # a variant whose settings changed since the store recorded it
    sweep_file.write_text("name: s\nfinetune: {train: {epochs: 1}}\nvariants: [{name: a, stages: [finetune]}]\n")
    ResultsStore(tmp_path / "s" / "results.sqlite").add_variant(
        "a", 0, {"other": 1}, {(0, "finetune"): "runs/a/finetune"}
    )
    assert main(["sweep", str(sweep_file), "--out", str(tmp_path / "s")]) == 2
    assert one_error_line(capsys).startswith(
        f"variant 'a' in {tmp_path / 's' / 'results.sqlite'} was recorded with other settings"
    )


def test_ctrl_c_is_one_line_that_says_how_to_resume(monkeypatch, capsys):
    from mixmask import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_config", interrupted)
    assert main(["config"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; run the same command again to resume" in err
