"""Typed records of what a run is and what it measured: the tasks write them, the store keeps them, the report reads
them. Nothing downstream re-derives them from configs.

- ``Strategy`` and ``Method``: what was pretrained (method, backbone, each masking strategy with the stage its token
  actually entered) and its one human label. A pretraining run writes its ``Method`` once, at the start, into
  ``run.json``; a sweep records each variant's planned ``Method`` when it registers the variant.
- ``RunInfo``: a run folder's ``run.json`` (task, mixmask version, creation time, seed, method).
- ``StageRun``: one stage of a study variant as the store and the report see it (status, folder, timing, the run's
  ``results.json``).
- The metrics of a run's ``results.json``, each with the settings that produced it: ``Accuracy``, ``Factors`` (one
  ``FactorCell`` per ImageNet-X factor), ``OcclusionCurve``, ``CKACurves``, ``ShapeBias``, ``Reconstruction``, and
  ``Skipped`` for a metric that does not apply; ``PretrainResults``, ``FinetuneResults`` and ``EvaluateResults`` are
  the three files. ``read_results`` / ``results_from_json`` turn a file back into its record.

Records are plain frozen dataclasses with ``to_json`` / ``from_json``; ``from_json`` refuses unknown or missing
fields with one line (``RecordError``) instead of guessing.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from mixmask.config import is_vit

METHOD_NAMES = {
    "a2mim": "A2MIM",
    "simmim": "SimMIM",
    "mae": "MAE",
    "rmae": "R-MAE",
    "cmae": "C-MAE",
    "mocov3": "MoCo v3",
    "simclr": "SimCLR",
    "byol": "BYOL",
    "simsiam": "SimSiam",
    "dino": "DINO",
}


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

    kind: str  # random | blockwise | uniform
    patch_size: int
    ratio: float
    stage: int | None
    weight: float = 1.0

    def label(self, with_stage: bool = True) -> str:
        """``patch 4 / 0.6 @ stage 1`` (the kind in front when not random: ``blockwise``, ``uniform``)."""
        text = ("" if self.kind == "random" else f"{self.kind} ") + f"patch {self.patch_size} / {self.ratio}"
        return text + (f" @ stage {self.stage}" if with_stage and self.stage is not None else "")


@dataclass(frozen=True)
class Method:
    """What a run trains. ``name``: a pretraining method, ``supervised`` for a classifier trained from ``init``
    (a weights file or folder; ``""`` = from scratch) without a pretraining stage of its own, or ``checkpoint`` for
    a classifier evaluated as it is from the weights file ``init``."""

    name: str
    backbone: str
    strategies: tuple[Strategy, ...] = ()
    mix: str = "per_batch"
    token: bool = False  # a mask token enters at each strategy's stage
    two_views: bool = False
    init: str = ""
    target: str = "pixels"  # what masked patches are predicted as: pixels | hog (MaskFeat)

    @property
    def vit(self) -> bool:
        return is_vit(self.backbone)

    def method_label(self) -> str:
        """``""`` for A2MIM on a CNN with its token and pixel targets (the study's default), else the method,
        ``, no token`` for the A2MIM ablation without one, ``, HOG`` for MaskFeat's targets, and the backbone for
        ViTs: ``SimMIM``, ``MAE [vit_tiny_p8]``, ``SimMIM, HOG [vit_small_patch16_224]``."""
        if self.name == "supervised":
            return ""
        no_token = self.name == "a2mim" and not self.token
        hog = self.target == "hog"
        if self.name == "a2mim" and not self.vit and not no_token and not hog:
            return ""
        name = METHOD_NAMES.get(self.name, self.name) + (", no token" if no_token else "") + (", HOG" if hog else "")
        return name + (f" [{self.backbone}]" if self.vit else "")

    def label(self) -> str:
        """The variant's label in every table: its masking, after the method when that is not A2MIM on a CNN
        (``patch 4 / 0.6 @ stage 1``, ``mixed: patch 4 / 0.6 | patch 16 / 0.4``, ``SimMIM: patch 8 / 0.6 @ stage
        0``, ``MoCo v3: two views, no mask``, ``none (scratch)``, ``none (init: weights.pth)``)."""
        if self.name == "checkpoint":
            return f"checkpoint: {Path(self.init).name} [{self.backbone}]"
        if self.name == "supervised":
            if self.init:
                return f"none (init: {Path(self.init).name})"
            return f"none (scratch, {self.backbone})" if self.vit else "none (scratch)"
        method = self.method_label()
        if self.two_views and not self.strategies:
            return f"{method}: {'multi-crop' if self.name == 'dino' else 'two views'}, no mask"
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
    results: RunResults | None = None
    info: RunInfo | None = None  # the run folder's run.json, when it has one


@dataclass
class Variant:
    """One replicate of a study variant as the report reads it: its name and description, where it comes from
    (``sweep`` or an ``extra`` run folder), what it trains (``method``; None when nothing tells), its stage runs in
    order and its ``seed`` (``train.seed`` of its runs). A variant run with several seeds is several records with
    the same name, one per seed."""

    name: str
    description: str
    source: str
    method: Method | None
    runs: dict[str, StageRun] = field(default_factory=dict)
    planned: dict[str, dict] = field(default_factory=dict)  # stage -> the config the sweep planned for it
    seed: int | None = None

    @property
    def evaluation(self) -> EvaluateResults | None:
        """The evaluate stage's results when it is done."""
        return self.results("evaluate")

    @property
    def label(self) -> str:
        if self.method is not None:
            return self.method.label()
        pretrain = self.runs.get("pretrain")
        return f"unknown (pretrain {pretrain.status if pretrain else 'not found'})"

    def status(self, stage: str) -> str | None:
        run = self.runs.get(stage)
        return run.status if run else None

    def results(self, stage: str) -> RunResults | None:
        """The stage's ``results.json`` record when it is done, else None."""
        run = self.runs.get(stage)
        return run.results if run is not None and run.status == "done" else None


def by_name(variants: list[Variant]) -> dict[str, list[Variant]]:
    """The replicates of each variant, variants in their first appearance's order, replicates by seed."""
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.name, []).append(v)
    return groups


# ------------------------------------------------------------------------------------------------ metrics

TOPK = re.compile(r"^top\d+$")


def _optional(cls, data: Any, where: str):
    return None if data is None else cls.from_json(data, where)


def _json(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


class _Record:
    """``to_json`` / ``from_json`` of a record whose fields are JSON values or records; with ``omit_none``, fields
    left None (a metric not measured) are left out of the JSON."""

    omit_none: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        out = {f.name: _json(getattr(self, f.name)) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None} if self.omit_none else out

    @classmethod
    def from_json(cls, data: Any, where: str):
        return _build(cls, data, where)


@dataclass(frozen=True)
class Skipped(_Record):
    """A metric that does not apply to this run, and why (``{"skipped": "..."}``)."""

    skipped: str


def _metric(cls, data: Any, where: str):
    """``cls`` from JSON, ``Skipped`` when the metric was skipped, None when absent."""
    if isinstance(data, dict) and set(data) == {"skipped"}:
        return Skipped.from_json(data, where)
    return _optional(cls, data, where)


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracy on ``images`` images of a split; in JSON the top-k values sit next to ``images`` and ``split``
    (``{"top1": 0.83, "top5": 0.93, "images": 500, "split": "val"}``). ``unreadable``: images that could not be
    read (finetuning records them here; evaluation next to the accuracy)."""

    topk: dict[str, float]
    images: int | None = None
    split: str = "val"
    unreadable: list[dict] | None = None

    @property
    def top1(self) -> float | None:
        return self.topk.get("top1")

    def to_json(self) -> dict[str, Any]:
        out = {**self.topk, "images": self.images, "split": self.split}
        return out | ({"unreadable": self.unreadable} if self.unreadable is not None else {})

    @classmethod
    def from_json(cls, data: Any, where: str = "accuracy") -> Accuracy:
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a mapping for Accuracy, got {type(data).__name__}")
        topk = {k: v for k, v in data.items() if TOPK.match(k)}
        rest = {k: v for k, v in data.items() if k not in topk}
        return _build(cls, {"topk": topk, **rest}, where)


@dataclass(frozen=True)
class FactorCell(_Record):
    """One factor: accuracy on the ``count`` images showing it (95 % Wilson interval), and its error ratio
    (factor error / overall error); ``thin`` when ``count`` is below the evaluation's min_count."""

    accuracy: float | None
    error_ratio: float | None
    count: int
    correct: int
    ci95: tuple[float | None, float | None]
    thin: bool


@dataclass(frozen=True)
class Factors:
    """ImageNet-X style factor results (``mixmask.evaluation.imagenet_x.FactorResults.to_dict``): ``settings`` says
    which annotations and options produced them (source, which_factor, filter_prototypes, min_count, counts)."""

    average: float
    worst_factor: str
    images: int
    thin: tuple[str, ...]
    settings: dict[str, Any]
    factors: dict[str, FactorCell]

    @property
    def min_count(self) -> int | None:
        value = self.settings.get("min_count")
        return int(value) if isinstance(value, int | float) else None

    def to_json(self) -> dict[str, Any]:
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str = "factors") -> Factors:
        record = _build(cls, data, where)
        if not isinstance(record.factors, dict):
            raise RecordError(f"{where}.factors: expected a mapping from factor to its numbers")
        cells = {
            name: FactorCell.from_json({**cell, "ci95": tuple(cell.get("ci95") or (None, None))}, f"{where}.{name}")
            if isinstance(cell, dict)
            else FactorCell.from_json(cell, f"{where}.{name}")
            for name, cell in record.factors.items()
        }
        return replace(record, thin=tuple(record.thin), factors=cells)


@dataclass(frozen=True)
class OcclusionCurve(_Record):
    """Top-1 accuracy with ``ratios`` of the ``patch_size`` px patches occluded (filled with ``fill``; masks drawn
    from ``seed``) on the same ``images`` images; ``correct`` per ratio."""

    ratios: list[float]
    accuracy: list[float | None]
    correct: list[int]
    images: int
    patch_size: int
    fill: str
    seed: int

    def accuracy_at(self, ratio: float) -> float | None:
        return next((a for r, a in zip(self.ratios, self.accuracy, strict=False) if abs(r - ratio) < 1e-9), None)


@dataclass(frozen=True)
class CKACurves(_Record):
    """CKA between clean and occluded features per backbone stage (``stages``: stage -> one value per ratio)."""

    ratios: list[float]
    stages: dict[str, list[float | None]]
    images: int
    patch_size: int
    fill: str
    debiased: bool
    seed: int


@dataclass(frozen=True)
class ShapeBias(_Record):
    """Cue-conflict shape bias: shape decisions / (shape + texture decisions), overall and ``per_class``
    (``{class: {shape_bias, shape, texture, images}}``)."""

    shape_bias: float | None
    shape_decisions: int
    texture_decisions: int
    images: int
    shape_or_texture_fraction: float
    per_class: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class InteractionCurve(_Record):
    """Multi-order interactions J(m) of a classifier: at each ratio, the order m, J(m) averaged over the ``images``
    it classified correctly among ``candidates``, and J(m) over its mean across orders; with the grid, pairs and
    contexts per image, and the seed their draws come from."""

    grid: int
    pairs: int
    contexts: int
    seed: int
    candidates: int
    images: int
    ratios: list[float]
    orders: list[int]
    strength: list[float]
    normalised: list[float]


@dataclass(frozen=True)
class FrequencyProfile(_Record):
    """Feature-map frequency and variance of an encoder (``mixmask.analysis.frequency``) on ``images`` validation
    images rendered or resized to ``image_size``: per layer its name, depth in [0, 1], map size, relative log
    amplitude along the spectrum's diagonal and mean spatial variance; ``skipped`` names the layers whose maps were
    under 8x8; ``random_init`` has the same layers of a random initialisation of the architecture, the reference."""

    encoder: str
    images: int
    layers: list[dict[str, Any]]
    image_size: int | None = None
    skipped: list[str] = field(default_factory=list)
    random_init: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Reconstruction(_Record):
    """Masked-pixel PSNR of one masking strategy (index ``strategy``) on fixed images (``scored`` of them in an
    evaluation, its per-image errors in ``reconstruction.csv``; 8 in a pretraining run); ``figure`` and ``images``
    (the uint8 image rows, evaluation only) are paths relative to the run folder."""

    strategy: int
    patch_size: int
    ratio: float
    stage: int | None
    psnr_masked: float
    figure: str
    images: str | None = None
    scored: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {k: v for k, v in out.items() if v is not None or k not in ("images", "scored")}


def _mapping(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a mapping, got {type(data).__name__}")
    return data


def _reconstructions(data: Any, where: str) -> list[Reconstruction]:
    if not isinstance(data, list):
        raise RecordError(f"{where}: expected a list of reconstructions, got {type(data).__name__}")
    return [Reconstruction.from_json(r, f"{where}[{i}]") for i, r in enumerate(data)]


@dataclass
class PretrainResults(_Record):
    """A pretraining run's ``results.json``: its training summary and the reconstructions of its last epoch."""

    method: str
    steps: int
    epochs: int
    final_loss: dict[str, float]
    reconstruction: list[Reconstruction] = field(default_factory=list)
    unreadable_images: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # train, per_step
    # joint-embedding methods: the collapse monitors of the last log interval (monitor/embedding_spread, DINO's
    # monitor/teacher_entropy) and, when they say the run collapsed, why ("" otherwise)
    monitors: dict[str, float] = field(default_factory=dict)
    collapse: str = ""
    compiled: bool = False  # trained under torch.compile (train.compile)
    task: str = "pretrain"

    @classmethod
    def from_json(cls, data: Any, where: str = "results.json") -> PretrainResults:
        record = _build(cls, data, where)
        return replace(record, reconstruction=_reconstructions(record.reconstruction, f"{where}: reconstruction"))


@dataclass
class FinetuneResults(_Record):
    """A finetuning run's ``results.json``: what it started from (``init``), its training summary and its
    validation accuracy (for a kNN probe, ``knn`` holds the probe's settings and ``accuracy`` its top-k)."""

    probe: str
    init: dict[str, Any]
    classes: list[str]
    accuracy: Accuracy | None = None
    steps: int | None = None
    epochs: int | None = None
    final_loss: dict[str, float] | None = None
    unreadable_images: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    knn: dict[str, Any] | None = None
    train_images: int | None = None  # the labelled images trained on (finetune.label_fraction of the split)
    compiled: bool | None = None  # trained under torch.compile (train.compile); None for a kNN probe
    task: str = "finetune"

    omit_none = True

    @classmethod
    def from_json(cls, data: Any, where: str = "results.json") -> FinetuneResults:
        record = _build(cls, data, where)
        return replace(record, accuracy=_optional(Accuracy, record.accuracy, f"{where}: accuracy"))


@dataclass
class ProbeResults(_Record):
    """A probe of the frozen encoder (``linear`` or ``knn``, on features computed once): what the encoder's weights
    were (a pretraining run, a weights file, or a random initialisation), how many labelled training images it
    learnt from, its settings, and its accuracy, factors and shape bias as the finetuned classifier's."""

    kind: str
    encoder: str
    train_images: int
    settings: dict[str, Any]
    accuracy: Accuracy
    factors: Factors | Skipped | None = None
    shape_bias: ShapeBias | Skipped | None = None

    omit_none = True

    @classmethod
    def from_json(cls, data: Any, where: str = "probe") -> ProbeResults:
        r = _build(cls, data, where)
        return replace(
            r,
            accuracy=Accuracy.from_json(r.accuracy, f"{where}.accuracy"),
            factors=_metric(Factors, r.factors, f"{where}.factors"),
            shape_bias=_metric(ShapeBias, r.shape_bias, f"{where}.shape_bias"),
        )


@dataclass
class EvaluateResults(_Record):
    """An evaluation's ``results.json``: the evaluated run, the ``eval`` settings and data it ran with, the wall time
    of each evaluation, and each metric it measured (None: not switched on or not reached yet)."""

    run: str
    run_task: str
    settings: dict[str, Any]
    data: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    accuracy: Accuracy | None = None
    unreadable_images: list[dict] = field(default_factory=list)
    factors: Factors | Skipped | None = None
    occlusion: OcclusionCurve | None = None
    cka: CKACurves | None = None
    cka_encoder: CKACurves | None = None  # the encoder before finetuning (eval.cka_encoder)
    interactions: InteractionCurve | None = None
    frequency: FrequencyProfile | Skipped | None = None  # the encoder before finetuning
    shape_bias: ShapeBias | Skipped | None = None
    reconstruction: list[Reconstruction] | None = None
    reconstruction_run: str | None = None
    # metric -> its per-image CSV in the evaluation folder (val, factors, occlusion, shape_bias): the paired tests
    # read them, and users re-analyse them
    per_image: dict[str, str] = field(default_factory=dict)
    probes: dict[str, ProbeResults] = field(default_factory=dict)  # linear, knn: the frozen encoder's probes
    task: str = "evaluate"

    omit_none = True

    @classmethod
    def from_json(cls, data: Any, where: str = "results.json") -> EvaluateResults:
        r = _build(cls, data, where)
        return replace(
            r,
            accuracy=_optional(Accuracy, r.accuracy, f"{where}: accuracy"),
            factors=_metric(Factors, r.factors, f"{where}: factors"),
            occlusion=_optional(OcclusionCurve, r.occlusion, f"{where}: occlusion"),
            cka=_optional(CKACurves, r.cka, f"{where}: cka"),
            cka_encoder=_optional(CKACurves, r.cka_encoder, f"{where}: cka_encoder"),
            interactions=_optional(InteractionCurve, r.interactions, f"{where}: interactions"),
            frequency=_metric(FrequencyProfile, r.frequency, f"{where}: frequency"),
            shape_bias=_metric(ShapeBias, r.shape_bias, f"{where}: shape_bias"),
            reconstruction=None
            if r.reconstruction is None
            else _reconstructions(r.reconstruction, f"{where}: reconstruction"),
            probes={k: ProbeResults.from_json(v, f"{where}: probes.{k}") for k, v in _mapping(r.probes, where).items()},
        )


@dataclass(frozen=True)
class Comparison(_Record):
    """One row of ``comparisons.csv``: ``variant`` against ``reference`` on one metric, for one seed (or ``all``:
    pooled over the seeds both ran), paired on the same images. ``difference`` is variant minus reference with its
    95 % interval; ``p_holm`` is Holm-corrected within its table (``report.comparisons.family``) at its seed level.
    ``metric``: top1, factor_average, factor_acc/<factor>, error_ratio/<factor>, occlusion/<ratio>, shape_bias, and
    the probes' as probe/<kind>/<metric>."""

    variant: str
    reference: str
    metric: str
    seed: str  # the seed, or "all"
    test: str  # mcnemar | bootstrap | hierarchical_bootstrap
    n_images: int
    n_seeds: int
    value: float
    reference_value: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    significant: bool


RunResults = PretrainResults | FinetuneResults | EvaluateResults
RESULTS = {"pretrain": PretrainResults, "finetune": FinetuneResults, "evaluate": EvaluateResults}


def results_from_json(data: Any, where: str = "results.json") -> RunResults:
    """The record of a ``results.json`` payload, chosen by its ``task``."""
    task = data.get("task") if isinstance(data, dict) else None
    if task not in RESULTS:
        raise RecordError(f"{where}: expected results with task pretrain, finetune or evaluate, got {task!r}")
    return RESULTS[task].from_json(data, where)


def read_results(run_dir: str | Path) -> RunResults:
    """A run folder's ``results.json`` as its record; FileNotFoundError or RecordError in one line."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json (the run has not finished)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError):
        raise RecordError(f"{path} is damaged: expected the run's results as JSON") from None
    return results_from_json(data, str(path))
