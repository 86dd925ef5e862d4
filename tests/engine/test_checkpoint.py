"""Checkpoints: atomic writes, checksums, the newest kept, damaged ones found and set aside, old layouts."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from mixmask.config import load_config
from mixmask.engine import checkpoint as ckpt
from mixmask.engine.distributed import Dist
from mixmask.engine.optim import build_optimizer
from mixmask.engine.trainer import fit
from tests.engine.tiny import RandomImages, TinyNet, classify, config, stopped_run, truncate, weights


def test_checkpoint_round_trip_and_atomic_replace(tmp_path, monkeypatch):
    model = TinyNet()
    optimizer = build_optimizer(model, load_config().optim, lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    folder = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(folder, model, optimizer, {"step": 1})
    saved = weights(model)

    other = TinyNet()
    other_opt = build_optimizer(other, load_config().optim, lr=0.1)
    state = ckpt.load_checkpoint(folder, other, other_opt)
    assert state["step"] == 1
    assert all(torch.equal(saved[k], v) for k, v in other.state_dict().items())
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    # a crash while writing the next checkpoint leaves the previous one whole and no temporary folder behind
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(folder, TinyNet(), None, {"step": 2})
    assert json.loads((folder / "state.json").read_text())["step"] == 1
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last"]


def test_fit_keeps_the_newest_checkpoints_with_their_checksums(tmp_path):
    fit(config(checkpoint_every_steps=4, keep_checkpoints=3), tmp_path, TinyNet(), RandomImages(), classify, Dist())
    # checkpoints at steps 4, 6 (end of epoch 0), 8, 12, 16, 18: the newest three are kept, nothing else is left
    folders = ckpt.checkpoint_folders(tmp_path)
    assert [f.name for f in folders] == ["step-00000018", "step-00000016", "step-00000012"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(f.name for f in folders)
    state = json.loads((folders[0] / "state.json").read_text())
    files = ("model.safetensors", "optimizer.safetensors")
    assert state["step"] == 18 and state["sha256"] == {name: ckpt.file_sha256(folders[0] / name) for name in files}
    assert ckpt.latest_intact_checkpoint(tmp_path) == folders[0]


def test_a_damaged_newest_checkpoint_resumes_exactly_from_the_one_before(tmp_path, capsys):
    cfg = config(checkpoint_every_steps=2)
    torch.manual_seed(0)
    straight = TinyNet()
    fit(cfg, tmp_path / "straight", straight, RandomImages(), classify, Dist())

    run = tmp_path / "resumed"
    stopped_run(cfg, run, at_micro_step=9)  # epoch 1, after the checkpoint at step 8; step 6 is kept too
    damaged = run / "checkpoints" / "step-00000008" / "model.safetensors"
    truncate(damaged)
    capsys.readouterr()
    torch.manual_seed(123)
    resumed = TinyNet()
    summary = fit(cfg, run, resumed, RandomImages(), classify, Dist())
    err = capsys.readouterr().err
    assert f"{damaged} does not match its sha256" in err and "using the checkpoint" in err and "step-00000006" in err
    assert summary["steps"] == 18
    for key, value in straight.state_dict().items():  # the lost steps are replayed exactly
        assert torch.equal(value, resumed.state_dict()[key]), key
    # the damaged checkpoint is set aside, not deleted, and not counted among the kept ones
    assert (run / "checkpoints" / "damaged-step-00000008" / "model.safetensors").is_file()
    assert [f.name for f in ckpt.checkpoint_folders(run)] == ["step-00000018", "step-00000016"]


def test_every_kind_of_damage_is_found_and_named(tmp_path, capsys):
    model = TinyNet()
    optimizer = build_optimizer(model, load_config().optim, lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    for step in (1, 2, 3):
        ckpt.write_checkpoint(tmp_path, model, optimizer, {"step": step}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]
    newest, previous = root / "step-00000003", root / "step-00000002"
    shutil.copytree(newest, tmp_path / "backup")

    def flip_a_byte(path):  # same size, other content
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))

    damages = [
        ("model.safetensors", truncate, "model.safetensors does not match its sha256"),
        ("optimizer.safetensors", flip_a_byte, "optimizer.safetensors does not match its sha256"),
        ("optimizer.safetensors", Path.unlink, "optimizer.safetensors is missing"),
        ("state.json", lambda p: p.write_text('{"step": 3, "sha'), "state.json is unreadable"),
    ]
    for name, damage, expected in damages:
        shutil.rmtree(newest)
        shutil.copytree(tmp_path / "backup", newest)
        damage(newest / name)
        assert ckpt.latest_intact_checkpoint(tmp_path) == previous
        err = capsys.readouterr().err
        assert f"{newest / name.split('/')[-1]}" in err and expected in err
        with pytest.raises(ckpt.CheckpointError, match=expected):
            ckpt.load_checkpoint(newest, TinyNet(), build_optimizer(TinyNet(), load_config().optim, lr=0.1))
    # readers of weights only do not need the optimizer file
    (newest / "optimizer.safetensors").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup" / "state.json", newest / "state.json")
    assert ckpt.latest_intact_checkpoint(tmp_path, weights_only=True) == newest
    # nothing intact: one line naming every damaged file, and nothing is touched
    truncate(previous / "model.safetensors")
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.latest_intact_checkpoint(tmp_path)
    message = str(info.value)
    assert message.startswith(f"no intact checkpoint in {root}") and "\n" not in message
    assert "step-00000003/optimizer.safetensors is missing" in message
    assert "step-00000002/model.safetensors does not match" in message
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]


def test_run_folders_with_the_old_single_checkpoint_still_load_and_resume(tmp_path):
    cfg = config(checkpoint_every_steps=2)
    torch.manual_seed(0)
    straight = TinyNet()
    fit(cfg, tmp_path / "straight", straight, RandomImages(), classify, Dist())

    run = tmp_path / "old"
    stopped_run(cfg, run, at_micro_step=9)
    root = run / "checkpoints"  # rewrite it as an older mixmask left it: checkpoints/last, no checksums
    os.replace(root / "step-00000008", root / "last")
    shutil.rmtree(root / "step-00000006")
    state = json.loads((root / "last" / "state.json").read_text())
    del state["sha256"]
    (root / "last" / "state.json").write_text(json.dumps(state))
    assert ckpt.latest_intact_checkpoint(run) == root / "last"
    shutil.copytree(root / "last", tmp_path / "damaged_last")  # without checksums, damage shows in the file's header
    truncate(tmp_path / "damaged_last" / "model.safetensors")
    assert "model.safetensors is damaged" in ckpt.verify_checkpoint(tmp_path / "damaged_last")

    torch.manual_seed(123)
    resumed = TinyNet()
    assert fit(cfg, run, resumed, RandomImages(), classify, Dist())["steps"] == 18
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [f.name for f in ckpt.checkpoint_folders(run)] == ["step-00000018", "step-00000016"]  # `last` rotated out


def test_a_failed_checkpoint_write_stops_clearly_and_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save_file = ckpt.save_file
    written = []

    def disk_fills_up(tensors, path, *args, **kwargs):  # as safetensors reports a full disk
        written.append(path)
        if len(written) > 2:  # the first checkpoint's two files fit, the next does not
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, path, *args, **kwargs)

    cfg = config(checkpoint_every_steps=2)
    monkeypatch.setattr(ckpt, "save_file", disk_fills_up)
    with pytest.raises(ckpt.CheckpointError) as info:
        fit(cfg, tmp_path, TinyNet(), RandomImages(), classify, Dist())
    message = str(info.value)
    assert message.startswith(f"could not write the checkpoint {tmp_path / 'checkpoints' / 'step-00000004'}")
    assert "No space left on device" in message
    assert message.endswith(f"the previous checkpoint {tmp_path / 'checkpoints' / 'step-00000002'} is intact")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]  # no half-written folder
    monkeypatch.setattr(ckpt, "save_file", real_save_file)  # space freed: the run goes on from step 2
    assert fit(cfg, tmp_path, TinyNet(), RandomImages(), classify, Dist())["steps"] == 18
