"""The one place a pretraining method is built from a config: a plain if/else over ``model.method``.

Each method owns its rules in its own file (which stage its token enters, which masks it accepts, whether it is a
two-view method); this module only picks the method and hands it the config.
"""

from __future__ import annotations

from torch import nn

from mixmask.config import Config, is_vit
from mixmask.masking import MixedMasker
from mixmask.models.a2mim import A2MIM
from mixmask.models.backbone import build_backbone
from mixmask.models.byol import BYOL
from mixmask.models.cmae import CMAE
from mixmask.models.dino import DINO
from mixmask.models.mae import MAE
from mixmask.models.mocov3 import MoCoV3
from mixmask.models.rmae import RelaxedA2MIM, RelaxedMAE
from mixmask.models.simclr import SimCLR
from mixmask.models.simsiam import SimSiam
from mixmask.results import Method, Strategy


def build_pretrain_model(cfg: Config) -> tuple[nn.Module, MixedMasker | None]:
    """The method's model and its masker (None for the joint-embedding methods, which do not mask). Fails with a
    ConfigError on masking the method or the backbone cannot do (e.g. a patch no stage can mask exactly)."""
    backbone = build_backbone(cfg.model.backbone, cfg.data.image_size)
    method = cfg.model.method
    if method == "mocov3":
        return MoCoV3(backbone, cfg.model.mocov3), None
    if method == "simclr":
        return SimCLR(backbone, cfg.model.simclr), None
    if method == "byol":
        return BYOL(backbone, cfg.model.byol), None
    if method == "simsiam":
        return SimSiam(backbone, cfg.model.simsiam), None
    if method == "dino":
        return DINO(backbone, cfg.model.dino, cfg.train.epochs), None
    if cfg.model.method == "mae":
        loss = cfg.loss
        model = MAE(backbone, cfg.model.mae, norm_pix=loss.norm_pix, target=loss.target, hog_cell=loss.hog_cell)
        return model, MAE.masker(cfg, backbone)
    if cfg.model.method == "cmae":
        # a ViT that drops its masked tokens batches one count of visible patches, as MAE: MAE's masking rules
        dropped = is_vit(cfg.model.backbone) and cfg.model.token_mode == "none"
        masker = MAE.masker(cfg, backbone) if dropped else CMAE.masker(cfg, backbone)
        options = {"token_mode": cfg.model.token_mode, "fill": cfg.masking.fill}
        return CMAE(backbone, masker.stages, cfg.model.cmae, cfg.data.image_size, **options), masker
    if cfg.model.method == "rmae" and is_vit(cfg.model.backbone):
        masker = MAE.masker(cfg, backbone)
        return RelaxedMAE(backbone, cfg.model.mae, cfg.model.rmae, masker), masker
    masker = A2MIM.masker(cfg, backbone)  # A2MIM, SimMIM at SimMIM's settings, R-MAE on a CNN
    options = {
        "fill": cfg.masking.fill,
        "token_mode": cfg.model.token_mode,
        "gamma_init": cfg.model.token_gamma_init,
        "decoder": cfg.model.decoder,
        "token_lr_scale": cfg.optim.token_lr_scale,
    }
    if cfg.model.method == "rmae":
        return RelaxedA2MIM(backbone, masker, cfg.loss, cfg.model.rmae, **options), masker
    return A2MIM(backbone, masker.stages, cfg.loss, **options), masker


def describe(cfg: Config, model: nn.Module, masker: MixedMasker | None) -> Method:
    """The ``Method`` record of a pretraining config with its model and masker (``build_pretrain_model``'s): each
    strategy with the stage its token enters, resolved as the run resolves it."""
    backbone = cfg.model.backbone
    if masker is None:
        return Method(cfg.model.method, backbone, two_views=True)
    token = cfg.model.method != "mae" and cfg.model.token_mode != "none"
    strategies = tuple(
        Strategy(spec.kind, spec.patch_size, spec.ratio, stage if token else None, spec.weight)
        for spec, stage in zip(masker.specs, masker.stages, strict=True)
    )
    options = {"token": token, "two_views": model.two_views, "target": cfg.loss.target}
    return Method(cfg.model.method, backbone, strategies, cfg.masking.mix, **options)


def supervised(cfg: Config) -> Method:
    """The ``Method`` record of a classifier trained without a pretraining stage of its own (``finetune.init``:
    scratch, or a weights file)."""
    return Method("supervised", cfg.model.backbone, init=cfg.finetune.init)
