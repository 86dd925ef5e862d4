"""AdamW with A2MIM's parameter groups, and the per-iteration warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from mixmask.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, token_lr_scale: float) -> list[dict]:
    """No weight decay on norm weights, biases and mask tokens/gammas (every tensor with <= 1 dim, plus tokens);
    tokens and gammas learn at ``token_lr_scale`` x lr, as in the official code."""
    decay, no_decay, tokens = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "mask_tokens" in name or "mask_gammas" in name:
            tokens.append(param)
        elif param.ndim <= 1:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": tokens, "weight_decay": 0.0, "lr_scale": token_lr_scale},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, fused: bool = False) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.token_lr_scale)
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
