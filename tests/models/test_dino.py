"""DINO: the loss and the centre against direct computations, the teacher temperature and momentum, the head's
weight-normalised last layer and its freezing, multi-crop through CNN and ViT."""

import math

import pytest
import torch
from torch import nn

from mixmask._compat import timm
from mixmask.config import DINOConfig
from mixmask.models.backbone import build_backbone
from mixmask.models.dino import DINO, WeightNormLinear, dino_loss, local_crop_size, teacher_temperature


def tiny_cfg(**overrides) -> DINOConfig:
    return DINOConfig(**{"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64, **overrides})


def test_loss_matches_a_direct_float64_loop():
    generator = torch.Generator().manual_seed(0)
    batch, crops, k = 3, 4, 10
    student = torch.randn(crops * batch, k, generator=generator)
    teacher = torch.randn(2 * batch, k, generator=generator)
    center = torch.randn(1, k, generator=generator)
    loss, _ = dino_loss(student, teacher, center, crops, student_temp=0.1, teacher_temp=0.04)
    total, terms = 0.0, 0
    for i in range(2):  # teacher's global crop i against every other student crop
        for v in range(crops):
            if v == i:
                continue
            for b in range(batch):
                t = (teacher[i * batch + b].double() - center[0].double()) / 0.04
                q = torch.exp(t - torch.logsumexp(t, 0))
                s = student[v * batch + b].double() / 0.1
                total += -(q * (s - torch.logsumexp(s, 0))).sum().item() / batch
            terms += 1
    assert loss.item() == pytest.approx(total / terms, rel=1e-5)


def test_center_update_and_teacher_temperature():
    model = DINO(build_backbone("resnet_tiny", 32), tiny_cfg(center_momentum=0.9), epochs=10)
    teacher = torch.randn(6, 64)
    model.center.fill_(0.5)
    model.update_center(teacher)
    torch.testing.assert_close(model.center, 0.9 * 0.5 + 0.1 * teacher.mean(0, keepdim=True))
    warm = tiny_cfg(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    # the official np.linspace(0.04, 0.07, 4) over the first 4 epochs, then 0.07
    assert [round(teacher_temperature(e, warm), 6) for e in range(6)] == [0.04, 0.05, 0.06, 0.07, 0.07, 0.07]
    assert teacher_temperature(0, tiny_cfg()) == 0.04


def test_weight_normalised_last_layer_matches_torch_weight_norm():
    torch.manual_seed(0)
    layer = WeightNormLinear(8, 5, learn_norm=False)
    reference = nn.Linear(8, 5, bias=False)
    reference.weight.data.copy_(layer.weight_v.data)
    reference = nn.utils.parametrizations.weight_norm(reference)
    reference.parametrizations.weight.original0.data.fill_(1.0)  # DINO: g filled with 1
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), reference(x))
    assert not layer.weight_g.requires_grad and WeightNormLinear(8, 5, learn_norm=True).weight_g.requires_grad


def test_last_layer_is_idle_in_the_first_epoch_and_the_teacher_follows_the_student():
    torch.manual_seed(0)
    cfg = tiny_cfg(momentum=0.9, momentum_schedule="constant", freeze_last_layer_epochs=1, local_crops=2)
    model = DINO(build_backbone("resnet_tiny", 32), cfg, epochs=4)
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    student = [p.detach().clone() for p in [*model.backbone.parameters(), *model.head.parameters()]]
    teacher = [p.detach().clone() for p in [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]]
    crops = (torch.randn(4, 2, 3, 32, 32), torch.randn(4, 2, 3, 16, 16))
    out = model(crops, progress=0.1)  # epoch 0 of 4
    assert {id(p) for p in model.idle_parameters()} == {id(model.head.last_layer.weight_v)}
    moved = [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]
    for new, old, s in zip(moved, teacher, student, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert 0 < out["monitor/teacher_entropy"] <= 1 and out["monitor/embedding_spread"] > 0
    model(crops, progress=0.25)  # epoch 1: the last layer learns
    assert model.idle_parameters() == []


def test_vit_takes_local_crops_with_a_resampled_position_embedding():
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny_p8", 32)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.forward_any_size(x), backbone(x))
    # a smaller crop: the same as timm's own dynamic-size ViT with these weights
    dynamic = timm.create_model(
        "vit_tiny_patch16_224", patch_size=8, depth=6, img_size=32, num_classes=0, dynamic_img_size=True
    )
    dynamic.load_state_dict(backbone.model.state_dict())
    small = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(backbone.forward_any_size(small), dynamic.forward_features(small), rtol=1e-5, atol=1e-5)
    model = DINO(backbone, tiny_cfg(local_crops=3), epochs=1)
    out = model((torch.randn(2, 2, 3, 32, 32), torch.randn(2, 3, 3, 16, 16)), progress=0.0)
    assert torch.isfinite(out["loss"])


def test_local_crops_scale_with_the_input():
    cfg = DINOConfig()
    assert local_crop_size(cfg, 224) == 96 and local_crop_size(cfg, 64) == 24 and local_crop_size(cfg, 32) == 16
    assert math.isclose(teacher_temperature(100, cfg), 0.04)
