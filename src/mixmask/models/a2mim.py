"""A2MIM (Architecture-Agnostic Masked Image Modeling, Li et al., ICML 2023) on a CNN, read top to bottom.

One step: masked input pixels are filled with the image's per-channel mean; the backbone runs stage by stage and,
after the stage chosen for each image's strategy, a learnable mask token is added where that stage's mask is 1
(``z + T * D(M)``; ``token_mode="replace"`` is SimMIM's ``z * (1 - M) + T * M``); a 1x1 conv + PixelShuffle decoder
predicts the image from the last stage; the loss is a spatial loss on masked pixels plus ``freq_weight`` times the
focal frequency loss. The loss follows the official ResNet-50 code (see the reference notes in the repository's
design documents): mean fill, residual token, focal L1, lambda 0.5, unmasked pixels "mixed" with weight 1e-3.

Deliberate choice: the token follows the paper's equation, ``z + T * D(M)`` (``model.token_gamma_init: 0``, the study
default). The official ResNet-50 configs behind the published numbers (``r50_l3_sz224_init_*``) scale the masked
features by a learnable gamma initialised at 1e-6 first, ``z * (1 - M) + gamma * z * M + T * M``: set
``model.token_gamma_init=1e-6`` for that (a row of both A2MIM ablation studies). Tokens and gammas take no weight
decay and learn at ``optim.token_lr_scale`` (0.1) x lr, as in the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from mixmask.config import Config, LossConfig
from mixmask.losses import focal_frequency_loss, frequency_input, masked_spatial_loss
from mixmask.masking import MaskBatch, MixedMasker
from mixmask.models.backbone import Backbone, ViTBackbone


def fill_masked(images: torch.Tensor, pixel_mask: torch.Tensor, fill: str) -> torch.Tensor:
    """Masked pixels become the image's per-channel mean over the whole (unmasked) image, or zero, or stay."""
    if fill == "none":
        return images
    m = pixel_mask[:, None]
    value = images.mean(dim=(2, 3), keepdim=True) if fill == "mean" else torch.zeros_like(images[:, :, :1, :1])
    return torch.where(m, value.to(images.dtype), images)


class PixelShuffleDecoder(nn.Sequential):
    """The official decoder: a 1x1 conv to stride^2 * 3 channels, then PixelShuffle back to the input size.
    ``hidden > 0`` puts a small 3x3 conv + GELU in front of it."""

    def __init__(self, in_channels: int, stride: int, hidden: int = 0):
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GELU()]
            in_channels = hidden
        layers += [nn.Conv2d(in_channels, stride**2 * 3, 1), nn.PixelShuffle(stride)]
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)


class A2MIM(nn.Module):
    """A2MIM (and SimMIM, at SimMIM's settings) on ``backbone``. ``token_stages``: the stage of each masking strategy
    (one token per distinct stage); ``token_lr_scale``: the tokens' (and gammas') learning rate relative to the rest."""

    two_views = False  # one masked view per image

    def __init__(
        self,
        backbone: Backbone | ViTBackbone,
        token_stages: list[int],
        loss: LossConfig,
        fill: str = "mean",
        token_mode: str = "add",
        gamma_init: float = 0.0,
        decoder: str = "pixel_shuffle",
        token_lr_scale: float = 0.1,
    ):
        super().__init__()
        self.backbone = backbone
        self.loss_cfg = loss
        self.fill = fill
        self.token_mode = token_mode
        self.token_lr_scale = token_lr_scale
        self.idle: list[nn.Parameter] = []  # tokens (and gammas) no image used in the last forward
        # one learnable token per stage in use, shape (1, C, 1, 1), truncated normal with std 0.02
        self.mask_tokens = nn.ParameterDict()
        for stage in sorted(set(token_stages)) if token_mode != "none" else []:
            token = torch.empty(1, backbone.channels[stage], 1, 1)
            self.mask_tokens[str(stage)] = nn.Parameter(nn.init.trunc_normal_(token, std=0.02))
        # the official "init" variant scales masked features by a learnable gamma before adding the token
        self.mask_gammas = nn.ParameterDict()
        if gamma_init > 0 and token_mode == "add":
            for stage in self.mask_tokens:
                self.mask_gammas[stage] = nn.Parameter(torch.full_like(self.mask_tokens[stage], gamma_init))
        hidden = backbone.channels[-1] // 2 if decoder == "conv" else 0
        self.decoder = PixelShuffleDecoder(backbone.channels[-1], backbone.strides[-1], hidden)

    @staticmethod
    def masker(cfg: Config, backbone: Backbone | ViTBackbone) -> MixedMasker:
        """The masker of a config, with A2MIM's stage rule: ``auto`` is the deepest stage whose stride divides the
        patch, except on a ViT and for SimMIM, where the token enters right after the patch embedding (stage 0)."""
        auto_stage = 0 if isinstance(backbone, ViTBackbone) or cfg.model.method == "simmim" else None
        return MixedMasker.from_config(cfg.masking, backbone.strides, seed=cfg.train.seed, auto_stage=auto_stage)

    def no_weight_decay(self) -> set[str]:
        """Mask tokens and gammas take no weight decay (official code); tensors of <= 1 dimension never do."""
        return {f"mask_tokens.{k}" for k in self.mask_tokens} | {f"mask_gammas.{k}" for k in self.mask_gammas}

    def lr_scales(self) -> dict[str, float]:
        """Tokens and gammas learn at ``token_lr_scale`` x lr (0.1 in the official code)."""
        return dict.fromkeys(self.no_weight_decay(), self.token_lr_scale)

    def idle_parameters(self) -> list[nn.Parameter]:
        """The tokens (and gammas) of stages no image used in the last forward: with mixed masking the trainer
        leaves them, and their optimizer state, untouched this step."""
        return self.idle

    def insert_tokens(self, stage: int, features: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        key = str(stage)
        if stage not in masks.stages or key not in self.mask_tokens:
            return features
        m = masks.stages[stage][:, None].to(features.dtype)
        token = self.mask_tokens[key].to(features.dtype)
        if self.token_mode == "replace":
            return features * (1 - m) + token * m
        if key in self.mask_gammas:
            features = features * (1 - m) + features * m * self.mask_gammas[key].to(features.dtype)
        return features + token * m

    def predict(self, images: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        """The predicted image for normalised ``images`` with ``masks`` filled and tokenised (no loss)."""
        inputs = fill_masked(images, masks.pixels, self.fill)
        features = self.backbone(inputs, hook=lambda stage, z: self.insert_tokens(stage, z, masks))
        return self.decoder(self.backbone.feature_map(features))

    def untouched(self, masks: MaskBatch) -> list[nn.Parameter]:
        """The tokens (and gammas) of stages no image uses with ``masks``: the loss adds them times zero (DDP
        expects every parameter to get a gradient on every rank; the strategies' choice is the same on every rank,
        so is this list), and the trainer leaves them and their optimizer state untouched this step."""
        self.idle = [p for k, p in self.mask_tokens.items() if int(k) not in masks.stages]
        self.idle += [p for k, p in self.mask_gammas.items() if int(k) not in masks.stages]
        return self.idle

    def forward(
        self, images: torch.Tensor, masks: MaskBatch, inputs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms and the prediction for a batch of normalised images and this step's masks; ``inputs`` (the
        images with ``data.input_augment``) is what the network sees when given, ``images`` stay the target."""
        prediction = self.predict(images if inputs is None else inputs, masks)

        cfg = self.loss_cfg
        target = images.to(prediction.dtype)
        spatial = masked_spatial_loss(
            prediction.float(), images.float(), masks.pixels, cfg.spatial, cfg.focal_alpha, cfg.focal_gamma
        )
        loss = spatial
        terms = {"loss_spatial": spatial.detach()}
        if cfg.freq_weight > 0:
            freq_in = frequency_input(prediction, target, masks.pixels, cfg.freq_unmasked, cfg.freq_unmasked_weight)
            frequency = focal_frequency_loss(freq_in, target, alpha=cfg.freq_alpha, focal=cfg.freq_focal)
            loss = loss + cfg.freq_weight * frequency
            terms["loss_freq"] = frequency.detach()
        idle = self.untouched(masks)
        if idle:
            loss = loss + sum(p.sum() for p in idle) * 0.0
        return {"loss": loss, **terms, "prediction": prediction}
