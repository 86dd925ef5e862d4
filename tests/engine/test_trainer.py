import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import Dataset

from mixmask.config import load_config
from mixmask.engine import checkpoint as ckpt
from mixmask.engine.distributed import Dist
from mixmask.engine.optim import build_optimizer, lr_at, param_groups
from mixmask.engine.trainer import EpochSampler, TrainingDiverged, fit


class RandomImages(Dataset):
    """Deterministic random images; the random crop offset uses the global RNG like a real augmentation would."""

    def __init__(self, n=48):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 12, 12, generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        dx, dy = torch.randint(0, 5, (2,)).tolist()
        return self.images[i, :, dy : dy + 8, dx : dx + 8], int(self.labels[i]), i


class TinyNet(nn.Module):
    def __init__(self, batch_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8) if batch_norm else nn.GroupNorm(1, 8)
        self.head = nn.Linear(8, 3)
        self.mask_tokens = nn.ParameterDict({"0": nn.Parameter(torch.zeros(1, 8, 1, 1))})

    def no_weight_decay(self):
        return {"mask_tokens.0"}

    def lr_scales(self):
        return {"mask_tokens.0": 0.1}

    def forward(self, x):
        z = torch.relu(self.norm(self.conv(x))) + self.mask_tokens["0"]
        return self.head(z.mean((2, 3)))


def classify(model, batch, micro_step):
    return {"loss": nn.functional.cross_entropy(model(batch.images), batch.labels)}


def config(**train):
    overrides = [f"train.{k}={v}" for k, v in {"epochs": 3, "batch_size": 8, "log_every_steps": 2, **train}.items()]
    return load_config(None, [*overrides, "optim.warmup_epochs=1", "data.num_workers=0"])


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0, 0.01) == 0.0
    assert lr_at(5, 100, 10, 1.0, 0.01) == pytest.approx(0.5)
    assert lr_at(10, 100, 10, 1.0, 0.01) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_param_groups_follow_what_the_model_declares():
    model = TinyNet()
    groups = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [(g["weight_decay"], g["lr_scale"], sorted(names[id(p)] for p in g["params"])) for g in groups]
    assert by_group == [
        (0.05, 1.0, ["conv.weight", "head.weight"]),
        (0.0, 1.0, ["conv.bias", "head.bias", "norm.bias", "norm.weight"]),
        (0.0, 0.1, ["mask_tokens.0"]),
    ]


class TwoTokenNet(TinyNet):
    """A second token that the model reports idle in every step but it never uses."""

    def __init__(self):
        super().__init__()
        self.mask_tokens["1"] = nn.Parameter(torch.ones(1, 8, 1, 1))

    def idle_parameters(self):
        return [self.mask_tokens["1"]]

    def forward(self, x):
        return super().forward(x) + 0.0 * self.mask_tokens["1"].sum()


def test_idle_parameters_keep_their_value_and_optimizer_state(tmp_path):
    model = TwoTokenNet()
    fit(config(), tmp_path, model, RandomImages(), classify, Dist())
    assert torch.equal(model.mask_tokens["1"].detach(), torch.ones(1, 8, 1, 1))
    optimizer = build_optimizer(model, config().optim, 1e-3)
    ckpt.load_checkpoint(ckpt.latest_intact_checkpoint(tmp_path), model, optimizer)
    assert model.mask_tokens["1"] not in optimizer.state  # AdamW never took a step on it
    assert int(optimizer.state[model.mask_tokens["0"]]["step"]) == 18  # 48 images / 8 x 3 epochs


def test_sampler_shards_ranks_and_skips_for_resume():
    full = list(EpochSampler(20, 3, seed=1))
    assert len(full) == 18 and len(set(full)) == 18
    ranks = [list(EpochSampler(20, 3, seed=1, rank=r, world=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 9
    resumed = EpochSampler(20, 3, seed=1)
    resumed.set_epoch(0, skip_batches=2)
    assert list(resumed) == full[6:]
    grouped = EpochSampler(20, 3, seed=1, group=4)  # accumulation over 4 batches: whole groups only
    assert len(list(grouped)) == 12


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


class Interrupt(Exception):
    pass


def test_resume_mid_epoch_gives_bitwise_the_same_weights(tmp_path):
    cfg = config(checkpoint_every_steps=2)
    cpu = Dist()
    torch.manual_seed(0)
    straight = TinyNet()
    fit(cfg, tmp_path / "straight", straight, RandomImages(), classify, cpu)

    torch.manual_seed(0)
    stopped = TinyNet()
    calls = []

    def stop_in_epoch_two(model, batch, micro_step):
        calls.append(micro_step)
        if micro_step == 9:  # epoch 1 (6 batches per epoch), after the checkpoint at step 8
            raise Interrupt
        return classify(model, batch, micro_step)

    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "resumed", stopped, RandomImages(), stop_in_epoch_two, cpu)
    torch.manual_seed(123)  # a fresh process: other RNG state, fresh model
    resumed = TinyNet()
    summary = fit(cfg, tmp_path / "resumed", resumed, RandomImages(), classify, cpu)
    assert summary["steps"] == 18
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(2, 19, 2))
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in lines)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(checkpoint_every_steps=2)

    def diverge(model, batch, micro_step):
        out = classify(model, batch, micro_step)
        return {"loss": out["loss"] * (float("nan") if micro_step >= 5 else 1.0)}

    with pytest.raises(TrainingDiverged, match="NaN"):
        fit(cfg, tmp_path, TinyNet(), RandomImages(), diverge, Dist())
    newest = ckpt.latest_intact_checkpoint(tmp_path)
    state = json.loads((newest / "state.json").read_text())
    assert state["step"] == 4
    model = TinyNet()
    ckpt.load_checkpoint(newest, model)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    torch.manual_seed(0)
    one = TinyNet(batch_norm=False)  # BatchNorm statistics would differ between 2 x 8 and 16 images
    two = TinyNet(batch_norm=False)
    two.load_state_dict(one.state_dict())
    fit(config(epochs=1, batch_size=16), tmp_path / "a", one, RandomImages(), classify, Dist())
    fit(config(epochs=1, batch_size=8, accum_steps=2), tmp_path / "b", two, RandomImages(), classify, Dist())
    for key, value in one.state_dict().items():
        torch.testing.assert_close(value, two.state_dict()[key], rtol=1e-4, atol=1e-6)


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


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _stopped_run(cfg, run_dir, at_micro_step):
    """A run interrupted at ``at_micro_step`` (as by a crash), with its checkpoints up to there."""
    torch.manual_seed(0)

    def stop(model, batch, micro_step):
        if micro_step == at_micro_step:
            raise Interrupt
        return classify(model, batch, micro_step)

    with pytest.raises(Interrupt):
        fit(cfg, run_dir, TinyNet(), RandomImages(), stop, Dist())


def test_a_damaged_newest_checkpoint_resumes_exactly_from_the_one_before(tmp_path, capsys):
    cfg = config(checkpoint_every_steps=2)
    torch.manual_seed(0)
    straight = TinyNet()
    fit(cfg, tmp_path / "straight", straight, RandomImages(), classify, Dist())

    run = tmp_path / "resumed"
    _stopped_run(cfg, run, at_micro_step=9)  # epoch 1, after the checkpoint at step 8; step 6 is kept too
    damaged = run / "checkpoints" / "step-00000008" / "model.safetensors"
    _truncate(damaged)
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
        ("model.safetensors", _truncate, "model.safetensors does not match its sha256"),
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
    _truncate(previous / "model.safetensors")
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
    _stopped_run(cfg, run, at_micro_step=9)
    root = run / "checkpoints"  # rewrite it as an older mixmask left it: checkpoints/last, no checksums
    os.replace(root / "step-00000008", root / "last")
    shutil.rmtree(root / "step-00000006")
    state = json.loads((root / "last" / "state.json").read_text())
    del state["sha256"]
    (root / "last" / "state.json").write_text(json.dumps(state))
    assert ckpt.latest_intact_checkpoint(run) == root / "last"
    shutil.copytree(root / "last", tmp_path / "damaged_last")  # without checksums, damage shows in the file's header
    _truncate(tmp_path / "damaged_last" / "model.safetensors")
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
