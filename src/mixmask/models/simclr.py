"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020; the
3-layer projector of SimCLR v2, NeurIPS 2020): each view must pick out the other view of its image among the 2N
views of the (global) batch.

    NT-Xent(a) = CrossEntropy([z_a @ z_b_all.T, z_a @ z_a_all.T with its own image's entry removed] / T, own image)
    loss       = NT-Xent(a) + NT-Xent(b)          (z: L2-normalised projections; each term averaged over the batch)

Followed from the official code (google-research/simclr, ``objective.add_contrastive_loss`` and
``model.ProjectionHead``): the self-similarity is masked out (the official code subtracts 1e9 from it; here it is
removed from the softmax, the same); the two directions are summed, not averaged; negatives are the views of every
process, gathered *with* their gradients as the official cross-replica concatenation does; the projector's hidden
layers are linear + BN + ReLU at the backbone's width, its last layer linear (no bias) + BN with a scale and no
centre, output 128. Temperature 0.1 (ImageNet, batch 4096) or 0.5 (small batches) by recipe; LARS and SimCLR's
augmentations (``symmetric_views_transform``: crops 0.08-1, colour jitter 0.8 strength with p 0.8, grayscale 0.2,
blur with p 0.5, both views alike) come from the config.

Different from the official code:
- the hidden layers' linear layers have no bias (BN after each cancels one); the official colour jitter applies
  its four parts in a random order, torchvision's in a fixed one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixmask.config import SimCLRConfig
from mixmask.models.backbone import Backbone, ViTBackbone
from mixmask.models.mocov3 import embedding_spread, gather_rows, pooled, two_views


def projection_head(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR v2's projector: (linear + BN + ReLU) x (num_layers - 1), then linear + BN with a learnt scale and no
    centre (its bias is fixed at 0)."""
    layers: list[nn.Module] = []
    for i in range(num_layers - 1):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim)]
        layers.append(nn.ReLU(inplace=True))
    last_bn = nn.BatchNorm1d(out_dim)
    last_bn.bias.requires_grad_(False)
    return nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim, bias=False), last_bn)


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for the views ``z_a``, ``z_b`` (N, D) of this process's images, negatives from all processes:
    the sum of both directions' cross entropies, each averaged over the images. In fp32."""
    with torch.autocast(z_a.device.type, enabled=False):
        z_a, z_b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
        all_a, offset = gather_rows(z_a, with_gradients=True)
        all_b, _ = gather_rows(z_b, with_gradients=True)
        own = torch.arange(len(z_a), device=z_a.device) + offset
        self_mask = F.one_hot(own, len(all_a)).bool()

        def direction(z: torch.Tensor, others: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
            logits_other = z @ others.T / temperature
            logits_same = (z @ same.T / temperature).masked_fill(self_mask, float("-inf"))
            return F.cross_entropy(torch.cat([logits_other, logits_same], dim=1), own)

        return direction(z_a, all_b, all_a) + direction(z_b, all_a, all_b)


class SimCLR(nn.Module):
    """``backbone`` -> ``projector``; only ``backbone`` is kept after pretraining."""

    two_views = True  # two augmented views per image (batches of (B, 2, 3, H, W)), no masking

    def __init__(self, backbone: Backbone | ViTBackbone, cfg: SimCLRConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        width = backbone.model.num_features
        self.projector = projection_head(cfg.proj_layers, width, cfg.hidden_dim or width, cfg.proj_dim)

    def forward(self, views: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        """``views``: (B, 2, 3, H, W), two augmentations per image (``progress`` is not used: nothing is
        scheduled inside SimCLR)."""
        x1, x2 = two_views(views, "SimCLR", self.backbone)
        z1 = self.projector(pooled(self.backbone, x1))
        z2 = self.projector(pooled(self.backbone, x2))
        loss = nt_xent(z1, z2, self.cfg.temperature)
        return {"loss": loss, "monitor/embedding_spread": embedding_spread(z1)}
