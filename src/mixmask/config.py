"""Typed configuration: dataclasses with defaults, YAML files, ``key.sub=value`` overrides, validation.

A config is built in this order: the dataclass defaults, then the YAML file (which may name a ``base:`` file it
extends), then command-line overrides. Dicts merge key by key; lists are replaced whole. The merged dict is then
converted field by field into the dataclasses below, and every check runs before any compute: an unknown key, a
wrong type or an impossible value raises ``ConfigError`` naming the field, the bad value and what would be accepted.

    cfg = load_config("configs/pretrain/a2mim_tiny_shapesx.yaml", ["optim.lr=3e-4", "masking.strategies.0.ratio=0.8"])
    save_config(cfg, run_dir / "config.yaml")   # the fully resolved config, reloadable as is
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(ValueError):
    """A config that cannot run; the message names the field, the value and what is accepted."""


def _require(ok: bool, where: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"config field `{where}`: got {value!r}; expected {accepted}")


def _require_scale(scale: list[float], where: str) -> None:
    """A crop scale: [min, max] fractions of the image area."""
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, where, scale, "[min, max] with 0 < min <= max <= 1")


# --------------------------------------------------------------------------------------------------- sections


@dataclass
class ShapesXConfig:
    """Sizes of the embedded ShapesX benchmark's splits (None: the split's default length)."""

    train: int = 10000
    val: int = 2000
    test: int | None = None
    cue_conflict: int | None = None
    seed: int = 0

    def check(self, where: str) -> None:
        for name in ("train", "val", "test", "cue_conflict"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{where}.{name}", value, "a number of images >= 1, or null")


@dataclass
class DataConfig:
    """Where images come from and how they are cropped.

    ``dataset: folder`` reads ``root/<train_dir>/<class>/*`` and ``root/<val_dir>/<class>/*`` (ImageNet, the
    ImageNet-100 folder that ``mixmask data imagenet100`` builds, any class-folder data). fashion_mnist, cifar10 and
    cifar100 read the usual on-disk files under ``root`` and never download.
    """

    dataset: Literal["shapesx", "folder", "fashion_mnist", "cifar10", "cifar100"] = "shapesx"
    root: str = ""
    train_dir: str = "train"
    val_dir: str = "val"
    image_size: int = 64
    pretrain_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  # A2MIM's RandomResizedCrop scale
    finetune_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_pct: float = 0.875  # evaluation: resize to image_size / crop_pct, then centre crop
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int | Literal["auto"] = "auto"
    # training crops decoded by PIL in the loader's workers, or by NVIDIA DALI (GPU; mixmask[dali]; class folders,
    # plain crops only): the same crops, drawn by mixmask (mixmask.data.dali)
    decoder: Literal["pil", "dali"] = "pil"
    strict: bool = False  # true: an unreadable image stops the run (default: skipped, counted, reported)
    # few-image pretraining (occlusion-invariance paper, Tables 6-8): pretrain on `subset` training images only
    # (0: all), classes in turn (ShapesX: the first ones; folders: a class-balanced pick by train.seed), each shown
    # `repeat` times per epoch (auto: as often as keeps the epoch at the full training set's size). Pretraining
    # only: finetuning uses the full labelled set (finetune.label_fraction for fewer labels).
    subset: int = 0
    repeat: int | Literal["auto"] = "auto"
    # augmentations of a masked-image model's input only, its target staying the clean crop (occlusion-invariance
    # supplement A): self_cutmix, color_jitter (SimSiam's), patch_mask (input_mask_ratio of the cells of
    # input_mask_patch pixels at 224 px, scaled with the input, black)
    input_augment: list[Literal["self_cutmix", "color_jitter", "patch_mask"]] = field(default_factory=list)
    input_mask_ratio: float = 0.75
    input_mask_patch: int = 16
    shapesx: ShapesXConfig = field(default_factory=ShapesXConfig)

    def check(self, where: str) -> None:
        _require(
            self.dataset == "shapesx" or bool(self.root),
            f"{where}.root",
            self.root,
            f"a data folder (data.dataset={self.dataset} reads its images from data.root)",
        )
        _require(32 <= self.image_size <= 1024, f"{where}.image_size", self.image_size, "an integer in 32..1024")
        if self.dataset == "shapesx":
            _require(self.image_size <= 224, f"{where}.image_size", self.image_size, "at most 224 for ShapesX")
        for name in ("pretrain_scale", "finetune_scale"):
            _require_scale(getattr(self, name), f"{where}.{name}")
        _require(0 < self.crop_pct <= 1, f"{where}.crop_pct", self.crop_pct, "a number in (0, 1]")
        _require(len(self.mean) == 3, f"{where}.mean", self.mean, "three numbers, one per RGB channel")
        _require(len(self.std) == 3 and min(self.std) > 0, f"{where}.std", self.std, "three positive numbers")
        _require(
            self.num_workers == "auto" or self.num_workers >= 0,
            f"{where}.num_workers",
            self.num_workers,
            "'auto' or an integer >= 0",
        )
        _require(
            self.decoder == "pil" or self.dataset == "folder",
            f"{where}.decoder",
            self.decoder,
            f"pil: dali decodes JPEG class folders (data.dataset=folder), this data set is {self.dataset}",
        )
        _require(
            len(set(self.input_augment)) == len(self.input_augment),
            f"{where}.input_augment",
            self.input_augment,
            "self_cutmix, color_jitter and/or patch_mask, once each",
        )
        _require(
            0 < self.input_mask_ratio < 1, f"{where}.input_mask_ratio", self.input_mask_ratio, "a fraction in (0, 1)"
        )
        _require(self.input_mask_patch >= 1, f"{where}.input_mask_patch", self.input_mask_patch, "an integer >= 1")
        _require(self.subset >= 0, f"{where}.subset", self.subset, "an integer >= 0 (0: every training image)")
        _require(self.repeat == "auto" or self.repeat >= 1, f"{where}.repeat", self.repeat, "'auto' or an integer >= 1")
        self.shapesx.check(f"{where}.shapesx")


@dataclass
class MoCoV3Config:
    """MoCo v3 (Chen, Xie, He, ICCV 2021): projector/predictor MLPs, temperature, momentum encoder schedule."""

    hidden_dim: int = 4096
    proj_dim: int = 256
    temperature: float = 1.0  # 1.0 for ResNet-50, 0.2 for ViT in the MoCo v3 recipes
    momentum: float = 0.99  # start of the schedule; cosine: rises to 1 by the end of training
    momentum_schedule: Literal["cosine", "constant"] = "cosine"

    def check(self, where: str) -> None:
        for name in ("hidden_dim", "proj_dim"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")
        _require(self.temperature > 0, f"{where}.temperature", self.temperature, "a positive number")
        _require(0 <= self.momentum <= 1, f"{where}.momentum", self.momentum, "a number in [0, 1]")


@dataclass
class SimCLRConfig:
    """SimCLR (Chen et al., ICML 2020; v2's 3-layer projector): NT-Xent over the 2N views of a batch."""

    hidden_dim: int = 0  # projector width; 0: the backbone's width, as SimCLR
    proj_dim: int = 128
    proj_layers: int = 3  # SimCLR v2 (v1: 2)
    temperature: float = 0.1  # 0.1 at ImageNet batch 4096; 0.5 in the CIFAR / small-batch recipes

    def check(self, where: str) -> None:
        _require(self.hidden_dim >= 0, f"{where}.hidden_dim", self.hidden_dim, "an integer >= 0 (0: backbone width)")
        _require(self.proj_dim >= 1, f"{where}.proj_dim", self.proj_dim, "an integer >= 1")
        _require(self.proj_layers >= 2, f"{where}.proj_layers", self.proj_layers, "an integer >= 2")
        _require(self.temperature > 0, f"{where}.temperature", self.temperature, "a positive number")


@dataclass
class BYOLConfig:
    """BYOL (Grill et al., NeurIPS 2020): online projector + predictor, EMA target, 2 - 2 cos both ways."""

    hidden_dim: int = 4096
    proj_dim: int = 256
    momentum: float = 0.996  # tau_base; cosine: rises to 1 by the end of training
    momentum_schedule: Literal["cosine", "constant"] = "cosine"

    def check(self, where: str) -> None:
        for name in ("hidden_dim", "proj_dim"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")
        _require(0 <= self.momentum <= 1, f"{where}.momentum", self.momentum, "a number in [0, 1]")


@dataclass
class SimSiamConfig:
    """SimSiam (Chen & He, CVPR 2021): 3-layer projector, bottleneck predictor, stop-gradient, no negatives."""

    proj_dim: int = 2048  # projector hidden and output width (SimSiam: 2048 for ResNet-50)
    pred_dim: int = 512  # the predictor's bottleneck
    fix_pred_lr: bool = True  # the predictor keeps the base lr (no cosine decay), as SimSiam's recipe

    def check(self, where: str) -> None:
        for name in ("proj_dim", "pred_dim"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")


@dataclass
class DINOConfig:
    """DINO (Caron et al., ICCV 2021): self-distillation of a momentum teacher into a student over multi-crop views,
    with a centred and sharpened teacher."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 65536
    use_bn_in_head: bool = False
    norm_last_layer: bool = True  # the last layer's weight norm fixed at 1
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04  # linear from this to teacher_temp over warmup_teacher_temp_epochs
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    momentum: float = 0.996  # the teacher's EMA coefficient; cosine: rises to 1 by the end of training
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    freeze_last_layer_epochs: int = 1
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])  # ResNet-50 recipe: [0.14, 1]
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])  # ResNet-50 recipe: [0.05, 0.14]
    local_crops: int = 8
    local_size: int = 96  # pixels at 224, scaled with data.image_size

    def check(self, where: str) -> None:
        for name in ("hidden_dim", "bottleneck_dim", "out_dim"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            _require(getattr(self, name) > 0, f"{where}.{name}", getattr(self, name), "a positive number")
        for name in ("warmup_teacher_temp_epochs", "freeze_last_layer_epochs", "local_crops"):
            _require(getattr(self, name) >= 0, f"{where}.{name}", getattr(self, name), "an integer >= 0")
        for name in ("center_momentum", "momentum"):
            _require(0 <= getattr(self, name) <= 1, f"{where}.{name}", getattr(self, name), "a number in [0, 1]")
        for name in ("global_scale", "local_scale"):
            _require_scale(getattr(self, name), f"{where}.{name}")
        _require(self.local_size >= 1, f"{where}.local_size", self.local_size, "an integer >= 1 (pixels at 224)")


@dataclass
class MAEConfig:
    """MAE (He et al., CVPR 2022): the light Transformer decoder that sees encoded visible tokens + mask tokens."""

    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    # UM-MAE's secondary masking (0.25 with its uniform masking): this share of the visible tokens is replaced by a
    # learnable token (with its position) inside the encoder, and not reconstructed
    secondary_ratio: float = 0.0

    def check(self, where: str) -> None:
        _require(
            0 <= self.secondary_ratio < 1, f"{where}.secondary_ratio", self.secondary_ratio, "a fraction in [0, 1)"
        )
        for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")
        _require(
            self.decoder_dim % self.decoder_heads == 0 and self.decoder_dim % 4 == 0,
            f"{where}.decoder_dim",
            self.decoder_dim,
            f"a multiple of decoder_heads={self.decoder_heads} and of 4 (its 2D sin-cos position embedding)",
        )


@dataclass
class RMAEConfig:
    """R-MAE, the relaxed MAE of the occlusion-invariance paper (Eq. 8): branch 1 sees the visible patches M and is
    pulled towards branch 2's prediction on the region it does not see; branch 2 reconstructs that region."""

    weight: float = 1.0  # lambda: the weight of branch 2's reconstruction term
    # complement: branch 2 sees exactly what branch 1 does not (the paper's R-MAE); independent: its own random mask
    # at branch2_ratio, the loss on what branch 1 does not see and branch 2 does; full: the whole image (Table 1)
    branch2: Literal["complement", "independent", "full"] = "complement"
    branch2_ratio: float = 0.25
    stop_gradient: Literal["none", "branch1", "branch2"] = "none"  # a branch whose prediction is a fixed target

    def check(self, where: str) -> None:
        _require(self.weight >= 0, f"{where}.weight", self.weight, "a number >= 0")
        _require(0 < self.branch2_ratio < 1, f"{where}.branch2_ratio", self.branch2_ratio, "a fraction in (0, 1)")


@dataclass
class CMAEConfig:
    """C-MAE, the contrastive MAE of the occlusion-invariance paper (Eqs. 9-11): an online encoder sees the visible
    patches, an EMA target encoder their complement, and s = cos(q(p(z)), p'(z')) is trained by InfoNCE."""

    hidden_dim: int = 2048  # projector and predictor: 2-layer GELU MLPs (the paper's ViT-B sizes)
    out_dim: int = 768
    mlp_bn: bool = False  # BatchNorm after the MLPs' hidden layer (unspecified in the paper)
    temperature: float = 0.2
    loss: Literal["infonce", "byol"] = "infonce"  # byol: the normalised L2, 2 - 2 cos
    level: Literal["token", "instance"] = "token"  # per patch token (CNN: per position), or per image
    instance_pool: Literal["cls", "mean"] = "cls"  # a ViT's image: its class token or its patch tokens' mean
    negatives: Literal["image", "batch"] = "image"  # per-token InfoNCE: the other tokens of the image, or of the batch
    symmetric: bool = False  # also the swapped pair: online on the complement, target on the visible patches
    momentum: float = 0.996  # the target encoder's EMA coefficient
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from momentum up to 1 over training

    def check(self, where: str) -> None:
        for name in ("hidden_dim", "out_dim"):
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")
        _require(self.temperature > 0, f"{where}.temperature", self.temperature, "a positive number")
        _require(0 <= self.momentum <= 1, f"{where}.momentum", self.momentum, "a number in [0, 1]")


# Joint-embedding methods: they learn from augmented views of whole images, without a mask
JOINT_EMBEDDING_METHODS = ("mocov3", "simclr", "byol", "simsiam", "dino")

# Backbones run as Vision Transformers (timm VisionTransformer); everything else is run stage by stage as a CNN.
VIT_PREFIXES = ("vit_", "deit_", "deit3_")


def is_vit(backbone: str) -> bool:
    return backbone.startswith(VIT_PREFIXES)


def hog_cell_for(image_size: int) -> int:
    """MaskFeat's HOG cell (8 px at its 224 px input) scaled with the input: 64 px -> 2 (at least 1)."""
    return max(1, round(8 * image_size / 224))


@dataclass
class ModelConfig:
    """The pretraining method and its backbone (a timm CNN or ViT name, or a preset: resnet_tiny, vit_tiny_p8).

    Fields set to ``auto`` take the method's own recipe when the config is loaded (the saved config shows the value):
    a2mim: mean fill, token added, focal L1 (CNN) or L1 (ViT) + focal frequency loss 0.5 (CNN) or 0.1 (ViT);
    simmim: zero fill, token replaces the features at stage 0, L1, no frequency loss;
    mae (ViT): the encoder sees visible patches only, MSE on masked patches; mocov3: two views, no masking;
    rmae: R-MAE's two complementary branches, on a ViT as MAE (visible tokens only), on a CNN as A2MIM (mean fill and
    token), its own squared-error loss (no frequency term); cmae: C-MAE's online and EMA target encoders on
    complementary masks, zero fill and a token replacing the masked patches (SimMIM style; none: a ViT drops them);
    simclr, byol, simsiam: two augmented views, no masking; dino: multi-crop views, no masking.
    """

    method: Literal["a2mim", "simmim", "mocov3", "mae", "rmae", "cmae", "simclr", "byol", "simsiam", "dino"] = "a2mim"
    backbone: str = "resnet_tiny"
    token_mode: Literal["auto", "add", "replace", "none"] = "auto"  # add: z + T * D(M); replace: SimMIM; none: no token
    token_gamma_init: float = 0.0  # > 0: the official "init" variant's learnable gamma on masked features
    decoder: Literal["pixel_shuffle", "conv"] = "pixel_shuffle"
    drop_path: float = 0.0  # stochastic depth (ViT finetuning uses 0.1)
    mocov3: MoCoV3Config = field(default_factory=MoCoV3Config)
    mae: MAEConfig = field(default_factory=MAEConfig)
    rmae: RMAEConfig = field(default_factory=RMAEConfig)
    cmae: CMAEConfig = field(default_factory=CMAEConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    simsiam: SimSiamConfig = field(default_factory=SimSiamConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)

    def check(self, where: str) -> None:
        _require(bool(self.backbone), f"{where}.backbone", self.backbone, "a timm model name or a preset")
        _require(self.token_gamma_init >= 0, f"{where}.token_gamma_init", self.token_gamma_init, "a number >= 0")
        _require(0 <= self.drop_path < 1, f"{where}.drop_path", self.drop_path, "a number in [0, 1)")
        _require(
            self.method != "mae" or is_vit(self.backbone),
            f"{where}.backbone",
            self.backbone,
            f"a Vision Transformer for model.method=mae (a name starting with {', '.join(VIT_PREFIXES)})",
        )
        self.mocov3.check(f"{where}.mocov3")
        self.mae.check(f"{where}.mae")
        self.rmae.check(f"{where}.rmae")
        self.cmae.check(f"{where}.cmae")
        for name in ("simclr", "byol", "simsiam", "dino"):
            getattr(self, name).check(f"{where}.{name}")


@dataclass
class MaskStrategyConfig:
    """One masking strategy: square patches of ``patch_size`` pixels, ``ceil(ratio * n_patches)`` of them masked."""

    patch_size: int = 32
    ratio: float = 0.6
    stage: int | Literal["auto"] = "auto"  # where the token enters; auto: CNN deepest stage whose stride divides
    # the patch, ViT 0 (after the patch embedding); SimMIM 0
    weight: float = 1.0  # relative probability of this strategy under mixed masking
    kind: Literal["random", "blockwise", "uniform"] = "random"  # uniform: UM-MAE, one visible cell per 2x2 block

    def check(self, where: str) -> None:
        _require(self.patch_size >= 1, f"{where}.patch_size", self.patch_size, "an integer >= 1 (pixels)")
        _require(0 < self.ratio < 1, f"{where}.ratio", self.ratio, "a fraction in (0, 1)")
        _require(self.stage == "auto" or self.stage >= 0, f"{where}.stage", self.stage, "'auto' or a stage >= 0")
        _require(self.weight > 0, f"{where}.weight", self.weight, "a positive number")


@dataclass
class MaskingConfig:
    """How images are masked: one strategy, or several mixed per batch (the Mix-and-Mask paper) or per sample."""

    strategies: list[MaskStrategyConfig] = field(default_factory=lambda: [MaskStrategyConfig()])
    mix: Literal["per_batch", "per_sample"] = "per_batch"
    max_stage: int = 3
    downsample: Literal["exact", "area"] = "exact"  # area: any patch/stage pairing, cell masked if >= half masked
    fill: Literal["auto", "mean", "zero", "none"] = "auto"  # what masked input pixels become (auto: by method)

    def check(self, where: str) -> None:
        _require(len(self.strategies) >= 1, f"{where}.strategies", self.strategies, "at least one strategy")
        for i, strategy in enumerate(self.strategies):
            strategy.check(f"{where}.strategies[{i}]")
        _require(self.max_stage >= 0, f"{where}.max_stage", self.max_stage, "a stage >= 0")


@dataclass
class LossConfig:
    """``L = L_spa + freq_weight * L_freq``: masked spatial loss plus the focal frequency loss (``auto``: by method).

    ``target: hog`` predicts MaskFeat's HOG features of the masked patches instead of their pixels (a2mim, simmim,
    mae; ``mixmask.targets``): MSE on masked patches only, so ``spatial`` resolves to l2 and ``freq_weight`` to 0.
    """

    target: Literal["pixels", "hog"] = "pixels"
    hog_cell: int | Literal["auto"] = "auto"  # HOG cell in pixels; auto: MaskFeat's 8 at 224 px, scaled with the input
    spatial: Literal["auto", "l1", "focal_l1", "l2"] = "auto"  # focal_l1: the official A2MIM ResNet-50 setting
    focal_alpha: float = 0.2
    focal_gamma: float = 1.0
    freq_weight: float | Literal["auto"] = "auto"  # lambda; 0 turns the frequency loss off
    freq_focal: bool = True  # false: every frequency weighs 1 (the ablation "L_freq without weights")
    freq_alpha: float = 1.0
    freq_unmasked: Literal["prediction", "mixed", "target"] = "mixed"  # what unmasked pixels show before the FFT
    freq_unmasked_weight: float | Literal["auto"] = "auto"  # 1e-3 on CNNs, 0 on ViTs (official configs)
    norm_pix: bool = False  # MAE: targets are patches normalised by their own mean and variance

    def check(self, where: str) -> None:
        _require(
            self.hog_cell == "auto" or self.hog_cell >= 1,
            f"{where}.hog_cell",
            self.hog_cell,
            "'auto' or an integer >= 1",
        )
        _require(
            self.freq_weight == "auto" or self.freq_weight >= 0,
            f"{where}.freq_weight",
            self.freq_weight,
            "a number >= 0",
        )
        _require(self.freq_alpha > 0, f"{where}.freq_alpha", self.freq_alpha, "a positive number")
        _require(self.focal_alpha > 0, f"{where}.focal_alpha", self.focal_alpha, "a positive number")
        _require(
            self.freq_unmasked_weight == "auto" or 0 <= self.freq_unmasked_weight <= 1,
            f"{where}.freq_unmasked_weight",
            self.freq_unmasked_weight,
            "a number in [0, 1]",
        )


@dataclass
class OptimConfig:
    """AdamW, LARS (MoCo v3's and BYOL's ResNet optimiser) or SGD with momentum (SimSiam, DINO's ResNet-50), with
    per-iteration linear warmup then cosine decay to ``min_lr``."""

    name: Literal["adamw", "lars", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # a cosine from weight_decay to this over training (DINO: 0.04 -> 0.4)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # LARS and SGD
    scale_lr: bool = False  # true: lr * total_batch / lr_base_batch
    lr_base_batch: int = 512
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    clip_grad: float = 0.0  # max gradient norm; 0 = no clipping
    token_lr_scale: float = 0.1  # mask tokens learn at 0.1 x lr, as in the official code

    def check(self, where: str) -> None:
        _require(self.lr > 0, f"{where}.lr", self.lr, "a positive learning rate")
        _require(self.weight_decay >= 0, f"{where}.weight_decay", self.weight_decay, "a number >= 0")
        _require(
            self.weight_decay_end is None or self.weight_decay_end >= 0,
            f"{where}.weight_decay_end",
            self.weight_decay_end,
            "a number >= 0, or null (constant weight decay)",
        )
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{where}.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        _require(self.eps > 0, f"{where}.eps", self.eps, "a positive number")
        _require(0 <= self.momentum < 1, f"{where}.momentum", self.momentum, "a number in [0, 1)")
        _require(self.lr_base_batch >= 1, f"{where}.lr_base_batch", self.lr_base_batch, "an integer >= 1")
        _require(self.warmup_epochs >= 0, f"{where}.warmup_epochs", self.warmup_epochs, "a number >= 0")
        _require(0 <= self.min_lr <= self.lr, f"{where}.min_lr", self.min_lr, f"a number in [0, lr={self.lr}]")
        _require(self.clip_grad >= 0, f"{where}.clip_grad", self.clip_grad, "a number >= 0 (0: off)")
        _require(self.token_lr_scale > 0, f"{where}.token_lr_scale", self.token_lr_scale, "a positive number")


@dataclass
class TrainConfig:
    """The run: length, batch, seed, device and precision, checkpoints, logs, where the run folder goes."""

    epochs: int = 20
    batch_size: int = 64  # per process
    accum_steps: int = 1
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: Literal["auto"] | bool = "auto"
    # torch.compile the model (whole, static shapes: batches are full, masks are drawn outside it); the first steps
    # compile, a new batch size (an unreadable image dropped) or mask stage compiles another graph
    compile: bool = False
    checkpoint_every_steps: int = 0  # 0: a checkpoint at the end of every epoch only
    keep_checkpoints: int = 2  # the newest N checkpoints are kept: a damaged newest one falls back to the one before
    log_every_steps: int = 10
    reconstruction_every_epochs: int = 5
    out_dir: str = "runs"
    name: str = ""  # run folder name; empty: derived from the config and the time

    def check(self, where: str) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "log_every_steps", "keep_checkpoints"):
            value = getattr(self, name)
            _require(value >= 1, f"{where}.{name}", value, "an integer >= 1")
        for name in ("checkpoint_every_steps", "reconstruction_every_epochs"):
            value = getattr(self, name)
            _require(value >= 0, f"{where}.{name}", value, "an integer >= 0 (0: off)")
        _require(bool(self.out_dir), f"{where}.out_dir", self.out_dir, "a folder for run folders")
        _require("/" not in self.name, f"{where}.name", self.name, "a folder name without '/'")


@dataclass
class FinetuneConfig:
    """Supervised training of a classifier on the backbone: full finetuning, a linear probe or a kNN classifier.

    ``init`` is where the backbone's weights come from: empty for random initialisation, a pretraining run folder
    (its newest intact checkpoint), or a weights file (``mixmask export`` output, timm or torchvision ResNet weights as
    ``.safetensors`` or ``.pth``). The classifier head always starts fresh.
    """

    init: str = ""
    probe: Literal["none", "linear", "knn"] = "none"  # none: finetune everything; linear: frozen backbone
    label_smoothing: float = 0.0
    layer_decay: float = 1.0  # < 1: stage k learns at lr * layer_decay ** (depth - k); 1: off
    knn_k: int = 20
    knn_temperature: float = 0.07
    label_fraction: float = 1.0  # < 1: train on this class-balanced share of the labels, chosen by train.seed

    def check(self, where: str) -> None:
        _require(0 <= self.label_smoothing < 1, f"{where}.label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _require(0 < self.label_fraction <= 1, f"{where}.label_fraction", self.label_fraction, "a number in (0, 1]")
        _require(0 < self.layer_decay <= 1, f"{where}.layer_decay", self.layer_decay, "a number in (0, 1]")
        _require(self.knn_k >= 1, f"{where}.knn_k", self.knn_k, "an integer >= 1")
        _require(self.knn_temperature > 0, f"{where}.knn_temperature", self.knn_temperature, "a positive number")


@dataclass
class EvalConfig:
    """Which evaluations ``mixmask evaluate`` runs on a finetuned run; each is optional and saved with its settings
    in results.json. On ShapesX, factors are scored on the test split and shape bias on the cue-conflict split;
    accuracy, occlusion and CKA use the validation split."""

    run: str = ""  # the run folder to evaluate (``mixmask evaluate RUN_DIR`` sets it)
    batch_size: int = 256
    max_images: int = 0  # evaluate on the first N validation images only (0: all); for quick looks
    topk: list[int] = field(default_factory=lambda: [1, 5])
    imagenet_x: bool = True
    which_factor: Literal["top", "multi"] = "top"
    filter_prototypes: bool = True
    occlusion: bool = True
    occlusion_ratios: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(10)])
    occlusion_patch: int = 16  # pixels at 224 px, scaled with the input size
    occlusion_fill: Literal["zero", "mean"] = "zero"  # zero: black pixels; mean: the image's mean colour
    min_factor_images: int = 30  # factors with fewer images are flagged as too thin to read
    seed: int = 0  # occlusion masks depend on (seed, image index) only: every model sees the same occlusions
    # probes of the frozen encoder (the pretrained one, or a random initialisation for scratch) on features computed
    # once: linear (logistic regression) and/or knn (finetune.knn_k, finetune.knn_temperature)
    probes: list[Literal["linear", "knn"]] = field(default_factory=list)
    probe_images: int = 0  # labelled training images the probes learn from (0: the whole train split)
    probe_weight_decay: float = 1e-4
    # multi-order interactions J(m) of the finetuned classifier (mixmask.analysis.interactions), on the images among
    # the first interaction_images validation images that it classifies correctly (the report intersects them
    # across variants); each image's pairs and contexts are drawn from (eval.seed, its index)
    interactions: bool = False
    interaction_images: int = 32
    interaction_grid: int = 4
    interaction_pairs: int = 8
    interaction_contexts: int = 16
    # feature-map frequency and variance of the encoder before finetuning (mixmask.analysis.frequency)
    frequency: bool = False
    frequency_images: int = 64
    # the input size for it (0: data.image_size): feature maps under 8x8 are left out, so small inputs lose the late
    # blocks; ShapesX renders at any size, class folders are resized
    frequency_image_size: int = 0
    cka: bool = True
    cka_images: int = 1000
    cka_debiased: bool = False
    # also the CKA of the encoder before finetuning (the pretraining's, or scratch's random init): the report shows
    # both; evaluating a pretraining run measures its encoder's CKA in any case
    cka_encoder: bool = False
    # pixels: occluded cells are filled (eval.occlusion_fill); tokens (ViTs): the occluded patches' tokens are dropped
    # from the encoder's input, as MAE's encoder drops masked patches; the cells are then the ViT's patches
    cka_drop: Literal["pixels", "tokens"] = "pixels"
    shape_bias: bool = True
    # ImageNet models: the cue-conflict stimuli of Geirhos et al. in their public layout, <category>/<name>.png
    # (scored by the 16-category protocol); ShapesX uses its own cue-conflict split
    cue_conflict_root: str = ""
    # masked-pixel PSNR of the pretraining per strategy, per image on the first reconstruction_images validation images
    # (the report compares models image by image), and its figure on 8 of them
    reconstruction: bool = True
    reconstruction_images: int = 500

    def check(self, where: str) -> None:
        _require(self.batch_size >= 1, f"{where}.batch_size", self.batch_size, "an integer >= 1")
        _require(len(self.topk) >= 1 and all(k >= 1 for k in self.topk), f"{where}.topk", self.topk, "integers >= 1")
        _require(
            all(0 <= r < 1 for r in self.occlusion_ratios),
            f"{where}.occlusion_ratios",
            self.occlusion_ratios,
            "fractions in [0, 1)",
        )
        _require(self.occlusion_patch >= 1, f"{where}.occlusion_patch", self.occlusion_patch, "an integer >= 1")
        for name in ("max_images", "min_factor_images", "probe_images", "frequency_image_size"):
            _require(getattr(self, name) >= 0, f"{where}.{name}", getattr(self, name), "an integer >= 0")
        _require(self.cka_images >= 4, f"{where}.cka_images", self.cka_images, "an integer >= 4")
        _require(
            len(set(self.probes)) == len(self.probes), f"{where}.probes", self.probes, "linear and/or knn, once each"
        )
        _require(self.probe_weight_decay >= 0, f"{where}.probe_weight_decay", self.probe_weight_decay, "a number >= 0")
        for name in (
            "interaction_images", "interaction_pairs", "interaction_contexts", "frequency_images",
            "reconstruction_images",
        ):  # fmt: skip
            _require(getattr(self, name) >= 1, f"{where}.{name}", getattr(self, name), "an integer >= 1")
        _require(self.interaction_grid >= 2, f"{where}.interaction_grid", self.interaction_grid, "an integer >= 2")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolve_auto(self) -> None:
        """Replace the ``auto`` fields of masking and loss with the method's recipe (explicit values win)."""
        vit = is_vit(self.model.backbone)
        recipe = {
            "a2mim": {"fill": "mean", "token_mode": "add", "spatial": "l1" if vit else "focal_l1"},
            "simmim": {"fill": "zero", "token_mode": "replace", "spatial": "l1"},
            "mae": {"fill": "none", "token_mode": "none", "spatial": "l2"},
            **dict.fromkeys(
                JOINT_EMBEDDING_METHODS, {"fill": "none", "token_mode": "none", "spatial": "l1"}
            ),  # no mask, no reconstruction: these fields are unused
            "cmae": {"fill": "zero", "token_mode": "replace", "spatial": "l2"},
            "rmae": {"fill": "none", "token_mode": "none", "spatial": "l2"}
            if vit
            else {"fill": "mean", "token_mode": "add", "spatial": "l2"},
        }[self.model.method]
        recipe["freq_weight"] = (0.1 if vit else 0.5) if self.model.method == "a2mim" else 0.0
        recipe["freq_unmasked_weight"] = 0.0 if vit else 1e-3
        if self.loss.target == "hog":  # MaskFeat: MSE on the masked patches' HOG, nothing else
            recipe.update(spatial="l2", freq_weight=0.0)
        recipe["hog_cell"] = hog_cell_for(self.data.image_size)
        for section, name in (
            (self.masking, "fill"),
            (self.model, "token_mode"),
            (self.loss, "spatial"),
            (self.loss, "freq_weight"),
            (self.loss, "freq_unmasked_weight"),
            (self.loss, "hog_cell"),
        ):
            if getattr(section, name) == "auto":
                setattr(section, name, recipe[name])

    def check(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).check(section.name)
        vit = is_vit(self.model.backbone)
        if self.model.method == "cmae":
            _require(
                self.model.token_mode in ("replace", "none"),
                "model.token_mode",
                self.model.token_mode,
                "replace or none for model.method=cmae (SimMIM-style token, or none)",
            )
            _require(
                self.model.token_mode == "replace" or self.model.cmae.level == "instance" or not vit,
                "model.cmae.level",
                self.model.cmae.level,
                "instance when a ViT drops its masked tokens (model.token_mode=none): the views share no token",
            )
        _require(
            not (self.data.input_augment and self.model.method in JOINT_EMBEDDING_METHODS),
            "data.input_augment",
            self.data.input_augment,
            f"[] for model.method={self.model.method} (its views have their own augmentations)",
        )
        if self.model.method == "rmae":  # R-MAE's Eq. 8 is its loss: squared errors, no other term
            _require(self.loss.spatial == "l2", "loss.spatial", self.loss.spatial, "l2 for model.method=rmae (Eq. 8)")
            _require(self.loss.freq_weight == 0, "loss.freq_weight", self.loss.freq_weight, "0 for model.method=rmae")
            _require(not self.loss.norm_pix, "loss.norm_pix", self.loss.norm_pix, "false for model.method=rmae")
        if self.loss.target == "hog":  # MaskFeat's loss: MSE on the HOG of masked patches (the frequency loss and
            # norm_pix are about pixels); the decoder of a2mim/simmim and MAE's predict it
            _require(
                self.model.method in ("a2mim", "simmim", "mae"),
                "loss.target",
                self.loss.target,
                f"pixels for model.method={self.model.method} (HOG targets: a2mim, simmim or mae)",
            )
            hog = "for loss.target=hog (MaskFeat: MSE on the masked patches' HOG)"
            _require(self.loss.spatial == "l2", "loss.spatial", self.loss.spatial, f"l2 or auto {hog}")
            _require(self.loss.freq_weight == 0, "loss.freq_weight", self.loss.freq_weight, f"0 or auto {hog}")
            _require(not self.loss.norm_pix, "loss.norm_pix", self.loss.norm_pix, f"false {hog}")
        _require(
            self.eval.cka_drop == "pixels" or is_vit(self.model.backbone),
            "eval.cka_drop",
            self.eval.cka_drop,
            f"pixels: a CNN ({self.model.backbone}) has no tokens to drop",
        )
        # Rules across sections. (The patch/stage stride rule needs the backbone's strides: the model checks it.)
        size = self.data.image_size
        for i, strategy in enumerate(self.masking.strategies):
            _require(
                size % strategy.patch_size == 0,
                f"masking.strategies[{i}].patch_size",
                strategy.patch_size,
                f"a divisor of data.image_size={size} (e.g. {', '.join(map(str, _divisors(size)))})",
            )
            if self.loss.target == "hog":  # a mask patch's target is its cells' histograms: whole cells only
                cell = self.loss.hog_cell
                _require(
                    strategy.patch_size % cell == 0,
                    f"masking.strategies[{i}].patch_size",
                    strategy.patch_size,
                    f"a multiple of loss.hog_cell={cell} for loss.target=hog (HOG cells of 8 px at 224 px, scaled "
                    "with data.image_size; or set loss.hog_cell)",
                )
            if strategy.kind == "uniform":  # one visible cell in each 2x2 block: ratio 0.75 on an even grid
                _require(
                    strategy.ratio == 0.75, f"masking.strategies[{i}].ratio", strategy.ratio, "0.75 for kind uniform"
                )
                _require(
                    (size // strategy.patch_size) % 2 == 0,
                    f"masking.strategies[{i}].patch_size",
                    strategy.patch_size,
                    f"a patch that cuts data.image_size={size} into an even number of cells for kind uniform",
                )


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n) if n % d == 0][:8]


# --------------------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of ({_type_name(typing.get_args(tp)[0])})"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config field `{where}`: got {value!r}; expected {_type_name(tp)}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _convert(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"config field `{where}`: got {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise ConfigError(f"config field `{where}`: got {value!r}; expected one of {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config field `{where}`: got {value!r}; expected {_type_name(tp)}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"config field `{where}`: got {value!r}; expected {_type_name(tp)}")


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            path = f"{where}.{key}" if where else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"unknown config field `{path}`{hint} (known here: {', '.join(names)})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, data, "")
    cfg.resolve_auto()
    cfg.check()
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------------- files


def merge_dicts(base: dict, update: dict) -> dict:
    """``update`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what a YAML parse error is, in one line."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def parse_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """The YAML document in ``path``; a missing, unreadable or malformed file (or a folder) raises a one-line
    ``ConfigError`` saying which ``what`` and why."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file (not UTF-8); expected YAML") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(error)}") from None


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file, following ``base: other.yaml`` (relative to the file) into one merged dict."""
    path = Path(path)
    if path.is_file() and path.resolve() in _seen:
        raise ConfigError(f"config file {path} includes itself through `base:`")
    data = parse_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = merge_dicts(read_yaml(path.parent / base, (*_seen, path.resolve())), data)
    return data


def apply_override(data: dict, override: str) -> dict:
    """Apply one ``key.sub=value`` override; the value is read as YAML (``0.5``, ``true``, ``[4, 32]``...)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    data = copy.deepcopy(data)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = node[_list_index(node, part, key)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {override!r}: `{where}` is a value, not a section")
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key)] = value
    else:
        node[parts[-1]] = value
    return data


def _list_index(items: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override for `{where}`: {part!r} is not an index of a list of {len(items)} entries")
    return int(part)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Config:
    """Defaults (or ``base``, e.g. a run's saved config), then the YAML file (if any), then overrides; validated
    before it is returned."""
    data = merge_dicts(to_dict(Config()), base or {})
    if path is not None:
        data = merge_dicts(data, read_yaml(path))
    for override in overrides:
        data = apply_override(data, override)
    return from_dict(data)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config atomically; ``load_config(path)`` gives it back."""
    from mixmask import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# resolved by mixmask {__version__}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path
