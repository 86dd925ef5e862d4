import json
import math

import pytest
import torch
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


def test_param_groups_no_decay_on_norms_biases_tokens_and_token_lr():
    model = TinyNet()
    groups = param_groups(model, weight_decay=0.05, token_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [(g["weight_decay"], g["lr_scale"], sorted(names[id(p)] for p in g["params"])) for g in groups]
    assert by_group == [
        (0.05, 1.0, ["conv.weight", "head.weight"]),
        (0.0, 1.0, ["conv.bias", "head.bias", "norm.bias", "norm.weight"]),
        (0.0, 0.1, ["mask_tokens.0"]),
    ]


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
