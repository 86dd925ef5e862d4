"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020): self-distillation without negatives.

An online network (backbone -> projector -> predictor) predicts, from one view, the target network's projection of
the other view; the target network is an exponential moving average of the online backbone + projector:

    loss = (2 - 2 cos(p1, sg(z2'))) + (2 - 2 cos(p2, sg(z1')))     (each averaged over the batch)
    tau  = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2           (tau_base 0.996, ``momentum_at``)

Followed from the paper and the official code (google-deepmind/deepmind-research ``byol``): projector and predictor
are Linear (4096) -> BN -> ReLU -> Linear (256), the last linear layer with a bias; the target's BN uses batch
statistics; BYOL's asymmetric augmentations (``two_view_transform``, shared with MoCo v3); the recipe's LARS
(lr 0.2 x B/256, weight decay 1.5e-6, biases and BN excluded from decay and adaptation) lives in
``configs/pretrain/byol_r50_in100.yaml``.

Different from the official code:
- the target network is moved *before* the forward pass with the current online weights, as mixmask's MoCo v3
  does; the official code moves it after the optimiser step with the new ones: the same sequence of targets,
  one step earlier;
- the target also copies the online network's buffers (BN running statistics; keys use batch statistics, so no
  loss changes), and the first linear layer of each MLP has no bias (BN after it cancels one);
- BN statistics are per view (each view is its own forward pass); the official code also normalises per view.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mixmask.config import BYOLConfig
from mixmask.models.backbone import Backbone, ViTBackbone
from mixmask.models.mocov3 import ema_update, embedding_spread, mlp, momentum_at, pooled, two_views


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised mean squared error, 2 - 2 cos(p, z), averaged over the batch; ``z`` is a fixed target."""
    with torch.autocast(p.device.type, enabled=False):
        return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


class BYOL(nn.Module):
    """Online ``backbone`` -> ``projector`` -> ``predictor``; target ``target_encoder`` -> ``target_projector``.
    Only ``backbone`` is kept after pretraining."""

    two_views = True  # two augmented views per image (batches of (B, 2, 3, H, W)), no masking

    def __init__(self, backbone: Backbone | ViTBackbone, cfg: BYOLConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        width = backbone.model.num_features
        self.projector = mlp(2, width, cfg.hidden_dim, cfg.proj_dim, last_bn=False, last_bias=True)
        self.predictor = mlp(2, cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim, last_bn=False, last_bias=True)
        # names must not start with "backbone": exported / finetuned weights are the keys "backbone.model.*"
        self.target_encoder = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for param in self._target_modules().parameters():
            param.requires_grad_(False)

    def _target_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.target_encoder, self.target_projector])

    def forward(self, views: torch.Tensor, progress: float) -> dict[str, torch.Tensor]:
        """``views``: (B, 2, 3, H, W), BYOL's two augmentations per image; ``progress``: the fraction of training
        done, which sets the target's momentum."""
        x1, x2 = two_views(views, "BYOL", self.backbone)
        ema_update(
            self._target_modules(), nn.ModuleList([self.backbone, self.projector]), momentum_at(progress, self.cfg)
        )
        z1 = self.projector(pooled(self.backbone, x1))
        z2 = self.projector(pooled(self.backbone, x2))
        with torch.no_grad():
            t1 = self.target_projector(pooled(self.target_encoder, x1))
            t2 = self.target_projector(pooled(self.target_encoder, x2))
        loss = regression_loss(self.predictor(z1), t2) + regression_loss(self.predictor(z2), t1)
        return {"loss": loss, "monitor/embedding_spread": embedding_spread(z1)}
