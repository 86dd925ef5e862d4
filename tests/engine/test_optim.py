"""The optimizer: parameter groups from what the model declares, SGD, and the learning-rate and weight-decay
schedules."""

import pytest
import torch

from mixmask.config import OptimConfig
from mixmask.engine.optim import build_optimizer, lr_at, param_groups, set_weight_decay, weight_decay_at
from tests.engine.tiny import TinyNet


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


def test_weight_decay_schedule_is_dino_cosine_and_spares_what_never_decays():
    assert weight_decay_at(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert weight_decay_at(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert weight_decay_at(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    optimizer = build_optimizer(TinyNet(), OptimConfig(weight_decay=0.04), lr=0.1)
    set_weight_decay(optimizer, 0.3)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.0, 0.3]


def test_sgd_takes_momentum_steps_with_weight_decay():
    model = torch.nn.Linear(3, 2, bias=False)
    optimizer = build_optimizer(model, OptimConfig(name="sgd", weight_decay=0.1, momentum=0.9), lr=0.5)
    assert isinstance(optimizer, torch.optim.SGD)
    w0, g = model.weight.detach().clone(), torch.randn(2, 3)
    model.weight.grad = g.clone()
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * (g + 0.1 * w0))
