"""MAE (Masked Autoencoders Are Scalable Vision Learners, He et al., CVPR 2022) on a timm ViT, read top to bottom.

One step: the image is cut into the ViT's patches; the encoder (the timm ``VisionTransformer`` kept whole as
``self.backbone.model``) sees only the visible patches, each with its position embedding, plus the class/register
tokens; a light Transformer decoder gets the encoded visible tokens and a shared learnable mask token for every
masked patch, back in patch order with fixed 2D sin-cos position embeddings, and predicts each patch's pixels; the
loss is the mean squared error per patch, averaged over the masked patches only (optionally against patches
normalised by their own mean and variance, MAE's ``norm_pix_loss``).

As in MAE: visible-only encoder; fixed 2D sin-cos position embeddings in the encoder (frozen, class-token slot
zero) and in the decoder; decoder = Linear -> ``decoder_depth`` pre-norm blocks (mlp_ratio 4, qkv bias, LayerNorm
eps 1e-6) -> LayerNorm -> Linear to ``patch**2 * 3`` pixels in (row, column, channel) order; the decoder keeps the
encoder's class (and register) token slots, with zero position embedding, and drops them before the prediction
head; MAE's initialisation of the whole model (xavier-uniform Linear layers and patch projection, LayerNorm 1/0,
class and mask tokens normal(0.02)); loss in fp32.

UM-MAE (Li et al. 2022) is this model with ``model.mae.secondary_ratio`` 0.25 and ``kind: uniform`` masks: as in its
code, a learnable token (normal(0.02)) plus each patch's position replaces ``visible - int(visible * (1 - ratio))``
randomly chosen visible tokens in the encoder (drawn from torch's generator in the step, as UM-MAE draws them); they
are not reconstructed.

``loss.target: hog`` (MaskFeat's targets, ``mixmask.targets``): the prediction head gives each patch the HOG of its
cells, ``(patch / cell)^2 * 27`` numbers (108 for a 16 px patch with 8 px cells), in MaskFeat's order; the loss is
the same per-patch MSE averaged over the masked patches (MaskFeat's ``MSELoss`` over its masked patches' numbers),
against the HOG of the clean image. MaskFeat itself has no MAE decoder: its encoder sees every patch, a token
replacing the masked ones, and a linear head predicts from the last block (``model.method: simmim`` on a ViT with
``loss.target: hog``); this is MAE's encoder and decoder with MaskFeat's target.

What differs:
- The masks come from mixmask's masker, not MAE's per-image random shuffle: ``masks.stages[0]`` is an exact-count
  mask on the ViT patch grid drawn from any mask patch that is a multiple of the ViT patch (a 32 px mask patch
  drops 4x4 ViT patches at once), so block-wise and mixed masking work with MAE too. Every image of a batch must
  drop the same number of patches (true for one strategy, and for ``per_batch`` mixing; ``per_sample`` mixing of
  strategies with different counts is refused with a clear error).
- Visible patches keep their patch order in the encoder (MAE's shuffle orders them randomly; attention does not
  care, and patch order makes the tokens reproducible and easy to test).
- The sin-cos embeddings come from timm (``build_sincos2d_pos_embed``): the same frequencies as MAE's
  numpy code, with the channels in another fixed order (sin h, sin w, cos h, cos w), which a learned network does
  not notice.
- ``prediction`` is the full image in the input's normalised space (with HOG targets: the predicted HOG map
  (B, 27, H / cell, W / cell)). With ``norm_pix`` the per-patch normalisation
  is undone with the *target* patch's mean and variance (MAE itself has no such output), so the figures look like
  images; the PSNR of a norm_pix model therefore borrows each masked patch's true mean and contrast and is not
  comparable with the PSNR of a model trained on raw pixels.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mixmask._compat import timm
from mixmask.config import Config, ConfigError, MAEConfig
from mixmask.masking import MaskBatch, MixedMasker
from mixmask.models.backbone import ViTBackbone
from mixmask.targets import HOG_CHANNELS, hog_histograms, hog_map, hog_patches

# Parts of the timm ViT the encoder runs; anything else (a pooling norm, an attention pool, a head) is unused.
ENCODER_PARTS = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre", "blocks", "norm")


def sincos_pos_embed(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embeddings (h * w, dim) for a patch grid, row-major like the patch tokens."""
    if dim % 4:
        raise ConfigError(f"a 2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    return timm.layers.pos_embed_sincos.build_sincos2d_pos_embed(list(grid), dim)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, h * w, patch * patch * 3), patches row-major, pixels as (row, column, channel)."""
    b, c, height, width = images.shape
    h, w = height // patch, width // patch
    x = images.reshape(b, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``patchify``: (B, h * w, patch * patch * 3) -> (B, 3, h * patch, w * patch)."""
    b = patches.shape[0]
    h, w = grid
    x = patches.reshape(b, h, w, patch, patch, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h * patch, w * patch)


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's norm_pix targets: each patch minus its mean, over sqrt(its variance + eps). Returns the normalised
    patches and the (mean, std) that undo it. The variance is unbiased, as in MAE (``Tensor.var``)."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    return (patches - mean) / std, mean, std


class MAE(nn.Module):
    """MAE on ``backbone`` (a ``ViTBackbone``); ``cfg`` sizes the decoder; ``norm_pix`` normalises each target patch;
    ``target`` ``hog`` predicts each patch's HOG in cells of ``hog_cell`` pixels instead of its pixels. The whole
    model, encoder included, is initialised the MAE way. Called as ``model(images, masks)`` like A2MIM."""

    two_views = False  # one masked view per image

    def __init__(
        self,
        backbone: ViTBackbone,
        cfg: MAEConfig,
        norm_pix: bool = False,
        target: str = "pixels",
        hog_cell: int = 8,
    ):
        super().__init__()
        if not isinstance(backbone, ViTBackbone):
            raise ConfigError("config field `model.backbone`: MAE needs a Vision Transformer backbone")
        self.backbone = backbone
        self.norm_pix = norm_pix
        vit = backbone.model
        self.patch_size = backbone.patch_size
        self.grid = backbone.grid
        self.num_prefix = vit.num_prefix_tokens
        self.target = target
        outputs = self.patch_size**2 * 3
        if target == "hog":  # each patch's cells: (patch / cell)^2 cells x 9 bins x 3 channels
            if self.patch_size % hog_cell:
                raise ConfigError(
                    f"config field `loss.hog_cell`: got {hog_cell}; expected a divisor of the ViT patch "
                    f"({self.patch_size} px): MAE predicts the HOG of each patch's cells"
                )
            self.hog_cell, self.cells = hog_cell, self.patch_size // hog_cell
            outputs = self.cells**2 * HOG_CHANNELS

        # decoder: embed, mask token, fixed position embedding (patch slots only: prefix slots get none), blocks
        width = cfg.decoder_dim
        self.decoder_embed = nn.Linear(vit.embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # a derived constant: not saved, rebuilt from the config
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(self.grid, width)[None], persistent=False)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.Sequential(
            *[
                timm.models.vision_transformer.Block(
                    width, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm_layer
                )
                for _ in range(cfg.decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(width)
        self.decoder_pred = nn.Linear(width, outputs)
        # UM-MAE's secondary masking: a learnable token that replaces a share of the visible tokens in the encoder
        self.secondary_ratio = cfg.secondary_ratio
        if cfg.secondary_ratio > 0:
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))

        self._init_weights()

    @staticmethod
    def masker(cfg: Config, backbone: ViTBackbone) -> MixedMasker:
        """The masker of a config, with MAE's rules: masked patches are dropped at the patch embedding (stage 0),
        and every image of a batch must drop as many patches (the encoder's batch is (B, visible tokens, C))."""
        masker = MixedMasker.from_config(cfg.masking, backbone.strides, seed=cfg.train.seed, auto_stage=0)
        for i, stage in enumerate(masker.stages):
            if stage != 0:
                raise ConfigError(
                    f"config field `masking.strategies[{i}].stage`: got {stage}; MAE drops masked patches at the "
                    "patch embedding, so the stage must be 0 or auto"
                )
        dropped = {
            spec.count(cfg.data.image_size) * (spec.patch_size // backbone.patch_size) ** 2 for spec in masker.specs
        }
        if cfg.masking.mix == "per_sample" and len(dropped) > 1:
            raise ConfigError(
                f"config field `masking.mix`: got 'per_sample', but MAE needs the same number of masked patches in "
                f"every image of a batch and these strategies mask {sorted(dropped)}; use per_batch"
            )
        return masker

    # ------------------------------------------------------------------------------------------------ init

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        if self.secondary_ratio > 0:
            nn.init.normal_(self.vis_mask_token, std=0.02)
        vit = self.backbone.model
        # MAE's encoder: fixed sin-cos position embedding (frozen; prefix slots zero), the patch projection
        # initialised like a Linear layer, class/register tokens normal(0.02)
        if vit.pos_embed is not None:
            with torch.no_grad():
                vit.pos_embed.zero_()
                vit.pos_embed[0, vit.pos_embed.shape[1] - self.grid[0] * self.grid[1] :] = sincos_pos_embed(
                    self.grid, vit.embed_dim
                )
            vit.pos_embed.requires_grad_(False)
        proj = vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        for token in (vit.cls_token, vit.reg_token):
            if token is not None:
                nn.init.normal_(token, std=0.02)
        decoder = [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]
        for module in [*decoder, vit.blocks, vit.norm, vit.norm_pre]:
            module.apply(_init_linear_and_norm)

    # -------------------------------------------------------------------------------------------- encoder

    def patch_mask(self, masks: MaskBatch, batch_size: int) -> tuple[torch.Tensor, int]:
        """The (B, h * w) bool mask on the ViT grid (True = masked) and the number of visible patches per image."""
        if 0 not in masks.stages:
            raise ValueError(f"MAE needs the mask on the ViT patch grid (stage 0); got stages {sorted(masks.stages)}")
        mask = masks.stages[0]
        if tuple(mask.shape) != (batch_size, *self.grid):
            raise ValueError(f"MAE: mask of shape {tuple(mask.shape)}, expected {(batch_size, *self.grid)}")
        mask = mask.flatten(1)
        masked = mask.sum(dim=1)
        # one sync per step; MAE's encoder batches a fixed number of visible tokens per image
        counts = masked.unique().tolist()
        if len(counts) != 1:
            raise ValueError(
                f"MAE drops masked patches, so every image of a batch must mask the same number of patches; this "
                f"batch masks {counts} patches per image (per_sample mixing of strategies with different counts?). "
                "Use masking.mix=per_batch or strategies whose ratio gives the same count"
            )
        return mask, mask.shape[1] - counts[0]

    def encode(self, images: torch.Tensor, mask: torch.Tensor, visible: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder on the visible patches only. Returns the normalised tokens (B, prefix + visible, C) and
        ``order``: each image's patch indices, visible ones first (both groups in patch order)."""
        vit = self.backbone.model
        x = vit.patch_embed(images)  # (B, N, C)
        prefix_pos, patch_pos = None, torch.zeros_like(x[:1])
        if vit.pos_embed is not None:
            if vit.no_embed_class:  # deit-3 style: patches only
                patch_pos = vit.pos_embed
            else:  # the prefix entries come first
                prefix_pos, patch_pos = vit.pos_embed[:, : self.num_prefix], vit.pos_embed[:, self.num_prefix :]
        x = x + patch_pos
        # a stable sort on the mask puts visible patches (False) first without changing their order
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        keep = order[:, :visible]
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        if self.secondary_ratio > 0:  # UM-MAE: a random share of the visible tokens become a token (+ position)
            token = torch.gather((self.vis_mask_token + patch_pos).expand(len(x), -1, -1), 1,
                                 keep[..., None].expand(-1, -1, x.shape[-1]))  # fmt: skip
            kept = int(visible * (1 - self.secondary_ratio))
            replaced = torch.rand(x.shape[:2], device=x.device).argsort(dim=1).argsort(dim=1) >= kept
            x = torch.where(replaced[..., None], token.to(x.dtype), x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                tokens = tokens + prefix_pos
            x = torch.cat([tokens, x], dim=1)
        x = vit.norm_pre(vit.pos_drop(x))
        x = vit.blocks(x)
        return vit.norm(x), order

    # -------------------------------------------------------------------------------------------- decoder

    def decode(self, latent: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Predicted pixels per patch (B, N, patch * patch * 3) from the encoded visible tokens (HOG targets: the
        patch's cells' histograms)."""
        x = self.decoder_embed(latent)
        prefix, visible = x[:, : self.num_prefix], x[:, self.num_prefix :]
        b, n = order.shape
        tokens = torch.cat([visible, self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)], dim=1)
        restore = torch.argsort(order, dim=1)  # back to patch order
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, tokens.shape[-1]))
        tokens = tokens + self.decoder_pos_embed.to(tokens.dtype)
        x = self.decoder_blocks(torch.cat([prefix, tokens], dim=1))
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, self.num_prefix :])

    # ----------------------------------------------------------------------------------------------- step

    def predict_patches(self, images: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        """The predicted pixels of every patch (B, N, patch * patch * 3), in fp32, for ``masks``."""
        mask, visible = self.patch_mask(masks, images.shape[0])
        latent, order = self.encode(images, mask, visible)
        return self.decode(latent, order).float()

    def predict(self, images: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        """The predicted image (B, 3, H, W), raw-pixel targets' space (R-MAE compares two branches' images)."""
        return unpatchify(self.predict_patches(images, masks), self.patch_size, self.grid)

    def untouched(self, masks: MaskBatch) -> list[nn.Parameter]:
        """Trainable encoder parts MAE never runs (a pooling norm or attention pool): the loss adds them times zero,
        as DDP expects every trainable parameter to get a gradient."""
        return [
            p
            for name, p in self.backbone.model.named_parameters()
            if p.requires_grad and name.split(".")[0] not in ENCODER_PARTS
        ]

    def forward(
        self, images: torch.Tensor, masks: MaskBatch, inputs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss (MSE on masked patches) and the predicted image for normalised ``images`` and this step's masks;
        ``inputs`` (the images with ``data.input_augment``) is what the encoder sees when given, ``images`` stay the
        target."""
        pred = self.predict_patches(images if inputs is None else inputs, masks)  # checks the masks first
        mask = masks.stages[0].flatten(1)

        if self.target == "hog":
            target = hog_patches(hog_histograms(images, self.hog_cell), self.cells)
        else:
            target = patchify(images.float(), self.patch_size)
        if self.norm_pix:
            target, mean, std = normalise_patches(target)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        weight = mask.float()
        loss = (per_patch * weight).sum() / weight.sum()

        if self.target == "hog":
            prediction = hog_map(pred, self.cells, self.grid)
        else:
            pixels = pred * std + mean if self.norm_pix else pred
            prediction = unpatchify(pixels, self.patch_size, self.grid)
        unused = self.untouched(masks)
        if unused:
            loss = loss + sum(p.sum() for p in unused) * 0.0
        return {"loss": loss, "loss_spatial": loss.detach(), "prediction": prediction}


def _init_linear_and_norm(module: nn.Module) -> None:
    """MAE's ``_init_weights``: xavier-uniform Linear weights, zero biases, LayerNorm weight 1 and bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
