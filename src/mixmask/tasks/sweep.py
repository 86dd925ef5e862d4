"""``mixmask sweep``: run a study, every variant through pretrain -> finetune -> evaluate, recorded in a results store.

A sweep file names the base configs of the three stages and a list of variants, each a set of overrides:

    name: mix_and_mask_shapesx
    pretrain: ../pretrain/a2mim_tiny_shapesx.yaml     # a path (relative to this file) or an inline mapping
    finetune: ../finetune/tiny_shapesx.yaml
    evaluate: {eval: {cka_images: 500}}               # layered on each variant's finetune config
    common: [data.image_size=64]                      # overrides for every stage
    seeds: [0, 1, 2]                                  # replicates: every variant once per seed (train.seed)
    reference: scratch                  # what the report compares every variant with; [a, b]: each with its backbone's
    variants:
      - {name: patch4_r60, pretrain: ["masking.strategies=[{patch_size: 4, ratio: 0.6}]"]}
      - {name: mocov3, pretrain: ../pretrain/mocov3_tiny_shapesx.yaml}   # a file: this variant's own base
      - {name: scratch, stages: [finetune, evaluate]}
      - {name: published, model: resnet50, weights: r50_ft.pth}         # a checkpoint, evaluated only

Every variant's configs are built and checked before anything runs, so a bad variant fails at once. Stage runs go to
``SWEEP_DIR/runs/<variant>/<stage>``, or ``SWEEP_DIR/runs/<variant>/seed<k>/<stage>`` with ``seeds`` (every stage
of replicate k runs with ``train.seed=k``; the data and the evaluation's occlusion masks stay the same, so replicates
differ only by their training randomness). The store (``SWEEP_DIR/results.sqlite``) records each (variant, seed,
stage) run's status, time and final metrics. Running the same command again skips finished runs and resumes
interrupted ones from their checkpoints; seeds added to the file later are run then.
"""

from __future__ import annotations

import fcntl
import json
import os
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
from mixmask.tasks.cluster import check_executor, run_with_executor, stage_resources

STAGES = ("pretrain", "finetune", "evaluate")
SWEEP_KEYS = (
    "name",
    "description",
    "pretrain",
    "finetune",
    "evaluate",
    "common",
    "nproc",
    "seeds",
    "reference",
    "slurm",
    "variants",
)
VARIANT_KEYS = ("name", "description", "stages", "pretrain", "finetune", "evaluate", "model", "weights")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class PlannedVariant:
    """A variant as the sweep file plans it: its stages and their resolved configs (what to run). What ran is read
    back from the store and the run folders as ``mixmask.results.Variant`` records."""

    name: str
    stages: list[str]
    overrides: dict[str, list[str]]  # stage -> the variant's own overrides
    bases: dict[str, dict] = field(default_factory=dict)  # stage -> the variant's own base config (else the sweep's)
    configs: dict[str, Config] = field(default_factory=dict)  # stage -> resolved config (before run paths)
    description: str = ""
    weights: str | None = None  # a checkpoint evaluated as it is (``model`` + ``weights``): stages [evaluate]

    def spec(self) -> dict[str, Any]:
        """What the store records: the resolved configs, so a rerun that asks for something else is noticed."""
        configs = {stage: to_dict(cfg) for stage, cfg in self.configs.items()}
        spec = {"stages": self.stages, "overrides": self.overrides, "description": self.description, "configs": configs}
        return spec | ({"weights": self.weights} if self.weights else {})


@dataclass
class Sweep:
    name: str
    description: str
    file: Path | None
    text: str
    nproc: int
    variants: list[PlannedVariant]
    seeds: list[int] | None = None  # None: one run per variant, with its configs' own train.seed
    # the variant the report compares the others with (None: scratch, if any); a list: one per backbone, each variant
    # compared with the one of its own backbone
    reference: str | list[str] | None = None
    slurm: dict | None = None  # the jobs' resources with --executor (``mixmask.tasks.cluster``)

    def replicates(self, variant: PlannedVariant) -> list[int]:
        """The seeds ``variant`` runs with: the sweep's ``seeds``, else its first stage's ``train.seed``."""
        return self.seeds if self.seeds is not None else [variant.configs[variant.stages[0]].train.seed]


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
    from mixmask.models.factory import build_pretrain_model
    from mixmask.tasks.finetune import check_finetune_data

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
    seeds = data.get("seeds")
    if seeds is not None and (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise _error("`seeds`", f"got {seeds!r}; expected a list of distinct integers >= 0, e.g. [0, 1, 2]")
    common = _overrides(data.get("common"), "`common`")
    bases = {stage: _base(data.get(stage), f"`{stage}`", folder) for stage in STAGES}
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise _error("`variants`", f"got {raw_variants!r}; expected a non-empty list of variants")

    variants: list[PlannedVariant] = []
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
        checkpoint = "model" in raw or "weights" in raw
        stages = raw.get("stages", ["evaluate"] if checkpoint else list(STAGES))
        if not isinstance(stages, list) or not stages or [s for s in STAGES if s in stages] != stages:
            raise _error(f"{where}, `stages`", f"got {stages!r}; expected some of {list(STAGES)}, in that order")
        if checkpoint:
            if not all(isinstance(raw.get(k), str) and raw[k] for k in ("model", "weights")) or stages != ["evaluate"]:
                raise _error(
                    where,
                    "a checkpoint variant needs `model` (a timm name) and `weights` (its file), and is evaluated only",
                )
        elif stages[0] == "evaluate":
            raise _error(
                f"{where}, `stages`", "evaluate needs a pretrain or finetune stage before it (or `model` and `weights`)"
            )
        own_bases = {stage: raw[stage] for stage in STAGES if isinstance(raw.get(stage), str)}
        variant = PlannedVariant(
            raw["name"],
            stages,
            {
                stage: _overrides(raw.get(stage) if stage not in own_bases else None, f"{where}, `{stage}`")
                for stage in STAGES
            },
            bases={stage: _base(path, f"{where}, `{stage}`", folder) for stage, path in own_bases.items()},
            description=str(raw.get("description", "")),
            weights=str((folder / raw["weights"]).resolve()) if checkpoint else None,
        )
        if checkpoint:
            variant.overrides["evaluate"] = [f"model.backbone={raw['model']}", *variant.overrides["evaluate"]]
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
        if "finetune" in stages:
            try:
                check_finetune_data(variant.configs["finetune"])
            except ConfigError as error:
                raise _error(f"{where}, finetune", str(error)) from None
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
    reference = data.get("reference")
    known = [v.name for v in variants]
    named = [reference] if isinstance(reference, str) else reference
    expected = f"expected the name of one of the variants, or a list of them (one per backbone): {', '.join(known)}"
    if named is not None and not isinstance(named, list):
        raise _error("`reference`", f"got {reference!r}; {expected}")
    backbones: dict[str, str] = {}  # backbone -> the reference named for it
    for name in named or []:
        if name not in known:
            raise _error("`reference`", f"got {name!r}; {expected}")
        planned = variants[known.index(name)]
        backbone = planned.configs[planned.stages[0]].model.backbone
        if (other := backbones.setdefault(backbone, name)) != name:
            raise _error("`reference`", f"{other} and {name} are both {backbone}; name one reference per backbone")
    description = str(data.get("description", ""))
    stage_resources(data.get("slurm"))  # checked now, used with --executor
    return Sweep(
        name, description, Path(path) if path else None, text, nproc, variants, seeds, reference, data.get("slurm")
    )


def _stage_config(stage: str, bases: dict[str, dict], common: list[str], variant: PlannedVariant) -> Config:
    own = variant.overrides[stage]
    if stage != "evaluate":
        return load_config(None, [*common, *own], base=variant.bases.get(stage, bases[stage]))
    if variant.weights:  # a checkpoint: the sweep's evaluate settings on the finetune base (data, batch sizes)
        return load_config(None, [*common, *own], base=merge_dicts(bases["finetune"], bases["evaluate"]))
    # evaluate reads the evaluated run's config, then the sweep's evaluate settings, then the overrides
    target = "finetune" if "finetune" in variant.stages else "pretrain"
    evaluated = to_dict(variant.configs[target])
    return load_config(None, [*common, *own], base=merge_dicts(evaluated, bases["evaluate"]))


# ------------------------------------------------------------------------------------------------------- running


def run_dirs(sweep: Sweep, sweep_dir: Path, variant: PlannedVariant) -> dict[tuple[int, str], Path]:
    """``{(seed, stage): run folder}``: ``runs/<variant>/<stage>``, or ``runs/<variant>/seed<k>/<stage>`` when the
    sweep sets ``seeds``."""
    folder = sweep_dir / "runs" / variant.name
    return {
        (seed, stage): (folder / f"seed{seed}" if sweep.seeds is not None else folder) / stage
        for seed in sweep.replicates(variant)
        for stage in variant.stages
    }


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
        reference=sweep.reference,
    )
    for position, variant in enumerate(sweep.variants):
        dirs = {key: str(path.relative_to(sweep_dir)) for key, path in run_dirs(sweep, sweep_dir, variant).items()}
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


def run_stage(
    stage: str, cfg: Config, run_dir: Path, nproc: int = 1, weights: str | None = None, rank: int = 0
) -> dict[str, Any]:
    """One stage of one variant, resumed when it has a checkpoint; returns the run's results.json. ``weights``: the
    variant is a checkpoint (``cfg.model.backbone``) evaluated as it is. ``rank`` > 0: one of several processes
    already started for the stage (a cluster job's tasks), which neither clears the folder nor reads the results
    (an empty mapping)."""
    from mixmask.tasks.evaluate import evaluate, evaluate_model
    from mixmask.tasks.finetune import finetune
    from mixmask.tasks.pretrain import pretrain

    if stage == "evaluate":
        if run_dir.exists():
            shutil.rmtree(run_dir)  # evaluation has no checkpoints: it starts over
        if weights:
            evaluate_model(cfg, cfg.model.backbone, weights, out=run_dir)
        else:
            evaluate(cfg, out=run_dir)
    else:
        resume = _fresh_or_resume(run_dir) if rank == 0 else has_checkpoint(run_dir)
        if nproc > 1:
            config_file = save_config(cfg, run_dir.parent / f"{stage}.yaml")
            where = ["--resume", str(run_dir)] if resume else [str(config_file), "--out", str(run_dir)]
            # --standalone: a rendezvous on a free local port, so stages of concurrent jobs never collide
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            subprocess.run([*command, "-m", "mixmask", stage, *where], check=True)
        else:
            task = pretrain if stage == "pretrain" else finetune
            task(cfg, resume=run_dir) if resume else task(cfg, out=run_dir)
    return json.loads((run_dir / "results.json").read_text()) if rank == 0 else {}


def replicate_config(
    sweep: Sweep, variant: PlannedVariant, seed: int, stage: str, dirs: dict[tuple[int, str], Path]
) -> Config:
    """The config ``stage`` of replicate ``seed`` runs with: its seed, and the runs of the stages before it."""
    cfg = load_config(None, base=to_dict(variant.configs[stage]))
    if sweep.seeds is not None:
        cfg.train.seed = seed
    if stage in ("finetune", "evaluate") and "pretrain" in variant.stages:
        cfg.finetune.init = str(dirs[seed, "pretrain"])  # evaluate: as in the finetuned run's config
    if stage == "evaluate" and not variant.weights:
        cfg.eval.run = str(dirs[seed, "finetune" if "finetune" in variant.stages else "pretrain"])
    return cfg


def run_variant(sweep: Sweep, variant: PlannedVariant, sweep_dir: Path, store: ResultsStore) -> bool:
    """Every unfinished stage of every replicate of ``variant``, seed by seed, stages in order; a failed stage
    stops its replicate (the next seed still runs). True when all are done."""
    dirs = run_dirs(sweep, sweep_dir, variant)
    replicated = sweep.seeds is not None
    failed = False
    with locked(sweep_dir / "runs" / variant.name / ".lock"):
        for seed in sweep.replicates(variant):
            name = f"{variant.name} (seed {seed})" if replicated else variant.name
            for stage in variant.stages:
                if store.run(variant.name, seed, stage)["status"] == "done":
                    continue
                cfg = replicate_config(sweep, variant, seed, stage, dirs)
                print(f"== {name}: {stage} -> {dirs[seed, stage]}", flush=True)
                store.start(variant.name, seed, stage)
                start = time.perf_counter()
                try:
                    nproc = sweep.nproc if stage != "evaluate" else 1
                    results = run_stage(stage, cfg, dirs[seed, stage], nproc, variant.weights)
                except Exception as error:  # recorded, then the next replicate runs; Ctrl-C leaves it "running"
                    message = f"{type(error).__name__}: {error}"
                    store.fail(variant.name, seed, stage, message, time.perf_counter() - start)
                    print(f"!! {name}: {stage} failed: {error}", file=sys.stderr, flush=True)
                    failed = True
                    break
                store.finish(variant.name, seed, stage, results, time.perf_counter() - start)
    return not failed


def run_sweep(
    sweep: Sweep, sweep_dir: str | Path, jobs: int | None = None, only: str | None = None, executor: str | None = None
) -> int:
    """Run every variant (or ``only`` one); ``jobs`` > 1 runs that many variants at once as separate processes,
    each logging to ``runs/<variant>/log.txt``; ``executor`` (slurm or local) runs every stage as a submitit job,
    at most ``jobs`` at once (None: no limit). Returns the number of variants not finished."""
    sweep_dir = Path(sweep_dir)
    variants = [v for v in sweep.variants if only is None or v.name == only]
    if only is not None and not variants:
        raise ConfigError(f"sweep: no variant named {only!r}; variants: {', '.join(v.name for v in sweep.variants)}")
    if executor is not None:
        check_executor(executor)
    store = open_store(sweep, sweep_dir)
    try:
        if executor is not None:
            with locked(sweep_dir / ".lock"):
                return run_with_executor(sweep, variants, sweep_dir, store, executor, jobs)
        jobs = jobs or 1
        if jobs <= 1 or only is not None:
            # a --variant process runs under its parent's sweep lock (and takes the variant's own lock)
            with locked(sweep_dir / ".lock") if only is None else nullcontext():
                return sum(not run_variant(sweep, v, sweep_dir, store) for v in variants)
        with locked(sweep_dir / ".lock"):
            return _run_parallel(sweep, variants, sweep_dir, jobs, store)
    finally:
        store.close()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices when it is unset)."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [g.strip() for g in listed.split(",") if g.strip()] if listed else []
    return names[: torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(gpus: list[str], jobs: int, nproc: int) -> list[str | None]:
    """Each of ``jobs`` concurrent variants gets its own ``nproc`` GPUs, as a ``CUDA_VISIBLE_DEVICES`` value (None
    everywhere on a machine without GPUs: the jobs share the CPU). More GPUs asked for than visible is a
    ConfigError saying how many there are."""
    if not gpus:
        return [None] * jobs
    if jobs * nproc > len(gpus):
        raise ConfigError(
            f"sweep: --jobs {jobs} x nproc {nproc} needs {jobs * nproc} GPUs, but {len(gpus)} are visible "
            f"({','.join(gpus)}); use --jobs {max(1, len(gpus) // nproc)} or fewer"
        )
    return [",".join(gpus[k * nproc : (k + 1) * nproc]) for k in range(jobs)]


def _run_parallel(sweep: Sweep, variants: list[PlannedVariant], sweep_dir: Path, jobs: int, store: ResultsStore) -> int:
    free_slots = gpu_slots(visible_gpus(), jobs, sweep.nproc)
    source = str(sweep.file) if sweep.file else None
    if source is None:  # an inline sweep: the children read it from the sweep folder
        source = str(sweep_dir / "sweep.yaml")
        Path(source).write_text(sweep.text)
    waiting, running, failed = list(variants), {}, 0
    slot_of: dict[str, str | None] = {}
    while waiting or running:
        while waiting and free_slots:
            variant = waiting.pop(0)
            slot = slot_of[variant.name] = free_slots.pop(0)
            env = dict(os.environ) if slot is None else {**os.environ, "CUDA_VISIBLE_DEVICES": slot}
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
                running[variant.name] = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            gpus = "" if slot is None else f", GPUs {slot}"
            print(f"== {variant.name}: started (log: {log}{gpus})", flush=True)
        time.sleep(1.0)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                free_slots.append(slot_of.pop(name))
                failed += process.returncode != 0
                states = ", ".join(f"{r['stage']} {r['status']}" for r in store.runs(name))
                print(f"== {name}: {'finished' if process.returncode == 0 else 'FAILED'} ({states})", flush=True)
    return failed
