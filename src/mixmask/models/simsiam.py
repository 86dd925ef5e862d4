"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): two views, one encoder,
a predictor and a stop-gradient; no negatives, no momentum encoder.

    loss = -1/2 * (cos(p1, sg(z2)) + cos(p2, sg(z1)))     (each averaged over the batch)

Followed from the official code (facebookresearch/simsiam ``simsiam/builder.py``, ``main_simsiam.py``): the
projector is three linear layers with BN (the first two followed by ReLU; hidden width = the backbone's width),
its output normalised by a BN without affine parameters (the official last linear layer's bias is frozen, which
the BN then cancels: here it has none); the predictor is Linear (bias-free) -> BN -> ReLU -> Linear (with bias)
through a bottleneck of ``pred_dim`` (512 for 2048); the predictor keeps the base learning rate while everything
else follows the cosine (``fix_pred_lr``). The recipe (SGD, lr 0.05 x B/256, momentum 0.9, weight decay 1e-4;
crops 0.2-1, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, blur with p 0.5, both views alike)
lives in ``configs/pretrain/simsiam_r50_in100.yaml`` and ``symmetric_views_transform``.

Different from the official code:
- the official SGD decays every parameter by 1e-4 (BN and biases included); mixmask exempts tensors of one
  dimension, as in every other method here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixmask.config import SimSiamConfig
from mixmask.models.backbone import Backbone, ViTBackbone
from mixmask.models.mocov3 import embedding_spread, mlp, pooled, two_views


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, sg(z)), averaged over the batch."""
    with torch.autocast(p.device.type, enabled=False):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


class SimSiam(nn.Module):
    """``backbone`` -> ``projector`` -> ``predictor``; only ``backbone`` is kept after pretraining."""

    two_views = True  # two augmented views per image (batches of (B, 2, 3, H, W)), no masking

    def __init__(self, backbone: Backbone | ViTBackbone, cfg: SimSiamConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        width = backbone.model.num_features
        self.projector = mlp(3, width, width, cfg.proj_dim, last_bn=True)
        self.predictor = mlp(2, cfg.proj_dim, cfg.pred_dim, cfg.proj_dim, last_bn=False, last_bias=True)

    def fixed_lr(self) -> list[str]:
        """The predictor's parameters keep the base learning rate (SimSiam's ``--fix-pred-lr``)."""
        return [f"predictor.{name}" for name, _ in self.predictor.named_parameters()] if self.cfg.fix_pred_lr else []

    def forward(self, views: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        """``views``: (B, 2, 3, H, W), two augmentations per image (``progress`` is not used: nothing is
        scheduled inside SimSiam)."""
        x1, x2 = two_views(views, "SimSiam", self.backbone)
        z1 = self.projector(pooled(self.backbone, x1))
        z2 = self.projector(pooled(self.backbone, x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        return {"loss": loss, "monitor/embedding_spread": embedding_spread(z1)}
