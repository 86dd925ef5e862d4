"""C-MAE, the contrastive MAE of "Understanding Masked Image Modeling via Learning Occlusion Invariant Feature" (Kong
& Zhang, CVPR 2023, Eqs. 9-11), read top to bottom.

The paper reads masked image modeling as learning features invariant to occlusion, and tests that reading with a
method that has no reconstruction at all: two copies of one crop, each with SimSiam's colour augmentation (without
it, the paper reports, training does not converge); an online encoder f sees the patches M of the first copy, an
EMA target encoder f' (momentum 0.996) sees the complement 1 - M of the second; masked patches carry a learnable
mask token (SimMIM style: the token replaces their patch embedding). A projector p and a predictor q (2-layer MLPs
with GELU; 2048 hidden and 768 out on ViT-B) map the online features, the target's projector p' (EMA of p) the
target's, and

    s = cos(q(p(z)), p'(z'))

is trained by InfoNCE (temperature 0.2) per patch token: a token of the online view must pick out the target
view's token at its own position. Per instance (the class token or the mean of the patch tokens) and the BYOL-style
normalised L2 (2 - 2 cos) are the paper's alternatives (Table 3), ``model.cmae.level`` and ``model.cmae.loss``.

On a CNN, "per token" means per position of a feature map: the deepest stage whose map is at least 4x4 (at 224 px,
ResNet-50's last stage is 7x7); the masked pixels are zero in normalised space (x * M) and the token replaces the
features at the strategy's stage (SimMIM's stage 0 by default, ``masking.strategies[i].stage`` to move it);
``masking.fill`` (zero by default: x * M) sets what masked pixels become. The
pretrained weights are the online encoder's (``backbone.model.*``), as finetuning reads every method's.

The paper released no code; where it is silent (``model.cmae``, with these defaults):
- ``symmetric`` false: one direction, as Eqs. 9-11 are written (true adds the swapped pair and averages);
- ``negatives`` ``image``: the other tokens of the same image (``batch``: of every image of the local batch);
  per instance, the other images of the local batch (not gathered across processes);
- ``mlp_bn`` false: Linear-GELU-Linear, as the paper's MLPs are described (true puts BatchNorm after the hidden
  layer, BYOL / MoCo style);
- the momentum is constant (``momentum_schedule: cosine`` raises it to 1 over training, as BYOL and MoCo v3);
- ``model.token_mode: none`` drops the mask token (Table 4): a ViT then encodes only its visible patches (as MAE's
  encoder does; only ``level: instance`` can compare such views), a CNN sees its zero-filled pixels;
- the target encoder has its own (EMA) mask token for the patches it does not see; its BatchNorm buffers (on a
  CNN) are copied from the online encoder at each update, as mixmask's MoCo v3 does;
- the InfoNCE logits and loss are computed in fp32.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mixmask.config import CMAEConfig, Config
from mixmask.masking import MaskBatch, MixedMasker, complement
from mixmask.models.a2mim import fill_masked
from mixmask.models.backbone import Backbone, ViTBackbone
from mixmask.models.mocov3 import ema_update


def mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """Linear -> (BatchNorm) -> GELU -> Linear."""
    hidden = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), *hidden, nn.GELU(), nn.Linear(hidden_dim, out_dim))


def token_stage(backbone: Backbone | ViTBackbone, image_size: int) -> int:
    """The stage whose positions are C-MAE's tokens on a CNN: the deepest with a map of at least 4x4 (a ViT: its
    last block)."""
    sizes = [image_size // stride for stride in backbone.strides]
    deep_enough = [s for s, size in enumerate(sizes) if size >= 4]
    if not deep_enough:
        raise ValueError(f"no stage of {backbone.name} has a map of 4x4 or more at {image_size} px")
    return deep_enough[-1]


class CMAE(nn.Module):
    """Online encoder ``backbone`` -> ``projector`` -> ``predictor``; target encoder ``target_encoder`` ->
    ``target_projector`` (EMA copies, with their own mask tokens). ``forward(views, masks, momentum)``: first moves
    the target towards the online networks, then returns the contrastive loss."""

    two_views = True  # two colour-augmented copies of one crop per image, (B, 2, 3, H, W), and complementary masks

    def __init__(self, backbone: Backbone | ViTBackbone, token_stages: list[int], cfg: CMAEConfig, image_size: int,
                 token_mode: str = "replace", fill: str = "zero"):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.fill = fill
        self.vit = isinstance(backbone, ViTBackbone)
        self.use_tokens = token_mode == "replace"
        self.feature_stage = len(backbone.strides) - 1 if self.vit else token_stage(backbone, image_size)
        self.mask_tokens = nn.ParameterDict()
        for stage in sorted(set(token_stages)) if self.use_tokens else []:
            token = torch.empty(1, backbone.channels[stage], 1, 1)
            self.mask_tokens[str(stage)] = nn.Parameter(nn.init.trunc_normal_(token, std=0.02))
        width = backbone.channels[self.feature_stage] if cfg.level == "token" else backbone.model.num_features
        self.projector = mlp(width, cfg.hidden_dim, cfg.out_dim, cfg.mlp_bn)
        self.predictor = mlp(cfg.out_dim, cfg.hidden_dim, cfg.out_dim, cfg.mlp_bn)
        # names must not start with "backbone": the pretrained weights are the keys "backbone.model.*"
        self.target_encoder = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        self.target_tokens = copy.deepcopy(self.mask_tokens)
        for param in self._target().parameters():
            param.requires_grad_(False)
        self.idle: list[nn.Parameter] = []

    @staticmethod
    def masker(cfg: Config, backbone: Backbone | ViTBackbone) -> MixedMasker:
        """The masker of a config: ``auto`` puts the token right after the patch embedding or stem (stage 0), as
        SimMIM; a ViT without tokens needs one count of visible patches per batch, as MAE."""
        return MixedMasker.from_config(cfg.masking, backbone.strides, seed=cfg.train.seed, auto_stage=0)

    def _online(self) -> nn.ModuleList:
        return nn.ModuleList([self.backbone, self.projector, self.mask_tokens])

    def _target(self) -> nn.ModuleList:
        return nn.ModuleList([self.target_encoder, self.target_projector, self.target_tokens])

    def idle_parameters(self) -> list[nn.Parameter]:
        """Mask tokens of stages no image used this step: the trainer leaves them and their optimizer state as
        they are (mixed masking with strategies at different stages)."""
        return self.idle

    def update_target(self, momentum: float) -> None:
        """``target = m * target + (1 - m) * online`` for every parameter; buffers (BatchNorm statistics) copied."""
        ema_update(self._target(), self._online(), momentum)

    def features(
        self, encoder: Backbone | ViTBackbone, tokens: nn.ParameterDict, images: torch.Tensor, masks: MaskBatch
    ) -> torch.Tensor:
        """What the loss compares for one view: tokens (B, N, C) per position, or (B, C) per instance."""
        prefix = encoder.model.num_prefix_tokens if self.vit else 0
        if self.vit and not self.use_tokens:  # the visible patches only, as MAE's encoder (level: instance)
            mask = masks.stages[0].flatten(1)
            keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : int((~mask[0]).sum())]
            out = encoder.model.norm(encoder.forward_visible(images, keep, prefix_tokens=True)[-1])
            return out[:, prefix:].mean(dim=1) if self.cfg.instance_pool == "mean" else out[:, 0]
        inputs = fill_masked(images, masks.pixels, self.fill)  # x * M

        caught: dict[int, torch.Tensor] = {}

        def hook(stage: int, z: torch.Tensor) -> torch.Tensor:
            if str(stage) in tokens and stage in masks.stages:  # SimMIM: the token replaces masked features
                m = masks.stages[stage][:, None].to(z.dtype)
                z = z * (1 - m) + tokens[str(stage)].to(z.dtype) * m
            caught[stage] = z
            return z

        out = encoder(inputs, hook=hook)
        if self.cfg.level == "instance":
            if not self.vit:
                return out.mean(dim=(2, 3))
            return out[:, prefix:].mean(dim=1) if self.cfg.instance_pool == "mean" else out[:, 0]
        if self.vit:
            return out[:, prefix:]  # the normalised patch tokens
        return caught[self.feature_stage].flatten(2).transpose(1, 2)

    def contrast(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The loss of online queries against target keys (both (B, N, D) or (B, D)), in fp32."""
        with torch.autocast(query.device.type, enabled=False):
            q, k = F.normalize(query.float(), dim=-1), F.normalize(key.detach().float(), dim=-1)
            if self.cfg.loss == "byol":
                return (2 - 2 * (q * k).sum(dim=-1)).mean()
            if q.ndim == 2:  # per instance: the other images of the batch are the negatives
                q, k = q[None], k[None]
            elif self.cfg.negatives == "batch":
                q, k = q.flatten(0, 1)[None], k.flatten(0, 1)[None]
            logits = q @ k.transpose(1, 2) / self.cfg.temperature  # (groups, n, n): position i must pick key i
            labels = torch.arange(logits.shape[1], device=q.device).expand(logits.shape[0], -1)
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def pair_loss(self, online_view: torch.Tensor, online_masks: MaskBatch, target_view: torch.Tensor) -> torch.Tensor:
        """s = cos(q(p(z)), p'(z')) for the online encoder on ``online_masks`` and the target on their complement."""
        z = self.features(self.backbone, self.mask_tokens, online_view, online_masks)
        query = self._project(self.predictor, self._project(self.projector, z))
        with torch.no_grad():
            target = self.features(self.target_encoder, self.target_tokens, target_view, complement(online_masks))
            key = self._project(self.target_projector, target)
        return self.contrast(query, key)

    @staticmethod
    def _project(mlp_: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
        # BatchNorm1d needs (n, C): tokens go through as one batch of positions
        return mlp_(z.flatten(0, 1)).unflatten(0, z.shape[:2]) if z.ndim == 3 else mlp_(z)

    def forward(self, views: torch.Tensor, masks: MaskBatch, momentum: float) -> dict[str, torch.Tensor]:
        """``views``: (B, 2, 3, H, W), the online and the target copy of each crop; ``masks``: what the online
        encoder does not see; ``momentum``: this step's EMA coefficient."""
        if views.ndim != 5 or views.shape[1] != 2:
            raise ValueError(f"C-MAE expects views of shape (B, 2, 3, H, W), got {tuple(views.shape)}")
        self.update_target(momentum)
        first, second = views[:, 0], views[:, 1]
        loss = self.pair_loss(first, masks, second)
        if self.cfg.symmetric:
            loss = (loss + self.pair_loss(second, complement(masks), first)) / 2
        self.idle = [p for k, p in self.mask_tokens.items() if int(k) not in masks.stages]
        if self.idle:  # DDP expects every parameter to get a gradient on every rank
            loss = loss + sum(p.sum() for p in self.idle) * 0.0
        return {"loss": loss}
