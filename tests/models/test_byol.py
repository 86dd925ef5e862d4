"""BYOL: the regression loss and the symmetric loss against direct computations, the EMA target and its
schedule, the MLPs' design."""

import math

import pytest
import torch
from torch import nn

from mixmask.config import BYOLConfig
from mixmask.data.transforms import two_view_transform
from mixmask.models.backbone import build_backbone
from mixmask.models.byol import BYOL, regression_loss
from mixmask.models.mocov3 import momentum_at
from tests.models.fixed_views import losses_on_fixed_views


def tiny_model(**overrides) -> BYOL:
    cfg = BYOLConfig(hidden_dim=32, proj_dim=16, **overrides)
    return BYOL(build_backbone("resnet_tiny", 32), cfg)


def test_regression_loss_is_two_minus_two_cosine():
    generator = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    p64, z64 = p.double(), z.double()
    expected = ((p64 / p64.norm(dim=1, keepdim=True) - z64 / z64.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    torch.testing.assert_close(regression_loss(p, z).double(), expected, rtol=1e-6, atol=1e-6)
    z.requires_grad_(True)
    regression_loss(p.requires_grad_(True), z).backward()
    assert z.grad is None and p.grad is not None  # the target is fixed


def test_mlps_follow_byol():
    model = tiny_model()
    width = model.backbone.model.num_features
    for mlp, in_dim in ((model.projector, width), (model.predictor, 16)):
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(in_dim, 32), (32, 16)]
        assert isinstance(mlp[1], nn.BatchNorm1d) and isinstance(mlp[2], nn.ReLU)
        assert linears[-1].bias is not None and isinstance(mlp[-1], nn.Linear)
    assert all(not p.requires_grad for p in model.target_encoder.parameters())


def test_loss_and_target_update_match_a_direct_computation():
    torch.manual_seed(0)
    model = tiny_model(momentum=0.9, momentum_schedule="constant")
    with torch.no_grad():  # online and target differ, so the update and the loss are not trivial
        for param in [*model.backbone.parameters(), *model.projector.parameters()]:
            param.add_(0.05 * torch.randn_like(param))
    online = [p.detach().clone() for p in [*model.backbone.parameters(), *model.projector.parameters()]]
    target = [p.detach().clone() for p in [*model.target_encoder.parameters(), *model.target_projector.parameters()]]
    views = torch.randn(6, 2, 3, 32, 32)
    out = model(views, progress=0.3)
    moved = [*model.target_encoder.parameters(), *model.target_projector.parameters()]
    for new, old, q in zip(moved, target, online, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * q)

    def embed(encoder, projector, x):
        return projector(encoder.model.forward_head(encoder(x), pre_logits=True))

    with torch.no_grad():
        x1, x2 = views[:, 0], views[:, 1]
        p1 = model.predictor(embed(model.backbone, model.projector, x1))
        p2 = model.predictor(embed(model.backbone, model.projector, x2))
        t1 = embed(model.target_encoder, model.target_projector, x1)
        t2 = embed(model.target_encoder, model.target_projector, x2)
        expected = regression_loss(p1, t2) + regression_loss(p2, t1)
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-5, atol=1e-5)


def test_target_momentum_follows_byol_cosine():
    cfg = BYOLConfig()
    for k, total in ((0, 10), (3, 10), (10, 10)):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2
        assert abs(momentum_at(k / total, cfg) - expected) < 1e-12


@pytest.mark.slow
def test_loss_falls_on_shapesx_views():
    """The ShapesX config's model, 15 AdamW steps on fixed views of 32 images (measured: 3.9 -> 1.2)."""
    losses = losses_on_fixed_views("byol", two_view_transform(32, (0.2, 1.0)))
    assert losses[-1] < 0.5 * losses[0], losses
