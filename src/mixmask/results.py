"""Typed records of what a run is and what it measured: the tasks write them, the store keeps them, the report reads
them. Nothing downstream re-derives them from configs.

- ``Strategy`` and ``Method``: what was pretrained (method, backbone, each masking strategy with the stage its token
  actually entered) and its one human label. A pretraining run writes its ``Method`` once, at the start, into
  ``run.json``; a sweep records each variant's planned ``Method`` when it registers the variant.
- ``RunInfo``: a run folder's ``run.json`` (task, mixmask version, creation time, seed, method).
- ``StageRun``: one stage of a study variant as the store and the report see it (status, folder, timing, the run's
  ``results.json``).

Records are plain frozen dataclasses with ``to_json`` / ``from_json``; ``from_json`` refuses unknown or missing
fields with one line (``RecordError``) instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mixmask.config import is_vit

METHOD_NAMES = {"a2mim": "A2MIM", "simmim": "SimMIM", "mae": "MAE", "mocov3": "MoCo v3"}


class RecordError(ValueError):
    """A record file that cannot be read as the record it should be."""


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}")
    missing = [
        f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise RecordError(f"{where}: {cls.__name__} field(s) missing: {', '.join(missing)}")
    return cls(**data)


@dataclass(frozen=True)
class Strategy:
    """One masking strategy as it ran: ``stage`` is where its token entered (None when no token enters)."""

    kind: str  # random | blockwise
    patch_size: int
    ratio: float
    stage: int | None
    weight: float = 1.0

    def label(self, with_stage: bool = True) -> str:
        """``patch 4 / 0.6 @ stage 1`` (``blockwise`` in front for BEiT-style blocks)."""
        text = ("blockwise " if self.kind == "blockwise" else "") + f"patch {self.patch_size} / {self.ratio}"
        return text + (f" @ stage {self.stage}" if with_stage and self.stage is not None else "")


@dataclass(frozen=True)
class Method:
    """What a run trains. ``name``: a pretraining method, or ``supervised`` for a classifier trained from ``init``
    (a weights file or folder; ``""`` = from scratch) without a pretraining stage of its own."""

    name: str
    backbone: str
    strategies: tuple[Strategy, ...] = ()
    mix: str = "per_batch"
    token: bool = False  # a mask token enters at each strategy's stage
    two_views: bool = False
    init: str = ""

    @property
    def vit(self) -> bool:
        return is_vit(self.backbone)

    def method_label(self) -> str:
        """``""`` for A2MIM on a CNN with its token (the study's default), else the method, ``, no token`` for the
        A2MIM ablation without one, and the backbone for ViTs: ``SimMIM``, ``MAE [vit_tiny_p8]``."""
        if self.name == "supervised":
            return ""
        no_token = self.name == "a2mim" and not self.token
        if self.name == "a2mim" and not self.vit and not no_token:
            return ""
        name = METHOD_NAMES.get(self.name, self.name) + (", no token" if no_token else "")
        return name + (f" [{self.backbone}]" if self.vit else "")

    def label(self) -> str:
        """The variant's label in every table: its masking, after the method when that is not A2MIM on a CNN
        (``patch 4 / 0.6 @ stage 1``, ``mixed: patch 4 / 0.6 | patch 16 / 0.4``, ``SimMIM: patch 8 / 0.6 @ stage
        0``, ``MoCo v3: two views, no mask``, ``none (scratch)``, ``none (init: weights.pth)``)."""
        if self.name == "supervised":
            if self.init:
                return f"none (init: {Path(self.init).name})"
            return f"none (scratch, {self.backbone})" if self.vit else "none (scratch)"
        method = self.method_label()
        if self.two_views:
            return f"{method}: two views, no mask"
        if len(self.strategies) == 1:
            masking = self.strategies[0].label(with_stage=self.token)
        else:
            how = "mixed per sample" if self.mix == "per_sample" else "mixed"
            masking = f"{how}: " + " | ".join(s.label(with_stage=False) for s in self.strategies)
        return f"{method}: {masking}" if method else masking

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "method") -> Method:
        method = _build(cls, data, where)
        strategies = tuple(_build(Strategy, s, f"{where}.strategies") for s in method.strategies)
        return cls(**{**asdict(method), "strategies": strategies})


@dataclass(frozen=True)
class RunInfo:
    """A run folder's ``run.json``: written when the folder is made, before any training."""

    task: str  # pretrain | finetune | evaluate
    mixmask: str
    created: str
    seed: int | None = None
    method: Method | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"method": self.method.to_json() if self.method else None}

    @classmethod
    def from_json(cls, data: Any, where: str = "run.json") -> RunInfo:
        info = _build(cls, data, where)
        method = Method.from_json(info.method, f"{where}: method") if info.method is not None else None
        return cls(**{**asdict(info), "method": method})


def read_run_info(run_dir: str | Path) -> RunInfo:
    """The ``run.json`` of a run folder; FileNotFoundError or RecordError in one line when it is not one."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a mixmask run folder (no run.json)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError):  # cut short, not text, not JSON
        raise RecordError(f'{path} is damaged: expected JSON with the run\'s task, as {{"task": "pretrain"}}') from None
    return RunInfo.from_json(data, str(path))


@dataclass
class StageRun:
    """One stage of a study variant: its status in the store (pending | running | done | failed; ``missing`` for
    an extra run folder without results), its folder and timing, and its ``results.json`` once done."""

    stage: str
    status: str
    run_dir: Path | None = None
    attempts: int | None = None
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    error: str | None = None
    results: dict[str, Any] | None = None
    info: RunInfo | None = None  # the run folder's run.json, when it has one


@dataclass
class Variant:
    """A study variant as the report reads it: its name and description, where it comes from (``sweep`` or an
    ``extra`` run folder), what it trains (``method``; None when nothing tells) and its stage runs in order."""

    name: str
    description: str
    source: str
    method: Method | None
    runs: dict[str, StageRun] = field(default_factory=dict)
    planned: dict[str, dict] = field(default_factory=dict)  # stage -> the config the sweep planned for it

    @property
    def label(self) -> str:
        if self.method is not None:
            return self.method.label()
        pretrain = self.runs.get("pretrain")
        return f"unknown (pretrain {pretrain.status if pretrain else 'not found'})"

    def status(self, stage: str) -> str | None:
        run = self.runs.get(stage)
        return run.status if run else None

    def results(self, stage: str) -> dict[str, Any] | None:
        """The stage's ``results.json`` when it is done, else None."""
        run = self.runs.get(stage)
        return run.results if run is not None and run.status == "done" else None
