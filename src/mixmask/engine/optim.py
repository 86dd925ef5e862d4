"""The optimiser (AdamW by default; LARS for MoCo v3's and BYOL's ResNet recipes; SGD for SimSiam's) with the
parameter groups the model declares, and the per-iteration warmup + cosine schedules of learning rate and (DINO)
weight decay."""

from __future__ import annotations

import math

import torch
from torch import nn

import mixmask._compat  # noqa: F401  (makes timm importable: fixes torchvision first)
from mixmask.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Parameter groups from what the model declares, as timm models do: no weight decay on tensors of <= 1
    dimension and on the names in ``model.no_weight_decay()``; learning-rate scales from ``model.lr_scales()``
    (A2MIM: its mask tokens learn at 0.1 x lr); the names in ``model.fixed_lr()`` keep the base lr, without warmup
    or decay (SimSiam's predictor). ``layer_decay < 1``: timm's layer-wise decay over the model's ``group_matcher``
    (finetuning). Frozen parameters are left out."""
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1:
        from timm.optim import param_groups_layer_decay  # `import timm` does not load timm.optim

        return param_groups_layer_decay(model, weight_decay, no_decay, layer_decay=layer_decay)
    scales = model.lr_scales() if hasattr(model, "lr_scales") else {}
    fixed = set(model.fixed_lr()) if hasattr(model, "fixed_lr") else set()
    groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (0.0 if param.ndim <= 1 or name in no_decay else weight_decay, scales.get(name, 1.0), name in fixed)
            groups.setdefault(key, []).append(param)
    return [
        {"params": params, "weight_decay": wd, "lr_scale": scale, "fixed_lr": fixed_lr}
        for (wd, scale, fixed_lr), params in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, layer_decay: float = 1.0) -> torch.optim.Optimizer:
    """AdamW (``optim.name=adamw``) or LARS (``lars``: timm's, SGD with momentum ``cfg.momentum`` and a layer-wise
    trust ratio 0.001 * ||w|| / (||g|| + wd * ||w||), as MoCo v3's ResNet recipe). As in MoCo v3, LARS adapts
    and decays only tensors of more than one dimension; biases and norm weights take plain SGD-momentum steps.
    ``sgd``: torch's SGD with momentum ``cfg.momentum`` (SimSiam). AdamW runs torch's fused kernel, on the CPU as on
    CUDA (on the CPU 2.77 x [2.66, 2.88] as fast as the multi-tensor one for A2MIM's resnet_tiny); timm's LARS picks its
    multi-tensor path on CUDA by itself."""
    groups = param_groups(model, cfg.weight_decay, layer_decay)
    for group in groups:
        group["decays"] = group["weight_decay"] > 0  # what a weight-decay schedule may change
    if cfg.name == "lars":
        from timm.optim import Lars  # `import timm` does not load timm.optim

        return Lars(_lars_groups(groups), lr=lr, momentum=cfg.momentum, trust_coeff=0.001)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def _lars_groups(groups: list[dict]) -> list[dict]:
    """Split each group into matrices/kernels (always adapted) and vectors (never adapted). timm adapts a group
    only when its weight decay is non-zero, which ``param_groups`` already sets to 0 for vectors; ``always_adapt``
    keeps matrices adapted when ``weight_decay`` is 0 too (MoCo v3's rule is by dimension, not by decay)."""
    split = []
    for group in groups:
        for adapt in (True, False):
            params = [p for p in group["params"] if (p.ndim > 1) == adapt]
            if params:
                split.append({**group, "params": params, "always_adapt": adapt})
    return split


def base_lr(cfg: OptimConfig, total_batch: int) -> float:
    """``lr``, or ``lr * total_batch / lr_base_batch`` with linear scaling on."""
    return cfg.lr * total_batch / cfg.lr_base_batch if cfg.scale_lr else cfg.lr


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warmup from 0 over ``warmup_steps`` iterations, then cosine from ``lr`` to ``min_lr``."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, base: float | None = None) -> None:
    """Every group follows the schedule's ``lr``, scaled by its ``lr_scale`` (mask tokens: 0.1); groups marked
    ``fixed_lr`` take ``base`` (the schedule's peak) at every step."""
    for group in optimizer.param_groups:
        fixed = group.get("fixed_lr", False) and base is not None
        group["lr"] = (base if fixed else lr) * group["lr_scale"]


def weight_decay_at(step: int, total_steps: int, start: float, end: float) -> float:
    """DINO's weight-decay schedule: a cosine from ``start`` to ``end`` over the iterations, without warmup."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """The decay of every group that decays (never biases and norms, which start at 0)."""
    for group in optimizer.param_groups:
        if group.get("decays", False):
            group["weight_decay"] = weight_decay
