"""The optimizer: parameter groups from what the model declares, and the learning-rate schedule."""

import pytest

from mixmask.engine.optim import lr_at, param_groups
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
