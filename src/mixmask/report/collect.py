"""Reading a study for the report: the sweep's results store, its run folders and extra run folders, into typed
``Variant`` records (``mixmask.results``). Formatting lives in ``tables``, ``plots``, ``figures`` and ``html``.

Every variant of the sweep is listed, whatever its state: stages that are pending, running or failed keep their
status and no results. What a variant trains comes from the records its runs wrote (``run.json``); for a stage not
run yet, or a folder written before runs recorded it, from its planned or saved config through the same factory
the run uses (``mixmask.models.factory``), so a label is decided in one place.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mixmask.config import Config, ConfigError, load_config
from mixmask.results import Method, RecordError, RunResults, StageRun, Variant, read_run_info, results_from_json
from mixmask.store import ResultsStore


def _resolve(path: str | Path | None, base: Path) -> Path | None:
    """A run folder as the store or a results file names it: absolute, or relative to ``base``."""
    if not path:
        return None
    path = Path(path)
    return path if path.is_absolute() else base / path


def _read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _info(run_dir: Path | None):
    """A run folder's ``run.json`` record, or None (no folder yet, or not readable)."""
    if run_dir is None or not (run_dir / "run.json").is_file():
        return None
    try:
        return read_run_info(run_dir)
    except (RecordError, OSError):
        return None


def _config(run_dir: Path | None, planned: dict | None) -> Config | None:
    """A run's saved config, else the planned one; None when neither loads."""
    try:
        if run_dir is not None and (run_dir / "config.yaml").is_file():
            return load_config(run_dir / "config.yaml")
        return load_config(None, base=planned) if planned else None
    except (ConfigError, OSError, TypeError, ValueError):
        return None


def described(stage: str, cfg: Config | None) -> Method | None:
    """The ``Method`` of a pretrain or finetune config, as its run would record it."""
    from mixmask.models.factory import build_pretrain_model, describe, supervised

    if cfg is None:
        return None
    if stage == "finetune":
        return supervised(cfg)
    try:
        model, masker = build_pretrain_model(cfg)
    except ConfigError:
        return None
    return describe(cfg, model, masker)


def method_of(runs: dict[str, StageRun], planned: dict[str, dict], weights: str | None = None) -> Method | None:
    """What a variant trains: its pretraining's record (the pretrain stage's, else the finetuned run's, which names
    the pretraining it started from), else a classifier trained from scratch or from a weights file; a checkpoint
    variant (``weights``) is the checkpoint."""
    if weights:
        backbone = ((planned.get("evaluate") or {}).get("model") or {}).get("backbone", "?")
        return Method("checkpoint", backbone, init=weights)
    stage = "pretrain" if "pretrain" in runs else "finetune" if "finetune" in runs else None
    if stage is None:
        return None
    run = runs[stage]
    if run.info is not None and run.info.method is not None:
        return run.info.method
    return described(stage, _config(run.run_dir, planned.get(stage)))


def _results(data: dict | None, where: str) -> tuple[RunResults | None, str | None]:
    """The results record, or None and the one line that says why it cannot be read."""
    if data is None:
        return None, None
    try:
        return results_from_json(data, where), None
    except RecordError as error:
        return None, str(error)


def _stage_run(stage: str, row: dict[str, Any], run_dir: Path | None) -> StageRun:
    status, error = row["status"], row.get("error")
    results = None
    if status == "done":
        results, damaged = _results(row.get("results"), f"{row['variant']}/{stage} results")
        status, error = ("damaged", damaged) if damaged else (status, error)
    return StageRun(
        stage=stage,
        status=status,
        run_dir=run_dir,
        attempts=row.get("attempts"),
        started=row.get("started"),
        finished=row.get("finished"),
        seconds=row.get("seconds"),
        error=error,
        results=results,
        info=_info(run_dir),
    )


def _extra_run(stage: str, run_dir: Path, data: dict | None) -> StageRun:
    results, damaged = _results(data, str(run_dir / "results.json"))
    status = "damaged" if damaged else "done" if results is not None else "missing"
    return StageRun(stage, status, run_dir, error=damaged, results=results, info=_info(run_dir))


def extra_variant(folder: Path) -> Variant:
    """A variant from an evaluated run folder given on the command line: a finetune run with ``evaluation/``, or
    an evaluate output folder. It is named after its folder, or the first folder above it not named after a stage
    (pretrain, finetune, evaluate, evaluation) or a seed (seed<k>): a sweep's ``runs/<variant>/seed<k>/<stage>`` is
    ``<variant>``; its seed is its runs' ``train.seed``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}")
    own = _read_json(folder / "results.json") or {}
    if own.get("task") == "evaluate":
        evaluate_dir = folder
    elif (folder / "evaluation" / "results.json").is_file():
        evaluate_dir = folder / "evaluation"
    else:
        raise FileNotFoundError(
            f"{folder} is neither an evaluate output folder (results.json with task evaluate) nor a run folder "
            f"with evaluation/results.json; run `mixmask evaluate {folder}` first"
        )
    evaluate = _read_json(evaluate_dir / "results.json") or {}
    evaluated = folder if evaluate_dir.parent == folder else _resolve(evaluate.get("run"), Path.cwd())
    if evaluated is not None and not evaluated.is_dir():
        evaluated = None
    pretrain_dir = _resolve(evaluate.get("reconstruction_run"), Path.cwd())
    if evaluated is not None and evaluate.get("run_task") == "pretrain":
        pretrain_dir = evaluated
    runs: dict[str, StageRun] = {}
    if pretrain_dir is not None and pretrain_dir.is_dir():
        runs["pretrain"] = _extra_run("pretrain", pretrain_dir, _read_json(pretrain_dir / "results.json"))
    if evaluated is not None and evaluated != pretrain_dir:
        runs["finetune"] = _extra_run("finetune", evaluated, _read_json(evaluated / "results.json"))
    runs["evaluate"] = _extra_run("evaluate", evaluate_dir, evaluate)
    named = folder.resolve()
    layout = ("pretrain", "finetune", "evaluate", "evaluation")
    while named.parent != named and (named.name in layout or re.fullmatch(r"seed\d+", named.name)):
        named = named.parent
    seed = next((run.info.seed for run in runs.values() if run.info is not None), None)
    name = named.name
    return Variant(name, f"extra run: {folder}", "extra", method_of(runs, {}), runs, seed=seed)


def read_meta(sweep_dir: str | Path) -> dict[str, Any]:
    """The store's meta (name, description, sweep_text, created, machine, mixmask_version, ...); {} without one."""
    path = Path(sweep_dir) / "results.sqlite"
    if not path.is_file():
        return {}
    store = ResultsStore(path)
    try:
        return store.meta()
    finally:
        store.close()


def collect_variants(sweep_dir: str | Path, extra_runs: tuple | list = ()) -> list[Variant]:
    """Every variant of the sweep in sweep order (one record per replicate seed), then one per extra run folder
    (named as ``extra_variant`` says; a suffix -2, -3 ... when a sweep variant has the name, or an extra run of the
    same seed).
    Raises FileNotFoundError when the folder has no results store and no extra runs are given."""
    sweep_dir = Path(sweep_dir)
    store_path = sweep_dir / "results.sqlite"
    if not store_path.is_file() and not extra_runs:
        raise FileNotFoundError(
            f"{store_path} not found: {sweep_dir} is not a sweep folder (run `mixmask sweep SWEEP.yaml --out "
            f"{sweep_dir}` first, or name evaluated run folders: mixmask report {sweep_dir} RUN_DIR ...)"
        )
    variants: list[Variant] = []
    if store_path.is_file():
        store = ResultsStore(store_path)
        try:
            rows = store.runs()
            for v in store.variants():
                planned = v["spec"].get("configs") or {}
                description = str(v["spec"].get("description") or "")
                seeds = dict.fromkeys(row["seed"] for row in rows if row["variant"] == v["name"])
                for seed in seeds:  # one record per replicate
                    runs = {
                        row["stage"]: _stage_run(row["stage"], row, _resolve(row["run_dir"], sweep_dir))
                        for row in rows
                        if row["variant"] == v["name"] and row["seed"] == seed
                    }
                    method = method_of(runs, planned, v["spec"].get("weights"))
                    variants.append(Variant(v["name"], description, "sweep", method, runs, planned, seed))
        finally:
            store.close()
    sweep_names = {v.name for v in variants}
    for folder in extra_runs:  # folders of one name and different seeds are one variant's seeds
        extra = extra_variant(Path(folder))
        taken = sweep_names | {v.name for v in variants if v.source == "extra" and v.seed == extra.seed}
        base, k = extra.name, 2
        while extra.name in taken:
            extra.name, k = f"{base}-{k}", k + 1
        variants.append(extra)
    return variants
