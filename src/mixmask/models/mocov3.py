"""MoCo v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021): the
contrastive baseline the Mix-and-Mask study sets against A2MIM.

Two augmented views of each image go through a base encoder (backbone -> projector -> predictor) and a momentum
encoder (an exponential moving average of backbone + projector, no predictor, no gradient). Each query is asked to
pick out the key of the *other* view of its own image among the keys of the whole (global) batch:

    ctr(q, k) = 2T * CrossEntropy(normalize(q) @ normalize(k_all).T / T, labels = arange(B) + rank * B)
    loss      = ctr(q1, k2) + ctr(q2, k1)

Followed from the official code (facebookresearch/moco-v3) and its ResNet-50 recipe: projector and predictor MLPs
with BatchNorm after every linear layer (no biases; the projector ends in BN without affine, as SimCLR); on CNNs a
2-layer projector and a predictor whose output has no BN (``MoCo_ResNet``), on ViTs a 3-layer projector and a
predictor ending in BN (``MoCo_ViT``); hidden width 4096, output 256; keys gathered from all processes (no
gradient through the gather); the momentum encoder updated *before* the keys are computed, with m rising from 0.99
to 1 on a cosine over training (``momentum_at``); the logits and the loss in fp32; BatchNorm statistics per view
(each view is its own forward pass) and synchronised across GPUs (the trainer converts BN to SyncBN under DDP).
The rest of that recipe lives in ``configs/pretrain/mocov3_r50_in100.yaml``: LARS (lr 0.6 x batch / 256, weight
decay 1e-6, momentum 0.9, no decay and no LARS adaptation on biases and BN), T = 1.0, 10 warmup epochs of 100,
BYOL's asymmetric augmentations (``mixmask.data.transforms.two_view_transform``).

Different from the official code:
- the momentum encoder also copies the base encoder's buffers (BatchNorm running statistics) at every update, where
  the official one keeps its own running statistics; keys are always computed in training mode (batch statistics),
  so this changes no loss, only what the momentum encoder would do in eval mode;
- the pretrained weights are the base encoder's backbone (``backbone.model.*``, what finetuning loads), as in the
  official conversion script; the ViT recipe's frozen random patch projection and fixed sin-cos position embedding
  are not reproduced (the ViT is timm's, trained whole);
- keys of ranks with fewer images (an unreadable image dropped from a batch) are padded for the gather, so unequal
  per-rank batches work; the official code assumes equal ones.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mixmask.config import MoCoV3Config
from mixmask.models.backbone import Backbone, ViTBackbone


def momentum_at(progress: float, cfg: MoCoV3Config) -> float:
    """The momentum encoder's coefficient at ``progress`` (fraction of training done, 0..1): constant
    ``cfg.momentum``, or MoCo v3's cosine rise from ``cfg.momentum`` at the start to 1 at the end."""
    if cfg.momentum_schedule == "constant":
        return cfg.momentum
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - cfg.momentum)


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """``ema = m * ema + (1 - m) * online`` for every parameter (the two modules alike); buffers (BatchNorm running
    statistics) are copied."""
    ema_params = list(ema.parameters())
    # one multi-tensor kernel per op instead of two per parameter (ResNet-50 has 160 parameter tensors)
    torch._foreach_mul_(ema_params, momentum)
    torch._foreach_add_(ema_params, [p.detach() for p in online.parameters()], alpha=1.0 - momentum)
    for ema_buffer, buffer in zip(ema.buffers(), online.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def mlp(
    num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool, last_bias: bool = False
) -> nn.Sequential:
    """MoCo v3's MLP: ``num_layers`` bias-free linear layers, BN + ReLU between them, and optionally a BN without
    affine parameters on the output (no bias: every linear layer but a BN-less last one is followed by BN, which
    would cancel it). ``last_bias``: a BN-less last layer with a bias (BYOL's and SimSiam's predictors)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        last = i == num_layers - 1
        bias = last and last_bias and not last_bn
        layers.append(nn.Linear(in_dim if i == 0 else hidden_dim, out_dim if last else hidden_dim, bias=bias))
        if not last:
            layers += [nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


@torch.no_grad()
def embedding_spread(embeddings: torch.Tensor) -> torch.Tensor:
    """The collapse monitor of SimSiam (Fig. 2): the standard deviation over the batch of the L2-normalised
    embeddings, averaged over dimensions and times sqrt(dim): about 1 for embeddings spread over the sphere, 0 when
    every image maps to the same point."""
    z = F.normalize(embeddings.detach().float(), dim=1)
    return z.std(dim=0).mean() * z.shape[1] ** 0.5


COLLAPSED_SPREAD = 0.1  # below this, a run's final embedding spread marks it collapsed


def collapse(monitors: dict[str, float]) -> str:
    """Why a joint-embedding run's final monitors say it collapsed ("" when they do not): the embedding spread
    below ``COLLAPSED_SPREAD``, or (DINO) the teacher's normalised entropy at 1 (uniform output) or 0 (one-hot)."""
    spread = monitors.get("monitor/embedding_spread")
    if spread is not None and spread < COLLAPSED_SPREAD:
        return f"embeddings collapsed (spread {spread:.3f} < {COLLAPSED_SPREAD}; about 1 when spread out)"
    entropy = monitors.get("monitor/teacher_entropy")
    if entropy is not None and entropy > 0.99:
        return f"teacher output uniform (normalised entropy {entropy:.3f})"
    if entropy is not None and entropy < 0.01:
        return f"teacher output one-hot (normalised entropy {entropy:.3f})"
    return ""


def gather_rows(rows: torch.Tensor, with_gradients: bool = False) -> tuple[torch.Tensor, int]:
    """The rows of every process concatenated in rank order, and where this process's own rows start. Batches may
    differ in size across ranks (a dropped unreadable image), so they are padded to the largest for the gather.
    ``with_gradients``: torch's differentiable all-gather, gradients flowing back to each process's own rows
    (SimCLR's negatives); else no gradient (MoCo v3's keys)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([len(rows)], device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = torch.cat([rows, rows.new_zeros((max(counts) - len(rows), *rows.shape[1:]))])
    if with_gradients:
        from torch.distributed.nn.functional import all_gather

        gathered = all_gather(padded)
    else:
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded.detach())
    return torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)]), sum(counts[:rank])


class MoCoV3(nn.Module):
    """Base encoder ``backbone`` -> ``projector`` -> ``predictor``, momentum encoder ``momentum_encoder`` ->
    ``momentum_projector``. ``forward(views, momentum)`` first moves the momentum encoder towards the base encoder,
    then returns the symmetric contrastive loss. Only ``backbone`` is kept after pretraining."""

    two_views = True  # two augmented views per image (batches of (B, 2, 3, H, W)), no masking

    def __init__(self, backbone: Backbone | ViTBackbone, cfg: MoCoV3Config):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.temperature = cfg.temperature
        width = backbone.model.num_features
        vit = isinstance(backbone, ViTBackbone)
        self.projector = mlp(3 if vit else 2, width, cfg.hidden_dim, cfg.proj_dim, last_bn=True)
        self.predictor = mlp(2, cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim, last_bn=vit)
        # names must not start with "backbone": exported / finetuned weights are the keys "backbone.model.*"
        self.momentum_encoder = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for param in self._momentum_modules().parameters():
            param.requires_grad_(False)

    def _base_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.backbone, self.projector])

    def _momentum_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.momentum_encoder, self.momentum_projector])

    def update_momentum_encoder(self, momentum: float) -> None:
        """``k = m * k + (1 - m) * q`` for every parameter; buffers (BN running statistics) are copied."""
        ema_update(self._momentum_modules(), self._base_modules(), momentum)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """InfoNCE of queries against the keys of the whole global batch, scaled by 2T as in MoCo v3; fp32 even
        under autocast (a bf16 softmax over thousands of keys loses the small differences that carry the loss)."""
        with torch.autocast(q.device.type, enabled=False):
            q = F.normalize(q.float(), dim=1)
            keys, offset = gather_rows(F.normalize(k.detach().float(), dim=1))
            logits = q @ keys.T / self.temperature
            labels = torch.arange(len(q), device=q.device) + offset
            return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(self, views: torch.Tensor, progress: float) -> dict[str, torch.Tensor]:
        """``views``: (B, 2, 3, H, W), two augmentations per image; ``progress``: the fraction of training done."""
        x1, x2 = two_views(views, "MoCo v3", self.backbone)
        self.update_momentum_encoder(momentum_at(progress, self.cfg))
        # each view is its own forward pass, so BatchNorm normalises each view with its own statistics
        q1 = self.predictor(self.projector(pooled(self.backbone, x1)))
        q2 = self.predictor(self.projector(pooled(self.backbone, x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(pooled(self.momentum_encoder, x1))
            k2 = self.momentum_projector(pooled(self.momentum_encoder, x2))
        loss = self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)
        return {"loss": loss, "monitor/embedding_spread": embedding_spread(q1)}


def pooled(encoder: Backbone | ViTBackbone, images: torch.Tensor) -> torch.Tensor:
    """timm's pre-logits features: global average pool (CNN) or the class token (ViT)."""
    return encoder.model.forward_head(encoder(images), pre_logits=True)


def as_model_format(images: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """``images`` channels_last when the backbone's convolutions are: the trainer makes 4-D batches so, the views
    of a 5-D batch are made so here."""
    weight = next((p for p in backbone.parameters() if p.ndim == 4), None)
    if weight is None or weight.is_contiguous():
        return images
    return images.contiguous(memory_format=torch.channels_last)


def two_views(views: torch.Tensor, method: str, backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of a (B, 2, 3, H, W) batch, in the backbone's memory format; one clear error otherwise."""
    if views.ndim != 5 or views.shape[1] != 2:
        raise ValueError(f"{method} expects views of shape (B, 2, 3, H, W), got {tuple(views.shape)}")
    return as_model_format(views[:, 0], backbone), as_model_format(views[:, 1], backbone)
