"""MoCo v3: momentum schedule and update, the symmetric contrastive loss, the key gather across processes, the two
augmented views, LARS, and a pretraining run through the command line."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from mixmask.cli import main
from mixmask.config import MoCoV3Config, OptimConfig, load_config
from mixmask.data import collate
from mixmask.data.shapesx import ShapesX
from mixmask.data.transforms import two_view_transform
from mixmask.engine.checkpoint import load_checkpoint, save_checkpoint
from mixmask.engine.optim import build_optimizer, set_lr
from mixmask.models.backbone import build_backbone
from mixmask.models.classifier import Classifier, load_backbone_weights, read_weights
from mixmask.models.mocov3 import MoCoV3, collapse, embedding_spread, gather_rows, momentum_at
from tests.gloo import run_two_processes

ROOT = Path(__file__).resolve().parents[2]


def tiny_model(temperature: float = 1.0, momentum: float = 0.99) -> MoCoV3:
    cfg = MoCoV3Config(64, 32, temperature, momentum, momentum_schedule="constant")
    return MoCoV3(build_backbone("resnet_tiny", 32), cfg)


def shapesx_views(count: int, size: int = 32) -> torch.Tensor:
    dataset = ShapesX("train", size=size, length=count, transform=two_view_transform(size, scale=(0.2, 1.0)))
    return collate([dataset[i] for i in range(count)]).images


def perturb_(module: nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn_like(param))


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_momentum_schedules(progress):
    cosine = MoCoV3Config(momentum=0.99, momentum_schedule="cosine")
    expected = 1 - 0.5 * (1 + math.cos(math.pi * progress)) * (1 - 0.99)
    assert momentum_at(progress, cosine) == pytest.approx(expected, abs=1e-12)
    assert momentum_at(progress, MoCoV3Config(momentum=0.9, momentum_schedule="constant")) == 0.9
    assert momentum_at(0.0, cosine) == pytest.approx(0.99)
    assert momentum_at(0.5, cosine) == pytest.approx(0.995)
    assert momentum_at(1.0, cosine) == pytest.approx(1.0)


def test_heads_follow_the_official_resnet_design_and_exported_names():
    model = tiny_model()
    width = model.backbone.model.num_features  # 256 for resnet_tiny
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(width, 64), (64, 32)]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert isinstance(model.projector[-1], nn.BatchNorm1d) and not model.projector[-1].affine
    assert isinstance(model.predictor[-1], nn.Linear)  # MoCo_ResNet: no BN on the predictor's output
    state = model.state_dict()
    # only the base encoder's backbone is exported under "backbone.model."; the momentum copy is not
    assert sum(k.startswith("backbone.model.") for k in state) == len(model.backbone.model.state_dict())
    assert any(k.startswith("momentum_encoder.model.") for k in state)


def test_loss_is_a_finite_scalar_and_only_the_base_encoder_gets_gradients():
    torch.manual_seed(0)
    model = tiny_model()
    out = model(torch.randn(8, 2, 3, 32, 32), progress=0.0)
    assert set(out) == {"loss", "monitor/embedding_spread"} and out["loss"].shape == () and torch.isfinite(out["loss"])
    out["loss"].backward()
    for module in (model.backbone, model.projector, model.predictor):
        assert all(p.grad is not None for p in module.parameters())
    assert sum(p.grad.abs().sum() for p in model.backbone.parameters()) > 0
    for module in (model.momentum_encoder, model.momentum_projector):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    with pytest.raises(ValueError, match=r"\(B, 2, 3, H, W\)"):
        model(torch.randn(8, 3, 32, 32), progress=0.0)


def test_momentum_update_is_an_ema_of_the_base_encoder():
    torch.manual_seed(0)
    model = tiny_model(momentum=0.9)
    base = [*model.backbone.parameters(), *model.projector.parameters()]
    ema = [*model.momentum_encoder.parameters(), *model.momentum_projector.parameters()]
    assert all(torch.equal(q, k) for q, k in zip(base, ema, strict=True))  # starts as a copy
    perturb_(model.backbone)
    perturb_(model.projector)
    q_before = [p.detach().clone() for p in base]
    k_before = [p.detach().clone() for p in ema]
    model(torch.randn(8, 2, 3, 32, 32), progress=0.0)
    for q, k_old, k_new in zip(q_before, k_before, ema, strict=True):
        torch.testing.assert_close(k_new, 0.9 * k_old + 0.1 * q)
    assert any(not torch.equal(k_old, k_new) for k_old, k_new in zip(k_before, ema, strict=True))
    # buffers (BN running statistics) are copied: in eval mode nothing updates them after the copy
    model.eval()
    with torch.no_grad():
        for buffer in model.backbone.buffers():
            if buffer.is_floating_point():
                buffer.add_(torch.rand_like(buffer))
    model(torch.randn(4, 2, 3, 32, 32), progress=0.0)
    for q, k in zip(model.backbone.buffers(), model.momentum_encoder.buffers(), strict=True):
        assert torch.equal(q, k)


def reference_loss(q1, q2, k1, k2, temperature):
    """MoCo v3's loss written out: cosine logits / T, cross entropy with the diagonal as targets, times 2T."""

    def ctr(q, k):
        logits = (q / q.norm(dim=1, keepdim=True)) @ (k / k.norm(dim=1, keepdim=True)).T / temperature
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean() * 2 * temperature

    return ctr(q1, k2) + ctr(q2, k1)


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_symmetric_loss_matches_a_direct_computation(temperature):
    torch.manual_seed(1)
    model = tiny_model(temperature, momentum=0.5)
    perturb_(model.backbone)  # base and momentum encoders differ, so q and k differ
    views = torch.randn(8, 2, 3, 32, 32)
    loss = model(views, progress=0.0)["loss"]
    # after the call the momentum encoder is the one forward used for the keys (updated before the keys)
    with torch.no_grad():
        x1, x2 = views[:, 0], views[:, 1]

        def key(x):
            return model.momentum_projector(model.momentum_encoder.model.forward_head(model.momentum_encoder(x), True))

        def query(x):
            return model.predictor(model.projector(model.backbone.model.forward_head(model.backbone(x), True)))

        expected = reference_loss(query(x1), query(x2), key(x1), key(x2), temperature)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)


def test_loss_is_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = tiny_model()
    q, k = torch.randn(8, 32).bfloat16(), torch.randn(8, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.contrastive_loss(q, k)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference_loss(q.float(), q.float(), k.float(), k.float(), 1.0) / 2)


@pytest.mark.slow
def test_loss_falls_on_shapesx():
    """A dozen AdamW steps on fixed views of 16 ShapesX images: the queries learn to find their keys."""
    torch.manual_seed(0)
    views = shapesx_views(16)
    model = tiny_model(temperature=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(12):
        loss = model(views, progress=0.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses  # measured 0.34-0.43 over seeds 0-4


def _gather_worker(rank: int, world: int, init_file: str, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        generator = torch.Generator().manual_seed(0)
        q_all, k_all = torch.randn(10, 6, generator=generator), torch.randn(10, 6, generator=generator)
        start, stop = [(0, 4), (4, 10)][rank]  # unequal batches: 4 and 6 images
        keys, offset = gather_rows(k_all[start:stop])
        model = MoCoV3(build_backbone("resnet_tiny", 32), MoCoV3Config(hidden_dim=8, proj_dim=6, temperature=0.5))
        loss = model.contrastive_loss(q_all[start:stop], k_all[start:stop])
        # plain numbers: a tensor in the queue is fetched from this process, which may have exited by then
        queue.put((rank, keys.tolist(), offset, loss.item()))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_keys_are_gathered_from_every_process(tmp_path):
    """Two gloo processes with 4 and 6 images: each sees all 10 keys and its own positives at its offset."""
    results = run_two_processes(_gather_worker, str(tmp_path / "init"))
    generator = torch.Generator().manual_seed(0)
    q_all, k_all = torch.randn(10, 6, generator=generator), torch.randn(10, 6, generator=generator)
    for rank, (start, stop) in enumerate([(0, 4), (4, 10)]):
        keys, offset, loss = results[rank]
        assert torch.equal(torch.tensor(keys), k_all) and offset == start
        # the rank's queries against all keys, positives on the global diagonal
        logits = nn.functional.normalize(q_all[start:stop], dim=1) @ nn.functional.normalize(k_all, dim=1).T / 0.5
        expected = (torch.logsumexp(logits, 1) - logits[:, start:stop].diagonal()).mean() * 2 * 0.5
        assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_two_views_shape_difference_and_reproducibility():
    image = ShapesX("train", size=48, length=1)[0][0]
    transform = two_view_transform(32)
    torch.manual_seed(0)
    random.seed(0)
    first = transform(image)
    torch.manual_seed(0)
    random.seed(123)  # Python's generator must not matter: every draw comes from torch
    assert torch.equal(transform(image), first)
    assert first.shape == (2, 3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first[0], first[1])
    assert any(not torch.equal(transform(image), first) for _ in range(3))
    # view 1 is always blurred, view 2 rarely (p 0.1): view 1 is smoother in the mean
    views = torch.stack([transform(image) for _ in range(40)])
    roughness = (views[..., 1:] - views[..., :-1]).abs().mean(dim=(0, 2, 3, 4))
    assert roughness[0] < roughness[1]
    # the pipelines batch through the trainer's collate into (B, 2, 3, H, W)
    batch = collate([(transform(image), 0, i) for i in range(3)])
    assert batch.images.shape == (3, 2, 3, 32, 32)


def test_build_optimizer_lars_adapts_matrices_not_vectors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    cfg = OptimConfig(name="lars", lr=0.5, weight_decay=1e-3, momentum=0.9)
    optimizer = build_optimizer(model, cfg, lr=0.5)
    assert type(optimizer).__module__.startswith("timm.optim") and type(optimizer).__name__ == "Lars"
    assert isinstance(build_optimizer(model, OptimConfig(), lr=0.5), torch.optim.AdamW)
    set_lr(optimizer, 0.5)  # groups keep lr_scale, so the schedule still drives them
    weight, bias = model[0].weight, model[0].bias
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    g_w, g_b = torch.randn_like(weight), torch.randn_like(bias)
    weight.grad, bias.grad = g_w.clone(), g_b.clone()
    optimizer.step()
    # bias (weight decay 0): a plain SGD step, first momentum buffer = gradient
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * g_b)
    # weight: decayed, then scaled by the trust ratio 0.001 * |w| / (|g| + wd |w|)
    trust = 0.001 * w0.norm() / (g_w.norm() + 1e-3 * w0.norm())
    torch.testing.assert_close(weight.detach(), w0 - 0.5 * trust * (g_w + 1e-3 * w0))
    assert trust < 0.01  # a step far smaller than the plain SGD one
    # second step: momentum 0.9 on the bias
    b1 = bias.detach().clone()
    bias.grad = g_b.clone()
    weight.grad = g_w.clone()
    optimizer.step()
    torch.testing.assert_close(bias.detach(), b1 - 0.5 * (0.9 * g_b + g_b))


def test_lars_still_adapts_matrices_without_weight_decay():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    optimizer = build_optimizer(layer, OptimConfig(name="lars", weight_decay=0.0), lr=0.5)
    w0, g = layer.weight.detach().clone(), torch.randn_like(layer.weight)
    layer.weight.grad, layer.bias.grad = g.clone(), torch.randn_like(layer.bias)
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.5 * (0.001 * w0.norm() / g.norm()) * g)


def test_lars_state_survives_a_checkpoint(tmp_path):
    """The run folder's checkpoint (JSON groups + safetensors state) restores LARS: the next steps match."""
    torch.manual_seed(0)
    cfg = OptimConfig(name="lars", weight_decay=1e-6)

    def step(model, optimizer):
        model(torch.randn(4, 6, generator=torch.Generator().manual_seed(1))).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    optimizer = build_optimizer(model, cfg, lr=0.3)
    step(model, optimizer)
    save_checkpoint(tmp_path / "last", model, optimizer, {"step": 1})
    other = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    other_optimizer = build_optimizer(other, cfg, lr=0.3)
    load_checkpoint(tmp_path / "last", other, other_optimizer)
    step(model, optimizer)
    step(other, other_optimizer)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pretrain_cli_end_to_end_and_weights_load_into_a_classifier(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [
        "data.image_size=32",
        "data.shapesx.train=64",
        "data.shapesx.val=16",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=16",
        "train.log_every_steps=2",
        f"train.out_dir={tmp_path}",
        "model.mocov3.hidden_dim=32",
        "model.mocov3.proj_dim=16",
    ]
    config = ROOT / "configs/pretrain/mocov3_tiny_shapesx.yaml"
    assert main(["pretrain", str(config), *overrides, "--out", str(run)]) == 0
    assert f"run folder: {run}" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "pretrain" and results["method"] == "mocov3" and results["steps"] == 4
    assert set(results["final_loss"]) == {"loss"} and math.isfinite(results["final_loss"]["loss"])
    assert results["reconstruction"] == []
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert load_config(run / "config.yaml").model.method == "mocov3"
    weights = read_weights(run)
    assert weights and not any(k.startswith(("momentum", "projector", "predictor")) for k in weights)
    classifier = Classifier("resnet_tiny", 10, image_size=32)
    load_backbone_weights(classifier, run)
    own = classifier.timm_model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in weights.items() if not classifier.is_head(k))


def test_configs_load():
    tiny = load_config(ROOT / "configs/pretrain/mocov3_tiny_shapesx.yaml")
    assert tiny.model.method == "mocov3" and tiny.model.backbone == "resnet_tiny"
    r50 = load_config(ROOT / "configs/pretrain/mocov3_r50_in100.yaml")
    assert (r50.model.method, r50.model.backbone, r50.optim.name) == ("mocov3", "resnet50", "lars")
    assert r50.optim.lr == 0.6 and r50.optim.scale_lr and r50.optim.lr_base_batch == 256
    assert r50.optim.weight_decay == 1e-6 and r50.model.mocov3.temperature == 1.0


def test_embedding_spread_and_collapse_verdicts():
    torch.manual_seed(0)
    spread_out = embedding_spread(torch.randn(4096, 64))
    assert spread_out == pytest.approx(1.0, abs=0.02)  # uniform on the sphere: std 1/sqrt(dim) per dimension
    assert embedding_spread(torch.ones(32, 64) + 1e-6 * torch.randn(32, 64)) < 1e-3  # every image alike
    assert collapse({"monitor/embedding_spread": 0.9}) == ""
    assert collapse({"monitor/embedding_spread": 0.05}).startswith("embeddings collapsed (spread 0.050")
    assert collapse({"monitor/embedding_spread": 0.9, "monitor/teacher_entropy": 0.995}).startswith(
        "teacher output uniform"
    )
    assert collapse({"monitor/embedding_spread": 0.9, "monitor/teacher_entropy": 0.001}).startswith(
        "teacher output one-hot"
    )
    assert collapse({}) == ""
