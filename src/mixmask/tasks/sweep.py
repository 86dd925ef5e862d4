"""``mixmask sweep``: run a study, every variant through pretrain -> finetune -> evaluate, recorded in a results store.

A sweep file names the base configs of the three stages and a list of variants, each a set of overrides:

    name: mix_and_mask_shapesx
    pretrain: ../pretrain/a2mim_tiny_shapesx.yaml     # a path (relative to this file) or an inline mapping
    finetune: ../finetune/tiny_shapesx.yaml
    evaluate: {eval: {cka_images: 500}}               # layered on each variant's finetune config
    common: [data.image_size=64]                      # overrides for every stage
    variants:
      - {name: patch4_r60, pretrain: ["masking.strategies=[{patch_size: 4, ratio: 0.6}]"]}
      - {name: mocov3, pretrain: ../pretrain/mocov3_tiny_shapesx.yaml}   # a file: this variant's own base
      - {name: scratch, stages: [finetune, evaluate]}

Every variant's configs are built and checked before anything runs, so a bad variant fails at once. Stage runs go to
``SWEEP_DIR/runs/<variant>/<stage>``; the store (``SWEEP_DIR/results.sqlite``) records their status, time and final
metrics. Running the same command again skips finished stages and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import fcntl
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mixmask import __version__
from mixmask.config import (
    Config,
    ConfigError,
    load_config,
    merge_dicts,
    parse_yaml_file,
    read_yaml,
    save_config,
    to_dict,
)
from mixmask.engine.checkpoint import has_checkpoint
from mixmask.store import ResultsStore

STAGES = ("pretrain", "finetune", "evaluate")
SWEEP_KEYS = ("name", "description", "pretrain", "finetune", "evaluate", "common", "nproc", "variants")
VARIANT_KEYS = ("name", "description", "stages", "pretrain", "finetune", "evaluate")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Variant:
    name: str
    stages: list[str]
    overrides: dict[str, list[str]]  # stage -> the variant's own overrides
    bases: dict[str, dict] = field(default_factory=dict)  # stage -> the variant's own base config (else the sweep's)
    configs: dict[str, Config] = field(default_factory=dict)  # stage -> resolved config (before run paths)
    description: str = ""

    def spec(self) -> dict[str, Any]:
        """What the store records: the resolved configs, so a rerun that asks for something else is noticed."""
        configs = {stage: to_dict(cfg) for stage, cfg in self.configs.items()}
        return {"stages": self.stages, "overrides": self.overrides, "description": self.description, "configs": configs}


@dataclass
class Sweep:
    name: str
    description: str
    file: Path | None
    text: str
    nproc: int
    variants: list[Variant]


def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"sweep {where}: {message}")


def _overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise _error(where, f"got {value!r}; expected a list of key.sub=value overrides")
    return value


def _base(value: Any, where: str, folder: Path) -> dict:
    """A stage's base config: a YAML path relative to the sweep file, or an inline mapping."""
    if value is None:
        return {}
    if isinstance(value, str):
        return read_yaml(folder / value)
    if isinstance(value, dict):
        return value
    raise _error(where, f"got {value!r}; expected a config file path or a mapping")


def load_sweep(path: str | Path | None = None, data: dict | None = None) -> Sweep:
    """Read and check a sweep: every variant's stage configs are built and validated (masking pairings included)
    before anything runs. Give a file, or ``data`` (an inline sweep; paths in it are relative to the cwd)."""
    from mixmask.tasks.pretrain import build_pretrain_model

    folder = Path(path).parent if path else Path.cwd()
    if data is None:
        data = parse_yaml_file(path, "sweep file")  # one clear line for a missing, unreadable or broken file
    text = Path(path).read_text() if path else yaml.safe_dump(data, sort_keys=False)
    if not isinstance(data, dict):
        raise _error("file", "must hold a mapping with `variants`")
    for key in data:
        if key not in SWEEP_KEYS:
            raise _error(f"key `{key}`", f"unknown; known keys: {', '.join(SWEEP_KEYS)}")
    name = str(data.get("name") or (Path(path).stem if path else "sweep"))
    nproc = data.get("nproc", 1)
    if not isinstance(nproc, int) or nproc < 1:
        raise _error("`nproc`", f"got {nproc!r}; expected processes per stage, an integer >= 1")
    common = _overrides(data.get("common"), "`common`")
    bases = {stage: _base(data.get(stage), f"`{stage}`", folder) for stage in STAGES}
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise _error("`variants`", f"got {raw_variants!r}; expected a non-empty list of variants")

    variants: list[Variant] = []
    for i, raw in enumerate(raw_variants):
        where = f"variant {i}"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not NAME.match(raw["name"]):
            raise _error(where, f"got {raw!r}; expected a mapping with a `name` of letters, digits, _ . + -")
        where = f"variant {raw['name']!r}"
        for key in raw:
            if key not in VARIANT_KEYS:
                raise _error(f"{where}, key `{key}`", f"unknown; known keys: {', '.join(VARIANT_KEYS)}")
        if raw["name"] in [v.name for v in variants]:
            raise _error(where, "the name is used twice")
        stages = raw.get("stages", list(STAGES))
        if not isinstance(stages, list) or not stages or [s for s in STAGES if s in stages] != stages:
            raise _error(f"{where}, `stages`", f"got {stages!r}; expected some of {list(STAGES)}, in that order")
        if stages[0] == "evaluate":
            raise _error(f"{where}, `stages`", "evaluate needs a pretrain or finetune stage before it")
        own_bases = {stage: raw[stage] for stage in STAGES if isinstance(raw.get(stage), str)}
        variant = Variant(
            raw["name"],
            stages,
            {
                stage: _overrides(raw.get(stage) if stage not in own_bases else None, f"{where}, `{stage}`")
                for stage in STAGES
            },
            bases={stage: _base(path, f"{where}, `{stage}`", folder) for stage, path in own_bases.items()},
            description=str(raw.get("description", "")),
        )
        for stage in stages:
            try:
                variant.configs[stage] = _stage_config(stage, bases, common, variant)
            except ConfigError as error:
                raise _error(f"{where}, {stage}", str(error)) from None
        if "pretrain" in stages:
            try:
                build_pretrain_model(variant.configs["pretrain"])  # the patch/stage pairing rule needs the backbone
            except ConfigError as error:
                raise _error(f"{where}, pretrain", str(error)) from None
        if "pretrain" in stages and "finetune" in stages:  # the finetuned network must be the pretrained one
            pre, fine = variant.configs["pretrain"], variant.configs["finetune"]
            for field_name, a, b in (
                ("model.backbone", pre.model.backbone, fine.model.backbone),
                ("data.image_size", pre.data.image_size, fine.data.image_size),
            ):
                if a != b:
                    raise _error(
                        f"{where}, finetune",
                        f"{field_name}={b!r} but the variant pretrains {field_name}={a!r}; set {field_name}={a} in "
                        "the variant's finetune overrides (or in `common`)",
                    )
        variants.append(variant)
    return Sweep(name, str(data.get("description", "")), Path(path) if path else None, text, nproc, variants)


def _stage_config(stage: str, bases: dict[str, dict], common: list[str], variant: Variant) -> Config:
    own = variant.overrides[stage]
    if stage != "evaluate":
        return load_config(None, [*common, *own], base=variant.bases.get(stage, bases[stage]))
    # evaluate reads the evaluated run's config, then the sweep's evaluate settings, then the overrides
    target = "finetune" if "finetune" in variant.stages else "pretrain"
    evaluated = to_dict(variant.configs[target])
    return load_config(None, [*common, *own], base=merge_dicts(evaluated, bases["evaluate"]))


# ------------------------------------------------------------------------------------------------------- running


def run_dirs(sweep_dir: Path, variant: Variant) -> dict[str, Path]:
    return {stage: sweep_dir / "runs" / variant.name / stage for stage in variant.stages}


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}; " + (
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def open_store(sweep: Sweep, sweep_dir: Path) -> ResultsStore:
    """The sweep folder's store with every variant registered (finished runs keep their state)."""
    store = ResultsStore(sweep_dir / "results.sqlite")
    meta = store.meta()
    store.set_meta(
        name=sweep.name,
        description=sweep.description,
        sweep_file=str(sweep.file.resolve()) if sweep.file else "",
        sweep_text=sweep.text,
        created=meta.get("created", time.time()),
        mixmask_version=__version__,
        machine=machine(),
    )
    for position, variant in enumerate(sweep.variants):
        dirs = {stage: str(path.relative_to(sweep_dir)) for stage, path in run_dirs(sweep_dir, variant).items()}
        store.add_variant(variant.name, position, variant.spec(), dirs)
    return store


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Only one process works on a sweep folder (or a variant) at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"{path.parent} is being run by another process (lock {path})") from None
        yield


def _fresh_or_resume(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a checkpoint to resume; a folder left without one is cleared for a new start."""
    if has_checkpoint(run_dir):  # resumed from its newest intact checkpoint, or failing clearly when none is
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def run_stage(stage: str, cfg: Config, run_dir: Path, nproc: int = 1) -> dict[str, Any]:
    """One stage of one variant, resumed when it has a checkpoint; returns the run's results.json."""
    from mixmask.tasks.evaluate import evaluate
    from mixmask.tasks.finetune import finetune
    from mixmask.tasks.pretrain import pretrain

    if stage == "evaluate":
        if run_dir.exists():
            shutil.rmtree(run_dir)  # evaluation has no checkpoints: it starts over
        evaluate(cfg, out=run_dir)
    else:
        resume = _fresh_or_resume(run_dir)
        if nproc > 1:
            config_file = save_config(cfg, run_dir.parent / f"{stage}.yaml")
            where = ["--resume", str(run_dir)] if resume else [str(config_file), "--out", str(run_dir)]
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
            subprocess.run([*command, "-m", "mixmask", stage, *where], check=True)
        else:
            task = pretrain if stage == "pretrain" else finetune
            task(cfg, resume=run_dir) if resume else task(cfg, out=run_dir)
    return json.loads((run_dir / "results.json").read_text())


def run_variant(sweep: Sweep, variant: Variant, sweep_dir: Path, store: ResultsStore) -> bool:
    """Every unfinished stage of ``variant`` in order; stops at the first failure. True when all are done."""
    dirs = run_dirs(sweep_dir, variant)
    with locked(sweep_dir / "runs" / variant.name / ".lock"):
        for stage in variant.stages:
            if store.run(variant.name, stage)["status"] == "done":
                continue
            cfg = load_config(None, base=to_dict(variant.configs[stage]))
            if stage in ("finetune", "evaluate") and "pretrain" in variant.stages:
                cfg.finetune.init = str(dirs["pretrain"])  # evaluate: as in the finetuned run's saved config
            if stage == "evaluate":
                cfg.eval.run = str(dirs["finetune" if "finetune" in variant.stages else "pretrain"])
            print(f"== {variant.name}: {stage} -> {dirs[stage]}", flush=True)
            store.start(variant.name, stage)
            start = time.perf_counter()
            try:
                results = run_stage(stage, cfg, dirs[stage], sweep.nproc if stage != "evaluate" else 1)
            except Exception as error:  # recorded, then the next variant runs; KeyboardInterrupt leaves it "running"
                store.fail(variant.name, stage, f"{type(error).__name__}: {error}", time.perf_counter() - start)
                print(f"!! {variant.name}: {stage} failed: {error}", file=sys.stderr, flush=True)
                return False
            store.finish(variant.name, stage, results, time.perf_counter() - start)
    return True


def run_sweep(sweep: Sweep, sweep_dir: str | Path, jobs: int = 1, only: str | None = None) -> int:
    """Run every variant (or ``only`` one); ``jobs`` > 1 runs that many variants at once as separate processes,
    each logging to ``runs/<variant>/log.txt``. Returns the number of variants not finished."""
    sweep_dir = Path(sweep_dir)
    variants = [v for v in sweep.variants if only is None or v.name == only]
    if only is not None and not variants:
        raise ConfigError(f"sweep: no variant named {only!r}; variants: {', '.join(v.name for v in sweep.variants)}")
    store = open_store(sweep, sweep_dir)
    try:
        if jobs <= 1 or only is not None:
            # a --variant process runs under its parent's sweep lock (and takes the variant's own lock)
            with locked(sweep_dir / ".lock") if only is None else nullcontext():
                return sum(not run_variant(sweep, v, sweep_dir, store) for v in variants)
        with locked(sweep_dir / ".lock"):
            return _run_parallel(sweep, variants, sweep_dir, jobs, store)
    finally:
        store.close()


def _run_parallel(sweep: Sweep, variants: list[Variant], sweep_dir: Path, jobs: int, store: ResultsStore) -> int:
    source = str(sweep.file) if sweep.file else None
    if source is None:  # an inline sweep: the children read it from the sweep folder
        source = str(sweep_dir / "sweep.yaml")
        Path(source).write_text(sweep.text)
    waiting, running, failed = list(variants), {}, 0
    while waiting or running:
        while waiting and len(running) < jobs:
            variant = waiting.pop(0)
            log = sweep_dir / "runs" / variant.name / "log.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "mixmask",
                "sweep",
                source,
                "--out",
                str(sweep_dir),
                "--variant",
                variant.name,
            ]
            with log.open("a") as handle:
                running[variant.name] = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
            print(f"== {variant.name}: started (log: {log})", flush=True)
        time.sleep(1.0)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                failed += process.returncode != 0
                states = ", ".join(f"{r['stage']} {r['status']}" for r in store.runs(name))
                print(f"== {name}: {'finished' if process.returncode == 0 else 'FAILED'} ({states})", flush=True)
    return failed


# ------------------------------------------------------------------------------------------------------- dry run


def _timed(step, device: torch.device, warmup: int = 2, repeats: int = 3) -> float:
    """Median seconds of ``step()`` after a warm-up (the first steps pay for allocation and autotuning)."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _train_step_seconds(stage: str, cfg: Config, device: torch.device) -> float:
    """One optimisation step on random data, as the stage would run it (masks, losses, AdamW)."""
    from mixmask.engine.optim import build_optimizer
    from mixmask.models.classifier import Classifier
    from mixmask.tasks.pretrain import build_pretrain_model

    size, batch = cfg.data.image_size, cfg.train.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if stage == "pretrain" and cfg.model.method == "mocov3":
        model, _ = build_pretrain_model(cfg)
        views = torch.randn(batch, 2, 3, size, size, device=device)

        def loss():
            return model(views, momentum=cfg.model.mocov3.momentum)["loss"]
    elif stage == "pretrain":
        model, masker = build_pretrain_model(cfg)
        counter = iter(range(10**6))

        def loss():
            return model(images, masker(next(counter), batch, size, device=device))["loss"]
    else:
        model = Classifier(
            cfg.model.backbone, 10, frozen=cfg.finetune.probe == "linear", image_size=cfg.data.image_size
        )

        def loss():
            return torch.nn.functional.cross_entropy(model(images).float(), labels)

    model.to(device).train()
    optimizer = build_optimizer(model, cfg.optim, cfg.optim.lr)

    def step():
        with autocast:
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed(step, device)


def _forward_seconds_per_image(cfg: Config, device: torch.device) -> float:
    from mixmask.models.classifier import Classifier

    model = Classifier(cfg.model.backbone, 10, image_size=cfg.data.image_size).to(device).eval()
    images = torch.randn(min(cfg.eval.batch_size, 64), 3, cfg.data.image_size, cfg.data.image_size, device=device)
    with torch.no_grad():
        return _timed(lambda: model(images), device) / len(images)


def _load_seconds_per_image(cfg: Config) -> float:
    """Reading and transforming images in the main process (the cost when data loading is not overlapped)."""
    from mixmask.data import build_dataset
    from mixmask.data.transforms import eval_transform

    data = cfg.data
    dataset = build_dataset(data, "train", eval_transform(data.image_size, data.crop_pct, data.mean, data.std))
    count = min(32, len(dataset))
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return (time.perf_counter() - start) / count


def _work(stage: str, cfg: Config, nproc: int) -> tuple[int, int]:
    """(optimisation steps, images through the network without gradients) of one stage."""
    from mixmask.data import build_dataset

    data, ev = cfg.data, cfg.eval
    if stage in ("pretrain", "finetune") and not (stage == "finetune" and cfg.finetune.probe == "knn"):
        train = len(build_dataset(data, "train"))
        steps = train // (cfg.train.batch_size * nproc * cfg.train.accum_steps) * cfg.train.epochs
        val = len(build_dataset(data, "val")) if stage == "finetune" else 0
        return steps, (min(val, ev.max_images) if ev.max_images else val)
    if stage == "finetune":  # kNN: features of every training and validation image
        return 0, len(build_dataset(data, "train")) + len(build_dataset(data, "val"))
    val = len(build_dataset(data, "val"))
    val = min(val, ev.max_images) if ev.max_images else val
    ratios = len([r for r in ev.occlusion_ratios if r > 0])
    images = val + (val * ratios if ev.occlusion else 0) + (min(ev.cka_images, val) * (1 + ratios) if ev.cka else 0)
    if data.dataset == "shapesx":
        images += len(build_dataset(data, "test")) if ev.imagenet_x else 0
        images += len(build_dataset(data, "cue_conflict")) if ev.shape_bias else 0
    return 0, images


def plan(sweep: Sweep, sweep_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every stage with its work and estimated seconds, from steps measured here on random data. Stages already
    done in ``sweep_dir``'s store are listed with status done and no time."""
    from mixmask.engine import distributed

    done: set[tuple[str, str]] = set()
    store_path = Path(sweep_dir) / "results.sqlite" if sweep_dir else None
    if store_path is not None and store_path.is_file():
        store = ResultsStore(store_path)
        done = {(r["variant"], r["stage"]) for r in store.runs() if r["status"] == "done"}
        store.close()
    measured: dict[str, float] = {}

    def measure(key: str, fn, *args) -> float:  # each kind of step is timed once per plan
        if key not in measured:
            measured[key] = fn(*args)
        return measured[key]

    rows = []
    for variant in sweep.variants:
        for stage in variant.stages:
            cfg = variant.configs[stage]
            device = distributed.setup(cfg.train.device).device
            steps, images = _work(stage, cfg, sweep.nproc if stage != "evaluate" else 1)
            model_key = f"{cfg.model.backbone}/{cfg.data.image_size}/{device}"
            seconds = 0.0
            if steps:
                strategies = json.dumps(to_dict(cfg.masking)) if stage == "pretrain" else cfg.finetune.probe
                key = f"{stage}/{model_key}/{cfg.train.batch_size}/{strategies}"
                step = measure(key, _train_step_seconds, stage, cfg, device)
                load = measure(f"load/{cfg.data.dataset}/{cfg.data.image_size}", _load_seconds_per_image, cfg)
                # sweep.nproc processes share the steps; loading is per process
                seconds += steps * (step + load * cfg.train.batch_size * cfg.train.accum_steps)
            if images:
                forward = measure(f"forward/{model_key}", _forward_seconds_per_image, cfg, device)
                load = measure(f"load/{cfg.data.dataset}/{cfg.data.image_size}", _load_seconds_per_image, cfg)
                seconds += images * (forward + load)
            status = "done" if (variant.name, stage) in done else "to run"
            rows.append(
                {
                    "variant": variant.name,
                    "stage": stage,
                    "steps": steps,
                    "images": images,
                    "status": status,
                    "seconds": 0.0 if status == "done" else seconds,
                }
            )
    return rows


def format_plan(rows: list[dict[str, Any]]) -> str:
    def clock(seconds: float) -> str:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"

    lines = [f"{'variant':<22}{'stage':<10}{'steps':>8}{'images':>10}  {'status':<8}{'estimate':>10}"]
    for r in rows:
        lines.append(
            f"{r['variant']:<22}{r['stage']:<10}{r['steps']:>8,}{r['images']:>10,}  {r['status']:<8}{clock(r['seconds']):>10}"
        )
    lines.append(f"{'total':<58}{clock(sum(r['seconds'] for r in rows)):>10}")
    lines.append("(estimates: steps and forward passes timed here on random data, plus image loading in one process)")
    return "\n".join(lines)
