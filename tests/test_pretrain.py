"""Pretraining end to end on ShapesX through the command line and the task function."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixmask.cli import main
from mixmask.config import load_config
from mixmask.models.a2mim import A2MIM
from mixmask.tasks.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=32",
    "data.shapesx.train=192",
    "data.shapesx.val=16",
    "train.batch_size=32",
    "train.epochs=2",
    "train.log_every_steps=2",
    "train.checkpoint_every_steps=4",
    "data.num_workers=0",
    "masking.strategies=[{patch_size: 4, ratio: 0.6}, {patch_size: 16, ratio: 0.4}]",
]


def test_pretrain_cli_writes_a_complete_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml"), *TINY, "--out", str(run)]) == 0
    assert f"run folder: {run}" in capsys.readouterr().out
    assert load_config(run / "config.yaml").masking.strategies[1].patch_size == 16
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "loss_spatial", "loss_freq", "lr", "images_per_s"} <= set(metrics[0])
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 12 and results["unreadable_images"] == []
    assert [(r["patch_size"], r["stage"]) for r in results["reconstruction"]] == [(4, 1), (16, 3)]
    for r in results["reconstruction"]:
        assert 5 < r["psnr_masked"] < 60
        assert (run / r["figure"]).is_file()
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert list((run / "tensorboard").iterdir())
    # a second run into the same folder is refused instead of overwriting it
    assert main(["pretrain", *TINY, "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_bad_pairing_fails_before_any_compute(tmp_path, capsys):
    args = ["pretrain", *TINY, "masking.strategies=[{patch_size: 8, stage: 3}]", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "masking.strategies[0]" in err and "stride 16" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_resume_after_interrupt_gives_bitwise_the_same_weights(tmp_path, monkeypatch):
    cfg = load_config(None, TINY)
    straight = pretrain(cfg, out=tmp_path / "straight")

    calls = {"n": 0}
    forward = A2MIM.forward

    def interrupted(self, images, masks):
        calls["n"] += 1
        if calls["n"] == 10:  # mid epoch 1 (6 steps per epoch), after the checkpoint at step 8
            raise KeyboardInterrupt
        return forward(self, images, masks)

    monkeypatch.setattr(A2MIM, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, out=tmp_path / "resumed")
    monkeypatch.setattr(A2MIM, "forward", forward)
    assert json.loads((tmp_path / "resumed/checkpoints/last/state.json").read_text())["step"] == 8
    torch.manual_seed(99)  # as if in a new process
    assert main(["pretrain", "--resume", str(tmp_path / "resumed")]) == 0

    a = load_file(straight / "checkpoints/last/model.safetensors")
    b = load_file(tmp_path / "resumed/checkpoints/last/model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_loss_falls_on_shapesx(tmp_path):
    overrides = [
        "data.image_size=32",
        "data.shapesx.train=4096",
        "data.shapesx.val=16",
        "train.batch_size=32",
        "train.epochs=1",
        "train.log_every_steps=16",
        "optim.lr=3e-3",
        "optim.warmup_epochs=0.1",
        "data.num_workers=0",
        "masking.strategies=[{patch_size: 8, ratio: 0.5}]",
    ]
    run = pretrain(load_config(None, overrides), out=tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8  # 128 steps
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_two_process_torchrun_on_cpu(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "mixmask",
            "pretrain",
            *TINY,
            "train.epochs=1",
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 3  # 192 images / (2 ranks x 32) per step
    assert len(results["reconstruction"]) == 2
