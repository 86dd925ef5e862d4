"""Tiny stand-ins for the engine tests: a deterministic image set, a small network with a mask token, a config."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mixmask.config import load_config
from mixmask.engine.distributed import Dist
from mixmask.engine.trainer import fit


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


class Interrupt(Exception):
    pass


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def stopped_run(cfg, run_dir, at_micro_step):
    """A run interrupted at ``at_micro_step`` (as by a crash), with its checkpoints up to there."""
    torch.manual_seed(0)

    def stop(model, batch, micro_step):
        if micro_step == at_micro_step:
            raise Interrupt
        return classify(model, batch, micro_step)

    with pytest.raises(Interrupt):
        fit(cfg, run_dir, TinyNet(), RandomImages(), stop, Dist())
