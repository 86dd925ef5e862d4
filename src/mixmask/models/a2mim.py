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

``loss.target: hog`` (MaskFeat, Wei et al. CVPR 2022; ``mixmask.targets``): the decoder's 1x1 conv gives each
position of the last map the HOG of the cells it covers, ``(stride / cell)^2 * 27`` channels, which PixelShuffle
lays out as a (27, H / cell, W / cell) map (a ViT with 16 px patches and 8 px cells: a linear layer from each token
to its 2x2 cells x 9 bins x 3 channels = 108 numbers, MaskFeat's head after the encoder's final LayerNorm); the loss
is the MSE over the masked cells, i.e. over the masked patches as MaskFeat's. With SimMIM's settings on a ViT
(the token replaces the patch embedding before the position embedding; masked pixels never reach the encoder) this
is MaskFeat's image model, its head initialised as MaskFeat's (truncated normal 0.02, zero bias). Differences from
its official code: mixmask's masks (exact count ``ceil(ratio * n)``, topped up where BEiT's generator stops short;
MaskFeat's is ``round(ratio * n)`` at most; ``kind: blockwise`` draws blocks of 16 patches or more, MaskFeat's 15 at
ratio 0.4); the mask token takes no weight decay (MaskFeat's does; ``optim.token_lr_scale: 1`` gives it MaskFeat's
lr); and a CNN backbone, mean fill or A2MIM's residual token may be combined with HOG targets as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixmask.config import Config, ConfigError, LossConfig
from mixmask.losses import focal_frequency_distance, masked_reconstruction_losses, masked_spatial_loss
from mixmask.masking import MaskBatch, MixedMasker
from mixmask.models.backbone import Backbone, ViTBackbone
from mixmask.targets import HOG_CHANNELS, hog_histograms


def fill_masked(images: torch.Tensor, pixel_mask: torch.Tensor, fill: str) -> torch.Tensor:
    """Masked pixels become the image's per-channel mean over the whole (unmasked) image, or zero, or stay."""
    if fill == "none":
        return images
    m = pixel_mask[:, None]
    value = images.mean(dim=(2, 3), keepdim=True) if fill == "mean" else torch.zeros_like(images[:, :, :1, :1])
    return torch.where(m, value.to(images.dtype), images)


class PixelShuffleDecoder(nn.Sequential):
    """The official decoder: a 1x1 conv to stride^2 * 3 channels, then PixelShuffle back to the input size
    (``out_channels`` per output position instead of 3 RGB values: HOG targets). ``hidden > 0`` puts a small 3x3
    conv + GELU in front of it.

    The 1x1 conv runs as the matrix product it is (``F.linear`` over the channels) and the pixel shuffle as one
    reshape of its output: the same function, but on the CPU the convolution took 1.25 x [1.23, 1.28] as long, forward
    + backward (resnet_tiny's 64 x 256 x 2 x 2 maps to 3,072 channels, 60 alternating rounds). The parameters stay a
    ``Conv2d``'s, so weights and checkpoints are unchanged."""

    def __init__(self, in_channels: int, stride: int, hidden: int = 0, out_channels: int = 3):
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GELU()]
            in_channels = hidden
        layers.append(nn.Conv2d(in_channels, stride**2 * out_channels, 1))
        super().__init__(*layers)
        self.stride, self.out_channels = stride, out_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        *hidden, project = self
        for layer in hidden:
            features = layer(features)
        b, _, h, w = features.shape
        s = self.stride
        # (B, h, w, C) @ W^T: output channel c * s^2 + i * s + j is pixel (i, j) of channel c in each cell (PixelShuffle)
        cells = F.linear(features.permute(0, 2, 3, 1), project.weight.flatten(1), project.bias)
        cells = cells.unflatten(-1, (self.out_channels, s, s))  # (B, h, w, C, i, j)
        return cells.permute(0, 3, 1, 4, 2, 5).reshape(b, self.out_channels, h * s, w * s)


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
        self.target = loss.target
        stride, out_channels = backbone.strides[-1], 3
        if self.target == "hog":  # one prediction per HOG cell: the decoder upsamples to the cell grid
            self.hog_cell = loss.hog_cell
            if stride % self.hog_cell:
                raise ConfigError(
                    f"config field `loss.hog_cell`: got {self.hog_cell}; expected a divisor of {stride}, the stride "
                    f"of {backbone.name}'s last map, which the decoder predicts the HOG cells from"
                )
            stride, out_channels = stride // self.hog_cell, HOG_CHANNELS
        self.decoder = PixelShuffleDecoder(backbone.channels[-1], stride, hidden, out_channels)

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
        """The predicted image for normalised ``images`` with ``masks`` filled and tokenised (no loss); with HOG
        targets the predicted HOG map (B, 27, H / cell, W / cell)."""
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
        if self.target == "hog":  # MaskFeat: the HOG of the (clean) image, MSE on the masked cells
            # a cell lies inside one mask patch (the config checks that the cell divides every patch)
            cells = masks.pixels[:, :: self.hog_cell, :: self.hog_cell]
            spatial = masked_spatial_loss(prediction.float(), hog_histograms(images, self.hog_cell), cells, "l2")
        else:  # the masked spatial loss, and the batch-mean difference the frequency loss weighs
            spatial, difference = masked_reconstruction_losses(
                prediction, images, masks.pixels, cfg.spatial, cfg.focal_alpha, cfg.focal_gamma,
                cfg.freq_unmasked, cfg.freq_unmasked_weight,
            )  # fmt: skip
        loss = spatial
        terms = {"loss_spatial": spatial.detach()}
        if cfg.freq_weight > 0:  # never with HOG targets (the config refuses it)
            frequency = focal_frequency_distance(difference, alpha=cfg.freq_alpha, focal=cfg.freq_focal)
            loss = loss + cfg.freq_weight * frequency
            terms["loss_freq"] = frequency.detach()
        idle = self.untouched(masks)
        if idle:
            loss = loss + sum(p.sum() for p in idle) * 0.0
        return {"loss": loss, **terms, "prediction": prediction}
