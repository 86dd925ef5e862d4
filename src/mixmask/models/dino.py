"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021): a student learns
to match a momentum teacher's centred, sharpened output distribution across multi-crop views. CNN or ViT.

    P_t(x) = softmax((g_t(x) - c) / tau_t),  P_s(x) = softmax(g_s(x) / tau_s)
    loss   = mean over (teacher global crop i, student crop v != i) of  -sum P_t(x_i) log P_s(x_v)
    c      <- m_c c + (1 - m_c) mean over the (global) batch of g_t(global crops)      (after the loss)

Followed from the official code (facebookresearch/dino ``main_dino.py``, ``vision_transformer.DINOHead``,
``utils``): the head is a 3-layer MLP (GELU, hidden 2048, optional BN), a bottleneck of 256, L2 normalisation and a
weight-normalised linear layer without bias to ``out_dim`` (65,536) whose norm is fixed at 1 (``norm_last_layer``);
MLP weights start truncated-normal (std 0.02) with zero biases, the last layer PyTorch's default; the teacher
(backbone + head, no gradient) starts as a copy of the student and follows it with m from 0.996 to 1 on a cosine;
the teacher sees the two global crops only, the student every crop, crops of one size through the backbone
together (``MultiCropWrapper``); tau_s 0.1, tau_t 0.04 with an optional linear warm-up over epochs, centre
momentum 0.9, the centre averaged over all processes; the last layer gets no update in the first
``freeze_last_layer_epochs`` epochs (its gradients dropped: ``idle_parameters``). Crops (``multi_crop_transform``):
two global crops and ``local_crops`` small ones with DINO's flips, colour jitter, blur and solarisation. The ViT
recipe (AdamW, lr 5e-4 x B/256, weight decay 0.04 -> 0.4 on a cosine, gradient clipping 3.0) and the ResNet-50 one
(SGD lr 0.03, weight decay 1e-4, global crops 0.14-1, local 0.05-0.14) live in the configs.

Different from the official code:
- the teacher is moved before the forward pass with the current student (as mixmask's MoCo v3), not after the
  optimiser step; it copies the student's buffers (BN running statistics; the teacher runs on batch statistics);
- gradients are clipped by their global norm (``optim.clip_grad``), the official code clips each parameter's
  gradient to norm 3.0 on its own;
- the student's ViT has no stochastic depth of its own (``model.drop_path`` is the finetuning setting);
- the teacher temperature's warm-up counts whole epochs from the progress of training, as the official schedule.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mixmask.config import DINOConfig
from mixmask.models.backbone import Backbone, ViTBackbone
from mixmask.models.mocov3 import as_model_format, ema_update, embedding_spread, momentum_at


def local_crop_size(cfg: DINOConfig, image_size: int) -> int:
    """The local crops' side: ``cfg.local_size`` (96 at 224) scaled with the input, a multiple of 8 pixels (96 at
    224, 24 at 64); a ViT whose patch does not divide it drops the remainder, as its patch convolution does."""
    return max(8, round(cfg.local_size * image_size / 224 / 8) * 8)


class WeightNormLinear(nn.Module):
    """``nn.utils.weight_norm(nn.Linear(in, out, bias=False))`` written out: each output row is ``g * v / ||v||``;
    with ``learn_norm`` False the norm g stays 1 and the layer has only ``v``."""

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2 normalisation -> weight-normalised last layer."""

    def __init__(self, in_dim: int, cfg: DINOConfig):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(nn.Linear(in_dim if i == 0 else cfg.hidden_dim, cfg.hidden_dim))
            if cfg.use_bn_in_head:
                layers.append(nn.BatchNorm1d(cfg.hidden_dim))
            layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers, nn.Linear(cfg.hidden_dim, cfg.bottleneck_dim))
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(cfg.bottleneck_dim, cfg.out_dim, learn_norm=not cfg.norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temperature(epoch: int, cfg: DINOConfig) -> float:
    """tau_t in ``epoch``: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs (the
    official ``np.linspace`` over them), then constant."""
    warmup = cfg.warmup_teacher_temp_epochs
    if epoch >= warmup:
        return cfg.teacher_temp
    step = (cfg.teacher_temp - cfg.warmup_teacher_temp) / (warmup - 1) if warmup > 1 else 0.0
    return cfg.warmup_teacher_temp + epoch * step


def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    crops: int,
    student_temp: float,
    teacher_temp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss over (teacher global crop i, student crop v != i) pairs and the teacher's probabilities.
    ``student``: (crops x B, K) logits, crop-major; ``teacher``: (2 x B, K) for the two global crops. In fp32."""
    with torch.autocast(student.device.type, enabled=False):
        log_p_student = F.log_softmax(student.float() / student_temp, dim=-1).chunk(crops)
        p_teacher = F.softmax((teacher.float() - center) / teacher_temp, dim=-1).detach()
        total, terms = student.new_zeros((), dtype=torch.float32), 0
        for i, q in enumerate(p_teacher.chunk(2)):
            for v, log_p in enumerate(log_p_student):
                if v != i:
                    total = total + torch.sum(-q * log_p, dim=-1).mean()
                    terms += 1
        return total / terms, p_teacher


class DINO(nn.Module):
    """Student ``backbone`` -> ``head``; teacher ``teacher_encoder`` -> ``teacher_head``; the centre ``center``.
    ``forward(crops, progress)`` takes the global crops (B, 2, 3, H, W) and the local ones (B, n, 3, h, w) as a
    pair (or the global crops alone). Only ``backbone`` is kept after pretraining."""

    two_views = True  # augmented views per image (here: multi-crop), no masking

    def __init__(self, backbone: Backbone | ViTBackbone, cfg: DINOConfig, epochs: int):
        super().__init__()
        self.cfg, self.epochs = cfg, epochs
        self.backbone = backbone
        self.head = DINOHead(backbone.model.num_features, cfg)
        # names must not start with "backbone": exported / finetuned weights are the keys "backbone.model.*"
        self.teacher_encoder = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for param in self._teacher_modules().parameters():
            param.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.epoch = 0  # of the last forward: the last layer is frozen in the first epochs

    def _teacher_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.teacher_encoder, self.teacher_head])

    def idle_parameters(self) -> list[nn.Parameter]:
        """The last layer while it is frozen (DINO's ``cancel_gradients_last_layer``)."""
        if self.epoch >= self.cfg.freeze_last_layer_epochs:
            return []
        return [p for p in self.head.last_layer.parameters() if p.requires_grad]

    def pooled(self, encoder: Backbone | ViTBackbone, images: torch.Tensor) -> torch.Tensor:
        """Pre-logits features of crops of one size; a ViT takes a crop smaller than its input size with its
        position embedding resampled."""
        images = as_model_format(images, encoder)
        tokens = encoder.forward_any_size(images) if isinstance(encoder, ViTBackbone) else encoder(images)
        return encoder.model.forward_head(tokens, pre_logits=True)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """c <- m c + (1 - m) (mean of the teacher's outputs over every process's global crops)."""
        batch_sum = teacher.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher)), device=teacher.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        momentum = self.cfg.center_momentum
        self.center.mul_(momentum).add_(batch_sum / count, alpha=1 - momentum)

    def forward(
        self, crops: torch.Tensor | tuple[torch.Tensor, torch.Tensor], progress: float
    ) -> dict[str, torch.Tensor]:
        global_crops, local_crops = crops if isinstance(crops, (tuple, list)) else (crops, None)
        if global_crops.ndim != 5 or global_crops.shape[1] != 2:
            raise ValueError(f"DINO expects two global crops (B, 2, 3, H, W), got {tuple(global_crops.shape)}")
        self.epoch = int(progress * self.epochs + 1e-9)
        ema_update(self._teacher_modules(), nn.ModuleList([self.backbone, self.head]), momentum_at(progress, self.cfg))
        globals_ = global_crops.transpose(0, 1).flatten(0, 1)  # crop-major: every image's first crop, then second
        features = [self.pooled(self.backbone, globals_)]
        if local_crops is not None and local_crops.shape[1] > 0:
            features.append(self.pooled(self.backbone, local_crops.transpose(0, 1).flatten(0, 1)))
        count = 2 + (local_crops.shape[1] if local_crops is not None else 0)
        bottleneck = F.normalize(self.head.mlp(torch.cat(features)), dim=-1)
        student = self.head.last_layer(bottleneck)
        with torch.no_grad():
            teacher = self.teacher_head(self.pooled(self.teacher_encoder, globals_))
        temperature = teacher_temperature(self.epoch, self.cfg)
        loss, p_teacher = dino_loss(student, teacher, self.center, count, self.cfg.student_temp, temperature)
        self.update_center(teacher)
        entropy = -(p_teacher * torch.log(p_teacher.clamp_min(1e-12))).sum(dim=-1).mean() / math.log(self.cfg.out_dim)
        return {
            "loss": loss,
            "monitor/embedding_spread": embedding_spread(bottleneck[: len(global_crops)]),
            "monitor/teacher_entropy": entropy,
        }
