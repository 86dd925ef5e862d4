"""Any timm CNN or ViT, run stage by stage, with a hook after every stage (where a mask token can enter).

Stage numbering follows the official A2MIM code. For ResNet: stage 0 = the stem output after max-pool (stride 4),
stage k = the output of residual layer k (ResNet-50 at 224: 0 -> 56x56x64, 1 -> 56x56x256, 2 -> 28x28x512,
3 -> 14x14x1024, 4 -> 7x7x2048). In general the stages are timm's ``feature_info`` points of stride >= 4, preceded by
the stem when the stem alone already reaches stride 4. ViTs (``ViTBackbone``): stage 0 = the patch embedding,
stage k = the output of block k; hooks see the patch tokens as a feature map, so mask-token code is the same for both.
The timm model is kept whole as ``self.model``, so its state dict keeps timm's parameter names (exported weights load
back into ``timm.create_model``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mixmask._compat import timm
from mixmask.config import ConfigError, is_vit

# Presets are timm entry points with overridden arguments, so exported weights load with timm alone:
# timm.create_model("resnet18", layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), ...) is resnet_tiny.
PRESETS: dict[str, tuple[str, dict]] = {
    # BasicBlock ResNet, layers 1-1-1-1, channels 32-64-128-256 (1.25 M parameters): the CPU workhorse
    "resnet_tiny": ("resnet18", {"layers": (1, 1, 1, 1), "channels": (32, 64, 128, 256)}),
    # ViT-Tiny (192 wide, 3 heads) with 8 px patches and 6 blocks (2.7 M parameters): a ViT a CPU trains at 64 px
    "vit_tiny_p8": ("vit_tiny_patch16_224", {"patch_size": 8, "depth": 6}),
}

Hook = Callable[[int, torch.Tensor], torch.Tensor]


def build_backbone(name: str, image_size: int = 224, **timm_kwargs) -> Backbone | ViTBackbone:
    """A ViT (for names ``vit_*``, ``deit_*``, ``deit3_*``; built for ``image_size``) or a CNN, run stage by stage."""
    if is_vit(name):
        return ViTBackbone(name, image_size, **timm_kwargs)
    return Backbone(name, **timm_kwargs)


def timm_name_and_args(name: str) -> tuple[str, dict]:
    """The timm entry point and extra arguments that build backbone ``name``."""
    return PRESETS.get(name, (name, {}))


def create_timm_model(name: str, num_classes: int = 0, **kwargs) -> nn.Module:
    """A preset or any timm model, randomly initialised (weights are loaded explicitly, never fetched)."""
    timm_name, preset_args = timm_name_and_args(name)
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(
            f"config field `model.backbone`: {name!r} is not a timm model or a preset "
            f"({', '.join(PRESETS)}); similar timm names: {', '.join(close) or 'none'}"
        )
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **preset_args, **kwargs)


def _module_walk(model: nn.Module) -> list[str]:
    """Dotted names of the model's top-level children in order, with one level of ``nn.Sequential`` flattened: the
    walk timm's feature extractors make to find ``feature_info`` points. timm keeps it private
    (``timm.models._features._module_list``), so it is written out here."""
    names = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            names.extend(f"{name}.{child_name}" for child_name, _ in child.named_children())
        else:
            names.append(name)
    return names


class Backbone(nn.Module):
    """Runs a timm CNN one stage at a time. ``strides[k]`` and ``channels[k]`` describe stage k's output."""

    def __init__(self, name: str, **timm_kwargs):
        super().__init__()
        self.name = name
        self.model = create_timm_model(name, **timm_kwargs)
        try:
            self.stage_modules = self._find_stages()
            self.strides, self.channels = self._measure()
        except ConfigError:
            raise
        except Exception as error:  # e.g. a transformer that wants a fixed input size and returns token sequences
            raise ConfigError(
                f"config field `model.backbone`: {name!r} cannot be run stage by stage as a CNN ({error})"
            ) from error

    def _find_stages(self) -> list[list[str]]:
        feature_info = getattr(self.model, "feature_info", None)
        if not feature_info:
            raise ConfigError(
                f"config field `model.backbone`: {self.name!r} has no timm feature_info, so its stages cannot be "
                "found; use a CNN such as resnet50, resnet18, convnext_tiny or regnety_016"
            )
        points = [f["module"] for f in feature_info if f["reduction"] >= 4]
        modules = _module_walk(self.model)

        def belongs(dotted: str, point: str) -> bool:
            return dotted == point or dotted.startswith(point + ".")

        # a stage runs from the end of the previous one to the last module of its feature point
        ends: list[int] = []
        for point in points:
            owned = [i for i, dotted in enumerate(modules) if belongs(dotted, point)]
            if not owned or (ends and owned[-1] <= ends[-1]):
                raise ConfigError(f"config field `model.backbone`: cannot split {self.name!r} into stages at {points}")
            ends.append(owned[-1])
        starts = [0] + [end + 1 for end in ends[:-1]]
        stages = [modules[start : end + 1] for start, end in zip(starts, ends, strict=True)]
        # stem as stage 0 when it already reaches stride 4 (ResNet: conv, bn, act, max-pool)
        first = stages[0]
        stem = [m for m in first if not belongs(m, points[0])]
        if stem:
            stride = self._stride_after(stem)
            if stride == 4:
                stages = [stem, [m for m in first if belongs(m, points[0])], *stages[1:]]
        return stages

    def _module(self, dotted: str) -> nn.Module:
        return self.model.get_submodule(dotted)

    @torch.no_grad()
    def _stride_after(self, names: list[str], size: int = 64) -> int:
        x = torch.zeros(1, 3, size, size)
        training = self.model.training
        self.model.eval()
        for name in names:
            x = self._module(name)(x)
        self.model.train(training)
        return size // x.shape[-1]

    @torch.no_grad()
    def _measure(self, size: int = 64) -> tuple[list[int], list[int]]:
        training = self.model.training
        self.model.eval()
        outputs = self.forward_stages(torch.zeros(1, 3, size, size))
        self.model.train(training)
        if any(o.ndim != 4 for o in outputs):
            raise ConfigError(
                f"config field `model.backbone`: {self.name!r} is not a CNN (its stages are not feature maps)"
            )
        return [size // o.shape[-1] for o in outputs], [o.shape[1] for o in outputs]

    def forward(self, x: torch.Tensor, hook: Hook | None = None) -> torch.Tensor:
        """The last stage's feature map (what timm's ``forward_head`` takes); ``hook(k, features)`` may replace
        stage k's output before stage k+1."""
        for k, names in enumerate(self.stage_modules):
            for name in names:
                x = self._module(name)(x)
            if hook is not None:
                x = hook(k, x)
        return x

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """``forward``'s output as a (B, C, h, w) map for a decoder: a CNN's is one already."""
        return features

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return forward_stages(self, x)


def forward_stages(backbone: Backbone | ViTBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's output as a feature map (for CKA and feature analyses)."""
    outputs: list[torch.Tensor] = []

    def keep(k: int, features: torch.Tensor) -> torch.Tensor:
        outputs.append(features)
        return features

    backbone(x, keep)
    return outputs


class ViTBackbone(nn.Module):
    """A timm VisionTransformer with ``Backbone``'s interface. Stage 0 is the patch embedding before the position
    embedding (where A2MIM and SimMIM put the mask token on ViTs), stage k the output of block k. Every stage has the
    patch's stride and the embedding width. ``forward`` returns the normalised token sequence (class token first),
    which timm's ``forward_head`` pools."""

    def __init__(self, name: str, image_size: int = 224, **timm_kwargs):
        super().__init__()
        self.name = name
        self.model = create_timm_model(name, img_size=image_size, **timm_kwargs)
        if not isinstance(self.model, timm.models.VisionTransformer):
            raise ConfigError(f"config field `model.backbone`: {name!r} is not a timm VisionTransformer")
        if getattr(self.model, "dynamic_img_size", False):
            raise ConfigError(f"config field `model.backbone`: {name!r} with dynamic_img_size is not supported")
        depth = len(self.model.blocks)
        self.patch_size = self.model.patch_embed.patch_size[0]
        self.grid = tuple(self.model.patch_embed.grid_size)
        self.strides = [self.patch_size] * (depth + 1)
        self.channels = [self.model.embed_dim] * (depth + 1)
        stem = ["patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre"]
        self.stage_modules = [stem, *[[f"blocks.{i}"] for i in range(depth)]]

    def to_map(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C) -> (B, C, h, w)."""
        return patches.transpose(1, 2).unflatten(2, self.grid)

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        return self.to_map(features[:, self.model.num_prefix_tokens :])

    def forward(self, x: torch.Tensor, hook: Hook | None = None) -> torch.Tensor:
        vit = self.model
        x = vit.patch_embed(x)
        if hook is not None:
            x = hook(0, self.to_map(x)).flatten(2).transpose(1, 2)
        # timm has no public call for "class/register tokens + position embedding" alone (forward_features runs the
        # whole encoder), and the mask token must enter between the patch embedding and it: so its _pos_embed
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        prefix = vit.num_prefix_tokens
        for k, block in enumerate(vit.blocks, start=1):
            x = block(x)
            if hook is not None:
                patches = hook(k, self.to_map(x[:, prefix:])).flatten(2).transpose(1, 2)
                x = torch.cat([x[:, :prefix], patches], dim=1)
        return vit.norm(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return forward_stages(self, x)

    def forward_any_size(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` (without hooks) on an input of any size the patch divides, the position embedding resampled
        to its grid (bicubic, as DINO's ``interpolate_pos_encoding`` and timm's ``dynamic_img_size``): DINO's small
        local crops."""
        vit = self.model
        if tuple(x.shape[-2:]) == tuple(vit.patch_embed.img_size):
            return self(x)
        patches = vit.patch_embed.proj(x)
        grid = tuple(patches.shape[-2:])
        patches = vit.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        prefix = [t.expand(len(x), -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        pos = timm.layers.resample_abs_pos_embed(
            vit.pos_embed, new_size=grid, old_size=self.grid, num_prefix_tokens=0 if vit.no_embed_class else len(prefix)
        )
        if vit.no_embed_class:  # DeiT-3 style: positions on the patches only
            tokens = torch.cat([*prefix, patches + pos], dim=1)
        else:
            tokens = torch.cat([*prefix, patches], dim=1) + pos
        return vit.norm(vit.blocks(vit.norm_pre(vit.pos_drop(tokens))))

    def forward_visible(self, x: torch.Tensor, keep: torch.Tensor, prefix_tokens: bool = False) -> list[torch.Tensor]:
        """The encoder on the patches ``keep`` (B, V) only, the others dropped from its input as MAE's encoder drops
        masked patches (position embeddings added before the drop): each stage's visible patch tokens (B, V, C);
        with ``prefix_tokens``, the blocks' outputs keep the class (and register) tokens in front."""
        vit = self.model

        def visible(tokens: torch.Tensor) -> torch.Tensor:
            return torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))

        patches = vit.patch_embed(x)
        stages = [visible(patches)]
        tokens = vit._pos_embed(patches)  # the prefix tokens first, every token with its position
        prefix = vit.num_prefix_tokens
        x = vit.norm_pre(torch.cat([tokens[:, :prefix], visible(tokens[:, prefix:])], dim=1))
        for block in vit.blocks:
            x = block(x)
            stages.append(x if prefix_tokens else x[:, prefix:])
        return stages
