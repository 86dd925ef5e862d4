"""``--dry-run``: a sweep's plan with estimated times, from the tasks' own steps timed on this machine.

Nothing here re-implements a stage. A training stage is timed by running the engine's ``fit`` for a few optimisation
steps with the task's own model, data set (rendering or decoding and augmentation included), loader and step
function; the evaluate stage by running the task's own evaluations of a fresh classifier on a few images each. The
estimate scales those timings by the stage's steps and images, so a change to a task changes its estimate too.
Each kind of stage (same model, data, masking and batch) is timed once per plan.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixmask.config import Config, load_config, to_dict
from mixmask.store import ResultsStore

PROBE_STEPS = 6  # optimisation steps a training probe runs (the first ones pay for allocation and loader start)
PROBE_IMAGES = 64  # images per evaluation in the evaluate probe's first run (twice as many in its second)


@dataclass
class PlanRow:
    variant: str
    stage: str
    steps: int
    images: int  # images through the network without gradients
    status: str  # done | to run
    seconds: float  # estimated wall time (0 when done)


@contextlib.contextmanager
def _quiet():
    """Probes print progress bars and results like the real stages; the plan shows none of it."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _probe_config(cfg: Config, **eval_overrides: Any) -> Config:
    return load_config(None, base=to_dict(cfg) | {"eval": to_dict(cfg)["eval"] | eval_overrides})


def _images(cfg: Config, split: str) -> int:
    """Images in ``split`` of the config's data (each data set is listed once per plan: folders can be large)."""
    return _split_size(json.dumps(to_dict(cfg)["data"], sort_keys=True), split)


@functools.lru_cache(maxsize=256)
def _split_size(data: str, split: str) -> int:
    from mixmask.data import build_dataset

    return len(build_dataset(load_config(None, base={"data": json.loads(data)}).data, split))


def _val_images(cfg: Config) -> int:
    """Validation images an evaluation reads (``eval.max_images`` limits them)."""
    val = _images(cfg, "val")
    return min(val, cfg.eval.max_images) if cfg.eval.max_images else val


def _training_probe(stage: str, cfg: Config) -> dict[str, float]:
    """Run ``fit`` for PROBE_STEPS steps of the stage; returns seconds per step, the fixed cost (setup and first
    steps beyond the per-step rate) and the training-set size."""
    from mixmask.engine import distributed
    from mixmask.engine.trainer import fit

    dist = distributed.setup(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    if stage == "pretrain":
        from mixmask.models.factory import build_pretrain_model
        from mixmask.tasks import pretrain

        model, masker = build_pretrain_model(cfg)
        dataset = pretrain.training_set(cfg, model.two_views)
        step_fn = pretrain.step_function(cfg, model, masker, dist, len(dataset))
        layer_decay = 1.0
    else:
        from mixmask.models.classifier import Classifier
        from mixmask.tasks import finetune

        dataset = finetune.training_set(cfg)
        model = Classifier(
            cfg.model.backbone,
            len(dataset.classes),
            frozen=cfg.finetune.probe == "linear",
            image_size=cfg.data.image_size,
            drop_path=cfg.model.drop_path,
        )
        step_fn, layer_decay = finetune.step_function(cfg), cfg.finetune.layer_decay
    with tempfile.TemporaryDirectory() as folder, _quiet():
        summary = fit(cfg, Path(folder), model, dataset, step_fn, dist, None, stage, layer_decay, PROBE_STEPS)
    per_step = summary["seconds_per_step"]
    return {
        "per_step": per_step,
        "fixed": max(0.0, summary["seconds"] - summary["steps"] * per_step),
        "train_images": len(dataset),
    }


def _evaluate_probe(cfg: Config) -> dict[str, tuple[float, float]]:
    """``{evaluation: (fixed seconds, seconds per image)}``, from the evaluate task's own evaluations of a fresh
    classifier run twice, on PROBE_IMAGES and on twice as many images per evaluation: the difference gives the cost
    per image, the rest is the evaluation's fixed cost (its plot, its data set, the ImageNet-X scoring)."""
    from mixmask.data import build_dataset
    from mixmask.data.transforms import eval_transform_for
    from mixmask.engine import distributed
    from mixmask.models.classifier import Classifier
    from mixmask.results import EvaluateResults
    from mixmask.tasks.evaluate import cka_curves, evaluate_classifier, frequency_results, probe_results

    device = distributed.setup(cfg.train.device).device
    classifier = Classifier(cfg.model.backbone, len(_classes(cfg)), image_size=cfg.data.image_size).to(device).eval()
    runs = []
    for images in (PROBE_IMAGES, 2 * PROBE_IMAGES):
        probe = _probe_config(cfg, max_images=images, cka_images=images, probe_images=images)
        if probe.data.dataset == "shapesx":
            probe.data.shapesx.test = images
            probe.data.shapesx.cue_conflict = images
        results = EvaluateResults(run="", run_task="plan", settings={}, data={})
        with tempfile.TemporaryDirectory() as folder, _quiet():
            evaluate_classifier(probe, classifier, device, Path(folder), results, lambda: None)
            # the analyses of the encoder before finetuning: a random encoder costs what a pretrained one does
            start = time.perf_counter()
            if probe.eval.probes:
                probe_results(probe, classifier, "random init", device, Path(folder), results)
                results.seconds["probes"] = time.perf_counter() - start
            if probe.eval.frequency:
                start = time.perf_counter()
                frequency_results(probe, classifier, "random init", device)
                results.seconds["frequency"] = time.perf_counter() - start
            if probe.eval.cka and probe.eval.cka_encoder:
                start = time.perf_counter()
                cka_curves(probe, classifier, build_dataset(probe.data, "val", eval_transform_for(probe.data)), device)
                results.seconds["cka_encoder"] = time.perf_counter() - start
        runs.append((_evaluation_images(probe), results.seconds))
    (few, few_seconds), (many, many_seconds) = runs
    costs = {}
    for name, seconds in many_seconds.items():
        added = many.get(name, 0) - few.get(name, 0)
        per_image = max(0.0, (seconds - few_seconds[name]) / added) if added > 0 else 0.0
        costs[name] = (max(0.0, seconds - per_image * many.get(name, 0)), per_image)
    if results.interactions is not None:  # J(m) costs per image scored: a fresh classifier gets few right
        costs["interactions"] = (0.0, many_seconds["interactions"] / max(1, results.interactions.images))
    return costs


def _classes(cfg: Config) -> list[str]:
    from mixmask.data import build_dataset

    return build_dataset(cfg.data, "val").classes


def _evaluation_images(cfg: Config) -> dict[str, int]:
    """Images each evaluation of ``cfg.eval`` sends through the network (occlusion and CKA once per ratio)."""
    ev, data = cfg.eval, cfg.data
    val = _val_images(cfg)
    ratios = len([r for r in ev.occlusion_ratios if r > 0])
    counts = {"accuracy": val}
    if ev.imagenet_x:
        counts["factors"] = _images(cfg, "test") if data.dataset == "shapesx" else 0  # folders reuse val
    if ev.occlusion:
        counts["occlusion"] = val * len(ev.occlusion_ratios)
    if ev.cka:
        counts["cka"] = min(ev.cka_images, _images(cfg, "val")) * (1 + ratios)
    if ev.shape_bias and data.dataset == "shapesx":
        counts["shape_bias"] = _images(cfg, "cue_conflict")
    if ev.cka and ev.cka_encoder:
        counts["cka_encoder"] = counts["cka"]
    if ev.interactions:  # at most: J(m) is computed on the candidates the classifier gets right
        counts["interactions"] = min(ev.interaction_images, val)
    if ev.probes:  # features of the training images and of every evaluated split, once
        train = min(ev.probe_images, _images(cfg, "train")) if ev.probe_images else _images(cfg, "train")
        shapesx = _images(cfg, "test") + _images(cfg, "cue_conflict") if data.dataset == "shapesx" else 0
        counts["probes"] = train + val + shapesx
    return counts


def _key(stage: str, cfg: Config) -> str:
    """What decides a stage's speed: its config without the run's identity, length and initial weights."""
    settings = to_dict(cfg)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in ("epochs", "seed", "name", "out_dir")}
    settings["finetune"] = {k: v for k, v in settings["finetune"].items() if k != "init"}
    settings["eval"] = {k: v for k, v in settings["eval"].items() if k != "run"} if stage == "evaluate" else {}
    return f"{stage}/{settings}"


def plan(sweep, sweep_dir: str | Path | None = None) -> list[PlanRow]:
    """Every stage of ``sweep`` with its work and estimated seconds. Stages already done in ``sweep_dir``'s store
    are listed as done, with no time."""
    from mixmask.engine.trainer import EpochSampler

    done: set[tuple[str, int, str]] = set()
    store_path = Path(sweep_dir) / "results.sqlite" if sweep_dir else None
    if store_path is not None and store_path.is_file():
        store = ResultsStore(store_path)
        done = {(r["variant"], r["seed"], r["stage"]) for r in store.runs() if r["status"] == "done"}
        store.close()
    probes: dict[str, dict[str, float]] = {}

    def probe(key: str, fn, *args) -> dict[str, float]:
        if key not in probes:
            probes[key] = fn(*args)
        return probes[key]

    rows = []
    runs = [(v, seed, stage) for v in sweep.variants for seed in sweep.replicates(v) for stage in v.stages]
    for (
        variant,
        seed,
        stage,
    ) in runs:  # one row per run; each kind of stage is timed once (its speed does not depend on the seed)
        cfg = variant.configs[stage]
        status = "done" if (variant.name, seed, stage) in done else "to run"
        steps, images, seconds = 0, 0, 0.0
        knn = stage == "finetune" and cfg.finetune.probe == "knn"
        if stage in ("pretrain", "finetune") and not knn:
            timing = probe(_key(stage, cfg), _training_probe, stage, cfg)
            train = cfg.train  # sweep.nproc processes share the steps of an epoch
            sampler = EpochSampler(timing["train_images"], train.batch_size, 0, 0, sweep.nproc, train.accum_steps)
            steps = sampler.batches_per_epoch() // train.accum_steps * train.epochs
            seconds = timing["fixed"] + steps * timing["per_step"]
        if stage == "finetune":  # the validation pass at the end (kNN: the bank of training images too)
            accuracy_only = _probe_config(cfg, imagenet_x=False, occlusion=False, cka=False, shape_bias=False)
            fixed, per_image = probe(_key("evaluate", accuracy_only), _evaluate_probe, accuracy_only)["accuracy"]
            images = _val_images(cfg) + (_images(cfg, "train") if knn else 0)
            seconds += fixed + images * per_image
        if stage == "evaluate":
            costs = probe(_key("evaluate", cfg), _evaluate_probe, cfg)
            counts = _evaluation_images(cfg)
            images = sum(counts.values())
            seconds = sum(fixed + counts[name] * per_image for name, (fixed, per_image) in costs.items())
        label = f"{variant.name}/seed{seed}" if sweep.seeds is not None else variant.name
        rows.append(PlanRow(label, stage, steps, images, status, 0.0 if status == "done" else seconds))
    return rows


def format_plan(rows: list[PlanRow]) -> str:
    def clock(seconds: float) -> str:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"

    lines = [f"{'variant':<22}{'stage':<10}{'steps':>8}{'images':>10}  {'status':<8}{'estimate':>10}"]
    for r in rows:
        lines.append(f"{r.variant:<22}{r.stage:<10}{r.steps:>8,}{r.images:>10,}  {r.status:<8}{clock(r.seconds):>10}")
    lines.append(f"{'total':<58}{clock(sum(r.seconds for r in rows)):>10}")
    lines.append(
        f"(estimates: each kind of stage timed here with its own code: {PROBE_STEPS} training steps with the real "
        f"data and loader; each evaluation on {PROBE_IMAGES} and {2 * PROBE_IMAGES} images)"
    )
    return "\n".join(lines)


def plan_text(sweep, sweep_dir: str | Path | None = None) -> str:
    """``format_plan(plan(...))``, with a warning when other work was using the CPU as the timing began: the probes
    then run slower than the study will on an idle machine (on 2 cores, two trainings side by side take 2-3 x)."""
    from mixmask.data import usable_cores

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    text = format_plan(plan(sweep, sweep_dir))
    cores = usable_cores()
    if load > 0.5 * cores:
        text += (
            f"\nnote: other work was using the CPU when the timing began (1-minute load {load:.1f} on {cores} cores): "
            "these estimates are too long; time it again on an idle machine"
        )
    return text
