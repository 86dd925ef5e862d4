"""AdamW with A2MIM's parameter groups, and the per-iteration warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mixmask.config import OptimConfig


def param_groups(
    model: nn.Module,
    weight_decay: float,
    token_lr_scale: float,
    lr_scale_of: Callable[[str], float] | None = None,
) -> list[dict]:
    """No weight decay on norm weights, biases and mask tokens/gammas (every tensor with <= 1 dim, plus tokens);
    tokens and gammas learn at ``token_lr_scale`` x lr, as in the official code. ``lr_scale_of(name)`` scales the
    rest further (layer-wise lr decay in finetuning). Frozen parameters are left out."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "mask_tokens" in name or "mask_gammas" in name:
            key = (0.0, token_lr_scale)
        else:
            scale = lr_scale_of(name) if lr_scale_of is not None else 1.0
            key = (0.0 if param.ndim <= 1 else weight_decay, scale)
        groups.setdefault(key, []).append(param)
    return [{"params": params, "weight_decay": wd, "lr_scale": scale} for (wd, scale), params in groups.items()]


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    lr: float,
    fused: bool = False,
    lr_scale_of: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.token_lr_scale, lr_scale_of)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def base_lr(cfg: OptimConfig, total_batch: int) -> float:
    """``lr``, or ``lr * total_batch / lr_base_batch`` with linear scaling on."""
    return cfg.lr * total_batch / cfg.lr_base_batch if cfg.scale_lr else cfg.lr


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warmup from 0 over ``warmup_steps`` iterations, then cosine from ``lr`` to ``min_lr``."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group follows the schedule, scaled by its ``lr_scale`` (mask tokens: 0.1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
