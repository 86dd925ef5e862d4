"""A classifier for finetuning and evaluation: the backbone with timm's own head (global pool + linear), plus loading
backbone weights from a pretraining run, an exported file, or timm / torchvision checkpoints.

The whole network is one timm model (``classifier.backbone.model``), so its state dict has timm's names and an export
is that state dict as it is.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mixmask._compat import timm
from mixmask.config import ConfigError
from mixmask.engine.checkpoint import MODEL_FILE, has_checkpoint, latest_intact_checkpoint
from mixmask.models.backbone import build_backbone, create_timm_model


class Classifier(nn.Module):
    """``backbone`` stage by stage, then timm's head. ``frozen=True`` is the linear probe: the backbone stays in eval
    mode (BatchNorm statistics fixed), has no gradients, and only the head learns. ``image_size`` matters for ViTs
    (their position embeddings); ``drop_path`` is timm's stochastic depth."""

    def __init__(
        self, backbone: str, num_classes: int, frozen: bool = False, image_size: int = 224, drop_path: float = 0.0
    ):
        super().__init__()
        extra = {"drop_path_rate": drop_path} if drop_path > 0 else {}
        self.backbone = build_backbone(backbone, image_size, num_classes=num_classes, **extra)
        self.frozen = frozen
        if frozen:
            for name, param in self.backbone.model.named_parameters():
                param.requires_grad = self.is_head(name)

    @property
    def timm_model(self) -> nn.Module:
        return self.backbone.model

    def is_head(self, timm_param_name: str) -> bool:
        head = self.timm_model.pretrained_cfg.get("classifier", "fc")
        return timm_param_name.startswith(head + ".")

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
            self.timm_model.get_classifier().train(mode)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head (kNN, linear CKA)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.timm_model.forward_head(self.backbone(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.timm_model.get_classifier()(self.features(x))

    def layer_of(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: stage k -> k, the head (and a ViT's final norm) -> number of
        stages."""
        name = param_name.removeprefix("backbone.model.")
        for k, modules in enumerate(self.backbone.stage_modules):
            if any(name == m or name.startswith(m + ".") for m in modules):
                return k
        return len(self.backbone.stage_modules)

    def group_matcher(self, coarse: bool = False):
        """timm's interface for layer-wise lr decay (``timm.optim.param_groups_layer_decay``): stage k learns at
        ``layer_decay ** (depth - k)``, the head at 1. Grouped by mixmask's stages (a ResNet's stem and layers, a
        ViT's patch embedding and blocks), whatever ``coarse`` says."""
        return self.layer_of

    def no_weight_decay(self) -> set[str]:
        """The timm model's own list (a ViT's position embedding and class token), under this module's names."""
        names = self.timm_model.no_weight_decay() if hasattr(self.timm_model, "no_weight_decay") else set()
        return {f"backbone.model.{name}" for name in names}


WEIGHTS_ACCEPTED = (
    "a .safetensors file, a weights-only .pth/.pt state dict (tensors only), a mixmask run folder or a "
    "`mixmask export` file"
)


class WeightsError(ValueError):
    """A weights file or folder that cannot be read; the message names it and what is accepted."""


_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, SafetensorError, zipfile.BadZipFile)


def _why_unreadable(path: Path, error: BaseException) -> str:
    """A short reason a weights file did not load: pickled objects (named), or a damaged or foreign file (torch's
    own message is many lines of advice to unpickle, which is exactly what must not happen here)."""
    if not isinstance(error, SafetensorError):
        find_unsafe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
        try:
            unsafe = find_unsafe(path) if find_unsafe else []
        except _LOAD_ERRORS:
            unsafe = []
        if unsafe:
            return f"it holds pickled Python objects ({', '.join(unsafe[:3])}), which are never loaded"
    if isinstance(error, SafetensorError):
        return f"not a whole safetensors file ({error})"
    return "not a readable PyTorch weights file (damaged, cut short, or another format)"


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or a ``.pth`` file, unwrapped as timm does; ``torch.load`` runs with
    ``weights_only=True`` (plus argparse.Namespace, as timm allows for its training checkpoints), so a file that
    needs anything more is refused, never run."""
    try:
        if path.suffix == ".safetensors":
            checkpoint: Any = load_file(path)
        else:
            allowed = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
            with allowed([argparse.Namespace]) if allowed else nullcontext():
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as error:
        raise WeightsError(
            f"cannot read weights from {path}: {_why_unreadable(path, error)}; expected {WEIGHTS_ACCEPTED}"
        ) from None
    except OSError as error:
        raise WeightsError(f"cannot read weights from {path}: {error.strerror or error}") from None
    if isinstance(checkpoint, dict):  # timm's order: EMA weights first, then a training checkpoint's model
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if checkpoint.get(key) is not None:
                checkpoint = checkpoint[key]
                break
    if not (
        isinstance(checkpoint, dict)
        and checkpoint
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in checkpoint.items())
    ):
        raise WeightsError(
            f"cannot read weights from {path}: it holds a {type(checkpoint).__name__}, not a state dict of named "
            f"tensors; expected {WEIGHTS_ACCEPTED}"
        )
    return timm.models.clean_state_dict(checkpoint)  # strips DDP / torch.compile prefixes


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone weights with timm names from a pretraining or finetuning run folder (its newest intact
    checkpoint), a ``mixmask export`` file, or a timm / torchvision checkpoint (``.safetensors``, or ``.pth`` read
    with ``weights_only``: nothing is unpickled). Anything else raises :class:`WeightsError` in one line."""
    path = Path(path)
    if path.is_dir():
        if not has_checkpoint(path):
            raise WeightsError(
                f"{path} is a folder without checkpoints, not a mixmask run; expected {WEIGHTS_ACCEPTED}"
            )
        state = load_file(latest_intact_checkpoint(path, weights_only=True) / MODEL_FILE)
        prefix = "backbone.model."  # A2MIM and Classifier both keep the timm model there
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    return _read_weights_file(path)


WRAPPER_PREFIXES = ("backbone.", "encoder.", "base_encoder.")  # openmixup / MAE / MoCo v3 checkpoints


def read_classifier_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A whole classifier's weights (head included) from a file (as ``read_weights`` reads files) or a run folder,
    with the usual wrapper prefixes taken off (``module.`` by timm; then ``backbone.``, ``encoder.``,
    ``base_encoder.`` wherever they start a key)."""
    weights = read_weights(path) if Path(path).is_dir() else _read_weights_file(Path(path))
    for prefix in WRAPPER_PREFIXES:
        weights = {k.removeprefix(prefix): v for k, v in weights.items()}
    return weights


def _misfit(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """What keeps ``given`` from loading into ``own``, naming a few keys of each kind; empty when it fits."""
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    mismatched = sorted(k for k in set(own) & set(given) if own[k].shape != given[k].shape)
    return "; ".join(
        f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched))
        if keys
    )


def load_classifier_weights(classifier: Classifier, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load a whole timm model (head included) strictly; one line naming the keys when it does not fit."""
    problems = _misfit(classifier.timm_model.state_dict(), weights)
    if problems:
        raise ConfigError(f"weights in {where} do not fit model {classifier.backbone.name!r}: {problems}")
    classifier.timm_model.load_state_dict(weights)


def classes_in(weights: dict[str, torch.Tensor], backbone: str) -> int:
    """Number of classes of the head in ``weights`` (timm names), 0 for a headless backbone."""
    head = create_timm_model(backbone).pretrained_cfg.get("classifier", "fc")
    return weights[f"{head}.weight"].shape[0] if f"{head}.weight" in weights else 0


def load_backbone_weights(classifier: Classifier, path: str | Path) -> dict[str, int]:
    """Load everything but the head from ``path``; the head keeps its fresh initialisation. Fails, naming keys,
    when the weights do not fit the backbone (another architecture, a missing stage, other shapes)."""
    try:
        weights = read_weights(path)
    except WeightsError as error:
        raise WeightsError(f"config field `finetune.init`: {error}") from None
    own = {k: v for k, v in classifier.timm_model.state_dict().items() if not classifier.is_head(k)}
    given = {k: v for k, v in weights.items() if not classifier.is_head(k)}
    problems = _misfit(own, given)
    if problems:
        raise ConfigError(
            f"config field `finetune.init`: weights in {path} do not fit model.backbone="
            f"{classifier.backbone.name!r}: {problems}"
        )
    classifier.timm_model.load_state_dict(given, strict=False)
    return {"loaded": len(given), "head_initialised": len(classifier.timm_model.state_dict()) - len(own)}
