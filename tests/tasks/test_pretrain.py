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
from mixmask.engine import checkpoint as ckpt
from mixmask.engine.checkpoint import latest_intact_checkpoint, load_checkpoint
from mixmask.engine.optim import build_optimizer
from mixmask.models.a2mim import A2MIM
from mixmask.models.classifier import Classifier, load_backbone_weights
from mixmask.models.factory import build_pretrain_model
from mixmask.tasks.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[2]
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


def token_steps(run: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Per mask token: the optimisation steps in which some image used its stage (from the masker's choices, which
    are the same on every rank), and the steps AdamW actually took on it (its state in the last checkpoint)."""
    cfg = load_config(run / "config.yaml")
    model, masker = build_pretrain_model(cfg)
    optimizer = build_optimizer(model, cfg.optim, cfg.optim.lr)
    steps = load_checkpoint(latest_intact_checkpoint(run), model, optimizer, restore_rng=False)["step"]
    accum = cfg.train.accum_steps
    used = {key: 0 for key in model.mask_tokens}
    for step in range(steps):
        stages = set()
        for micro_step in range(step * accum, (step + 1) * accum):
            stages |= {masker.stages[i] for i in masker.choose(micro_step, cfg.train.batch_size).tolist()}
        for key in used:
            used[key] += int(key) in stages
    taken = {key: int(optimizer.state[token]["step"]) for key, token in model.mask_tokens.items()}
    return used, taken


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
    assert (latest_intact_checkpoint(run) / "model.safetensors").is_file()
    assert list((run / "tensorboard").iterdir())
    # mixed masking: a token moves (and its AdamW state advances) only in steps where its strategy was used
    used, taken = token_steps(run)
    assert taken == used and 0 < used["1"] < 12 and 0 < used["3"] < 12
    # a second run into the same folder is refused instead of overwriting it
    assert main(["pretrain", *TINY, "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_hog_targets_pretrain_and_evaluate_without_reconstructions(tmp_path, capsys):
    """MaskFeat's config (SimMIM on the tiny ResNet, HOG targets): the HOG loss falls over two short epochs, no
    reconstruction is attempted (the model predicts no image), evaluate skips it, a classifier loads the encoder."""
    run = tmp_path / "maskfeat"
    config = str(ROOT / "configs/pretrain/maskfeat_tiny_shapesx.yaml")
    assert main(["pretrain", config, *TINY[:-1], "loss.hog_cell=2", "optim.warmup_epochs=0.2", "--out", str(run)]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "simmim" and results["reconstruction"] == []
    assert not (run / "reconstructions").exists()
    assert json.loads((run / "run.json").read_text())["method"]["target"] == "hog"

    assert main(["evaluate", str(run), "eval.cka=false", "--out", str(tmp_path / "e")]) == 0
    assert "reconstructions: none (the model predicts HOG features)" in capsys.readouterr().out
    evaluation = json.loads((tmp_path / "e" / "results.json").read_text())
    assert evaluation["reconstruction"] == [] and evaluation["reconstruction_run"] == str(run)
    assert load_backbone_weights(Classifier("resnet_tiny", 10, image_size=32), run)["loaded"] > 0


def test_one_image_pretrains_and_finetuning_refuses_the_subset(tmp_path, capsys):
    """Few-image pretraining down to one image: repeated to fill the epoch, each repeat augmented afresh."""
    run = tmp_path / "one"
    one = [*TINY[:-1], "train.epochs=1", "data.subset=1", "masking.strategies=[{patch_size: 8, ratio: 0.6}]"]
    assert main(["pretrain", *one, "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 6  # 192 samples of one image / 32
    assert main(["pretrain", *one, "data.repeat=1", "--out", str(tmp_path / "too_few")]) == 2
    assert "or a larger data.repeat" in capsys.readouterr().err
    assert main(["finetune", *TINY[:5], "data.subset=1", "--out", str(tmp_path / "ft")]) == 2
    assert "finetuning uses the full labelled set" in capsys.readouterr().err


def test_input_augmentations_pretrain_and_are_refused_where_they_mean_nothing(tmp_path, capsys):
    run = tmp_path / "augmented"
    augmented = [*TINY[:-1], "train.epochs=1", "masking.strategies=[{patch_size: 8, ratio: 0.6}]"]
    augmented += ["data.input_augment=[patch_mask, self_cutmix, color_jitter]"]
    assert main(["pretrain", *augmented, "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    assert main(["pretrain", *augmented, "model.method=mocov3", "--out", str(tmp_path / "moco")]) == 2
    assert "[] for model.method=mocov3" in capsys.readouterr().err
    assert main(["finetune", *TINY[:5], "data.input_augment=[color_jitter]", "--out", str(tmp_path / "ft")]) == 2
    assert "finetuning has its own augmentation" in capsys.readouterr().err


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
    assert json.loads((latest_intact_checkpoint(tmp_path / "resumed") / "state.json").read_text())["step"] == 8
    torch.manual_seed(99)  # as if in a new process
    assert main(["pretrain", "--resume", str(tmp_path / "resumed")]) == 0

    a = load_file(latest_intact_checkpoint(straight) / "model.safetensors")
    b = load_file(latest_intact_checkpoint(tmp_path / "resumed") / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_checkpoint_resumes_from_the_previous_one_and_none_intact_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    args = [str(ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml"), *TINY, "train.epochs=1"]
    assert main(["pretrain", *args, "--out", str(run)]) == 0  # 6 steps: checkpoints at steps 4 and 6
    newest, previous = (run / "checkpoints" / name for name in ("step-00000006", "step-00000004"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [previous.name, newest.name]
    finished = {k: v.clone() for k, v in load_file(newest / "model.safetensors").items()}  # not backed by the file
    with (newest / "model.safetensors").open("r+b") as handle:  # a copy cut short
        handle.truncate(1000)
    capsys.readouterr()

    assert main(["pretrain", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert f"{newest / 'model.safetensors'} does not match its sha256" in captured.err
    assert f"resuming from {previous}: epoch 0, step 4" in captured.out
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    again = load_file(latest_intact_checkpoint(run) / "model.safetensors")
    assert all(torch.equal(finished[k], again[k]) for k in finished)  # steps 5 and 6 replayed exactly

    for folder in ckpt.checkpoint_folders(run):
        with (folder / "model.safetensors").open("r+b") as handle:
            handle.truncate(1000)
    assert main(["pretrain", "--resume", str(run)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mixmask: error: no intact checkpoint in {run / 'checkpoints'}")
    assert "Traceback" not in captured.err + captured.out


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
    used, taken = token_steps(run)  # under DDP too, an unused token stays put
    assert taken == used and min(used.values()) < 3


@pytest.mark.parametrize("method", ["simclr", "byol", "simsiam", "dino"])
def test_joint_embedding_methods_pretrain_and_record_their_collapse_monitors(method, tmp_path, capsys):
    overrides = [
        "data.image_size=32",
        "data.shapesx={train: 64, val: 16}",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=16",
        "train.log_every_steps=2",
        "model.byol.hidden_dim=32",
        "model.dino.hidden_dim=32",
        "model.dino.out_dim=128",
        "model.dino.local_crops=2",
        "model.simsiam.proj_dim=64",
        "model.simsiam.pred_dim=16",
    ]
    config = ROOT / f"configs/pretrain/{method}_tiny_shapesx.yaml"
    assert main(["pretrain", str(config), *overrides, "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == method and results["steps"] == 4 and results["reconstruction"] == []
    assert set(results["final_loss"]) == {"loss"}
    expected = {"monitor/embedding_spread"} | ({"monitor/teacher_entropy"} if method == "dino" else set())
    assert set(results["monitors"]) == expected and results["collapse"] == ""
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("monitor/embedding_spread" in m for m in metrics)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_is_recorded(tmp_path):
    """train.compile: one graph for all of A2MIM's steps (masks drawn outside it), the same losses as eager training up to
    the compiler's float reordering, and results.json says the run was compiled."""
    from torch._dynamo.utils import counters

    overrides = [
        "data.image_size=32",
        "data.shapesx={train: 96, val: 16}",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=16",
        "train.log_every_steps=2",
        "train.reconstruction_every_epochs=0",
    ]
    config = ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml"
    eager = pretrain(load_config(config, overrides), out=tmp_path / "eager")
    counters.clear()
    compiled = pretrain(load_config(config, [*overrides, "train.compile=true"]), out=tmp_path / "compiled")
    # one graph for every training step (new masks each step recompile nothing), one for the last epoch's
    # reconstruction figures (eval mode, 8 images)
    assert counters["stats"]["unique_graphs"] == 2
    results = [json.loads((run / "results.json").read_text()) for run in (eager, compiled)]
    assert [r["compiled"] for r in results] == [False, True]
    losses = [
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (eager, compiled)
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
