"""The tables of a study report, read from a sweep folder (its results store and run folders) and extra run folders.

``collect_variants`` gathers every variant with its stage statuses, run folders and results; the table functions
turn that into rows of plain values (fractions, counts, None where missing), and each table has one ``*_grid``
function that formats the rows as header, body cells and footnotes, so the Markdown, CSV and HTML versions of a
table always show the same numbers. Stages that are pending, running or failed stay in the rows (as missing values
and a status), never silently dropped.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from mixmask.config import is_vit
from mixmask.evaluation.imagenet_x import FACTORS, wilson_interval

STAGES = ("pretrain", "finetune", "evaluate")
TABLE1_FACTORS: tuple[str, ...] = (
    "background",
    "color",
    "partial_view",
    "pattern",
    "pose",
    "shape",
    "subcategory",
    "texture",
    "blocking",
)
BLOCKING_PARTS = ("object_blocking", "person_blocking")  # pooled into Table 1's "blocking"
# The paper's Table 1 shows the factors above; the other ImageNet-X factors follow them, so every factor is shown.
OTHER_FACTORS = tuple(f for f in FACTORS if f not in TABLE1_FACTORS and f not in BLOCKING_PARTS)
TABLE1_COLUMNS: tuple[str, ...] = (*TABLE1_FACTORS, *OTHER_FACTORS, "val_top1")
HEADERS = {
    "partial_view": "partial view",
    "multiple_objects": "multiple objects",
    "blocking": "blocking*",
    "val_top1": "val. top-1",
}
MISSING = "–"
THIN = "†"
OCCLUSION_RATIO = 0.5  # the occlusion error ratio of the summary is read at this occlusion ratio


# ------------------------------------------------------------------------------------------------ collecting


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


def _pretrain_config(pretrain_dir: Path | None, planned: dict | None) -> dict:
    """A pretraining run's config.yaml as a dict (checked with load_config), else the planned one."""
    from mixmask.config import ConfigError, load_config, to_dict

    if pretrain_dir is not None and (pretrain_dir / "config.yaml").is_file():
        try:
            return to_dict(load_config(pretrain_dir / "config.yaml"))
        except (ConfigError, OSError, TypeError, ValueError):  # a config of another version: read it as it is
            return yaml.safe_load((pretrain_dir / "config.yaml").read_text()) or {}
    return planned or {}


METHOD_NAMES = {"a2mim": "A2MIM", "simmim": "SimMIM", "mae": "MAE", "mocov3": "MoCo v3"}


def method_label(model: dict | None) -> str:
    """``""`` for A2MIM on a CNN (the study's default), else the method and, for ViTs, the backbone:
    ``SimMIM``, ``MAE [vit_tiny_p8]``."""
    model = model or {}
    method, backbone = model.get("method") or "a2mim", str(model.get("backbone") or "")
    vit = is_vit(backbone)
    no_token = method == "a2mim" and model.get("token_mode") == "none"  # the ablation without the mask token
    if method == "a2mim" and not vit and not no_token:
        return ""
    return METHOD_NAMES.get(method, method) + (", no token" if no_token else "") + (f" [{backbone}]" if vit else "")


def strategies(masking: dict | None, *reconstructions: list | None) -> list[dict[str, Any]]:
    """Each strategy's patch size, ratio, kind and the stage its token entered (from the runs' reconstruction
    results, which record the resolved stage; the config's own stage when it is explicit; else None)."""
    if not masking:
        return []
    resolved: dict[int, int] = {}
    for entries in reconstructions:
        for entry in entries or []:
            if isinstance(entry, dict) and "strategy" in entry and "stage" in entry:
                resolved.setdefault(int(entry["strategy"]), int(entry["stage"]))
    out = []
    for i, s in enumerate(masking.get("strategies") or []):
        stage = resolved.get(i, s.get("stage") if isinstance(s.get("stage"), int) else None)
        out.append({"patch_size": s.get("patch_size"), "ratio": s.get("ratio"), "kind": s.get("kind"), "stage": stage})
    return out


def strategy_label(strategy: dict, with_stage: bool = True) -> str:
    """``patch 4 / 0.6 @ stage 1`` (``blockwise`` in front for BEiT-style blocks)."""
    kind = "blockwise " if strategy.get("kind") == "blockwise" else ""
    text = f"{kind}patch {strategy.get('patch_size')} / {strategy.get('ratio')}"
    if with_stage and strategy.get("stage") is not None:
        text += f" @ stage {strategy['stage']}"
    return text


def masking_label(
    strategy_list: list[dict], mix: str | None = None, init: str | None = None, method: str = "", token: bool = True
) -> str:
    """A human label for a variant's masking: one strategy, ``mixed: a | b``, or ``none (scratch)``; after the
    method when it is not A2MIM on a CNN (``SimMIM: patch 8 / 0.6 @ stage 0``). ``token=False`` (no mask token, as
    MAE): no stage is shown, since nothing enters there."""
    if not strategy_list:
        label = "none (scratch)" if not init else f"none (init: {Path(init).name})"
    elif len(strategy_list) == 1:
        label = strategy_label(strategy_list[0], with_stage=token)
    else:
        how = "mixed per sample" if mix == "per_sample" else "mixed"
        label = f"{how}: " + " | ".join(strategy_label(s, with_stage=False) for s in strategy_list)
    return f"{method}: {label}" if method else label


def _finetune_init(finetune_dir: Path | None, spec: dict | None) -> str:
    """``finetune.init`` of the finetune run (its config.yaml), else of the planned config."""
    raw = None
    if finetune_dir is not None and (finetune_dir / "config.yaml").is_file():
        raw = yaml.safe_load((finetune_dir / "config.yaml").read_text()) or {}
    elif spec:
        raw = (spec.get("configs") or {}).get("finetune")
    return str(((raw or {}).get("finetune") or {}).get("init") or "")


def _variant(
    name: str,
    spec: dict,
    runs: dict[str, dict],
    source: str,
) -> dict[str, Any]:
    """One variant's dict from its stage runs ({stage: run row with run_dir resolved to a Path})."""
    results = {stage: (row.get("results") if row.get("status") == "done" else None) for stage, row in runs.items()}
    paths = {stage: row.get("run_dir") for stage, row in runs.items()}
    planned = (spec.get("configs") or {}).get("pretrain")
    has_pretrain = "pretrain" in runs
    pretrain_dir = paths.get("pretrain")
    evaluate = results.get("evaluate") or {}
    if not has_pretrain and evaluate.get("reconstruction_run"):  # an extra run: its pretraining run is named there
        pretrain_dir = _resolve(evaluate["reconstruction_run"], Path.cwd())
        has_pretrain = pretrain_dir is not None and pretrain_dir.is_dir()
    pretrain_config = _pretrain_config(pretrain_dir, planned) if has_pretrain else {}
    model = pretrain_config.get("model") or {}
    contrastive = model.get("method") == "mocov3"  # two views, no masking
    masking = None if contrastive else pretrain_config.get("masking")
    pretrain_results = results.get("pretrain") or _read_json(pretrain_dir / "results.json" if pretrain_dir else None)
    strategy_list = strategies(masking, (pretrain_results or {}).get("reconstruction"), evaluate.get("reconstruction"))
    init = "" if has_pretrain else _finetune_init(paths.get("finetune"), spec)
    finetune_backbone = str((((spec.get("configs") or {}).get("finetune") or {}).get("model") or {}).get("backbone"))
    if contrastive:
        label = f"{method_label(model)}: two views, no mask"
    elif not has_pretrain and not init and is_vit(finetune_backbone):  # the study's default network is a CNN
        label = f"none (scratch, {finetune_backbone})"
    elif strategy_list or not has_pretrain:
        method = method_label(model) if has_pretrain else ""
        label = masking_label(
            strategy_list, (masking or {}).get("mix"), init, method, model.get("token_mode") != "none"
        )
    else:
        label = f"unknown (pretrain {(runs.get('pretrain') or {}).get('status') or 'not found'})"
    return {
        "name": name,
        "description": str(spec.get("description") or ""),
        "spec": spec,
        "source": source,
        "stages": list(runs),
        "status": {stage: row.get("status") for stage, row in runs.items()},
        "paths": paths,
        "runs": runs,
        "results": {stage: results.get(stage) for stage in STAGES},
        "strategies": strategy_list,
        "mix": (masking or {}).get("mix"),
        "masking": label,
    }


def _extra_variant(folder: Path, taken: set[str]) -> dict[str, Any]:
    """A variant from an evaluated run folder given on the command line: a finetune run with ``evaluation/``, or
    an evaluate output folder. It is named after its folder (the parent's name for a folder named evaluation or
    evaluate), with a suffix when that name is taken."""
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
    runs: dict[str, dict] = {}
    evaluated = _resolve(evaluate.get("run"), Path.cwd())
    if evaluate_dir.parent == folder:  # a run folder with evaluation/ inside: that run was evaluated
        evaluated = folder
    if evaluated is not None and not evaluated.is_dir():
        evaluated = None
    evaluated_results = _read_json(evaluated / "results.json") if evaluated else None
    pretrain_dir = _resolve(evaluate.get("reconstruction_run"), Path.cwd())
    if evaluated is not None and evaluate.get("run_task") == "pretrain":
        pretrain_dir = evaluated
    elif evaluated is not None:
        runs["finetune"] = _extra_run(evaluated, evaluated_results)
    if pretrain_dir is not None and pretrain_dir.is_dir():
        runs = {"pretrain": _extra_run(pretrain_dir, _read_json(pretrain_dir / "results.json"))} | runs
    runs["evaluate"] = _extra_run(evaluate_dir, evaluate)
    name = folder.name if folder.name not in ("evaluation", "evaluate") else folder.resolve().parent.name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return _variant(name, {"description": f"extra run: {folder}"}, runs, "extra")


def _extra_run(run_dir: Path, results: dict | None) -> dict[str, Any]:
    return {
        "run_dir": run_dir,
        "status": "done" if results is not None else "missing",
        "attempts": None,
        "started": None,
        "finished": None,
        "seconds": None,
        "error": None,
        "results": results,
    }


def read_meta(sweep_dir: str | Path) -> dict[str, Any]:
    """The store's meta (name, description, sweep_text, created, machine, mixmask_version, ...); {} without one."""
    path = Path(sweep_dir) / "results.sqlite"
    if not path.is_file():
        return {}
    from mixmask.store import ResultsStore

    store = ResultsStore(path)
    try:
        return store.meta()
    finally:
        store.close()


def collect_variants(sweep_dir: str | Path, extra_runs: tuple | list = ()) -> list[dict[str, Any]]:
    """Every variant of the sweep in sweep order, then one per extra run folder. Each is a dict with ``name``,
    ``description``, ``spec``, ``source`` (sweep | extra), ``stages``, ``status`` {stage: pending | running | done |
    failed | missing}, ``paths`` {stage: Path}, ``runs`` {stage: the store's run row}, ``results`` {pretrain,
    finetune, evaluate: results.json or None until done}, ``strategies``, ``mix`` and ``masking`` (a label such as
    ``patch 4 / 0.6 @ stage 1``, ``mixed: patch 4 / 0.6 | patch 16 / 0.4`` or ``none (scratch)``).
    Raises FileNotFoundError when the folder has no results store and no extra runs are given."""
    sweep_dir = Path(sweep_dir)
    store_path = sweep_dir / "results.sqlite"
    if not store_path.is_file() and not extra_runs:
        raise FileNotFoundError(
            f"{store_path} not found: {sweep_dir} is not a sweep folder (run `mixmask sweep SWEEP.yaml --out "
            f"{sweep_dir}` first, or name evaluated run folders: mixmask report {sweep_dir} RUN_DIR ...)"
        )
    variants: list[dict[str, Any]] = []
    if store_path.is_file():
        from mixmask.store import ResultsStore

        store = ResultsStore(store_path)
        try:
            rows = store.runs()
            for v in store.variants():
                runs = {}
                for row in (r for r in rows if r["variant"] == v["name"]):
                    runs[row["stage"]] = row | {"run_dir": _resolve(row["run_dir"], sweep_dir)}
                variants.append(_variant(v["name"], v["spec"], runs, "sweep"))
        finally:
            store.close()
    for folder in extra_runs:
        variants.append(_extra_variant(Path(folder), {v["name"] for v in variants}))
    return variants


# ------------------------------------------------------------------------------------------------ formatting


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; the dash when missing."""
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _num(value: float | None, spec: str = ".2f") -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def duration(seconds: float | None) -> str:
    """Wall time as ``42 s``, ``3 min 05 s`` or ``2 h 04 min``."""
    if seconds is None:
        return MISSING
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def stage_state(variant: dict, stage: str) -> str:
    """What a stage cell says: its wall time when done, else its status (or ``not in variant``)."""
    if stage not in variant["status"]:
        return "no " + stage if stage == "pretrain" else "not run"
    status = variant["status"][stage]
    if status == "done":
        return duration((variant["runs"].get(stage) or {}).get("seconds")) if variant["source"] == "sweep" else "done"
    return status or "unknown"


def factors_of(variant: dict) -> dict | None:
    """The evaluate stage's factor results, or None (not done, skipped, or not measured)."""
    factors = (variant["results"].get("evaluate") or {}).get("factors")
    return factors if isinstance(factors, dict) and "factors" in factors else None


def _factors_note(variant: dict) -> str | None:
    evaluate = variant["results"].get("evaluate")
    status = variant["status"].get("evaluate")
    if status is None:
        return "no evaluate stage"
    if evaluate is None:
        return f"evaluate {status}"
    factors = evaluate.get("factors")
    if isinstance(factors, dict) and "skipped" in factors:
        return f"factors skipped: {factors['skipped']}"
    if factors is None:
        return "factors not measured"
    return None


def _min_count(factors: dict | None) -> int | None:
    value = ((factors or {}).get("settings") or {}).get("min_count")
    return int(value) if isinstance(value, int | float) else None


def factor_cell(factors: dict | None, name: str) -> dict[str, Any]:
    """``{accuracy, count, correct, ci95, thin}`` of one factor, ``blocking`` pooled from object and person
    blocking (summed correct over summed images, its own Wilson interval, thin when the pooled count is below the
    evaluation's min_count)."""
    empty = {"accuracy": None, "count": None, "correct": None, "ci95": [None, None], "thin": False}
    if factors is None:
        return empty
    entries = factors["factors"]
    if name != "blocking":
        entry = entries.get(name)
        return empty if entry is None else {k: entry.get(k, empty[k]) for k in empty}
    parts = [entries[p] for p in BLOCKING_PARTS if p in entries]
    if not parts:
        return empty
    count = sum(int(p.get("count") or 0) for p in parts)
    correct = sum(int(p.get("correct") or 0) for p in parts)
    min_count = _min_count(factors)
    thin = count < min_count if min_count is not None else any(p.get("thin") for p in parts)
    low, high = wilson_interval(correct, count)
    nan_free = [None if math.isnan(x) else x for x in (low, high)]
    return {
        "accuracy": correct / count if count else None,
        "count": count,
        "correct": correct,
        "ci95": nan_free,
        "thin": thin,
    }


def _markdown(header: list[str], body: list[list[str]], footnotes: list[str], label_columns: int = 2) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [line(header), "|" + "|".join([":---"] * label_columns + ["---:"] * (len(header) - label_columns)) + "|"]
    lines += [line(row) for row in body]
    if footnotes:  # hard line breaks; a leading * would start a Markdown list
        lines += [""] + [("\\" + note if note.startswith("*") else note) + "  " for note in footnotes]
    return "\n".join(lines) + "\n"


def _write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------ Table 1


def table1(variants: list[dict]) -> list[dict[str, Any]]:
    """One row per variant: ``{variant, masking, status, note, min_count, cells: {column: factor_cell}}``, where
    the ``val_top1`` cell holds the evaluate stage's top-1 validation accuracy."""
    rows = []
    for v in variants:
        factors = factors_of(v)
        cells = {name: factor_cell(factors, name) for name in (*TABLE1_FACTORS, *OTHER_FACTORS)}
        accuracy = (v["results"].get("evaluate") or {}).get("accuracy") or {}
        cells["val_top1"] = {
            "accuracy": accuracy.get("top1"),
            "count": accuracy.get("images"),
            "correct": None,
            "ci95": [None, None],
            "thin": False,
        }
        rows.append(
            {
                "variant": v["name"],
                "masking": v["masking"],
                "status": v["status"].get("evaluate"),
                "note": _factors_note(v),
                "min_count": _min_count(factors),
                "settings": (factors or {}).get("settings") or {},
                "cells": cells,
            }
        )
    return rows


def _thin_footnote(rows: list[dict]) -> str:
    counts = sorted({r["min_count"] for r in rows if r["min_count"] is not None})
    if not counts:
        return f"{THIN} thin: fewer images than the evaluation's min_factor_images; read as anecdotes."
    limit = str(counts[0]) if len(counts) == 1 else " / ".join(map(str, counts)) + " (per variant)"
    return f"{THIN} fewer than {limit} images (thin): read these as anecdotes, not accuracies."


def table1_grid(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body cells (percent, ``†`` on thin factors, ``–`` when missing) and footnotes of Table 1."""
    header = ["variant", "masking", *[HEADERS.get(c, c) for c in TABLE1_COLUMNS]]
    body = []
    for r in rows:
        name = r["variant"] + (f" ({r['note']})" if r["note"] else "")
        cells = [name, r["masking"]]
        for column in TABLE1_COLUMNS:
            cell = r["cells"][column]
            cells.append(pct(cell["accuracy"]) + (THIN if cell["thin"] and cell["accuracy"] is not None else ""))
        body.append(cells)
    sources = sorted(
        {f"{s.get('source', '?')}, {s.get('which_factor', 'top')} factor" for r in rows for s in [r["settings"]] if s}
    )
    footnotes = [
        "Top-1 accuracy (%) of each finetuned variant on the images showing each ImageNet-X factor"
        + (f" ({'; '.join(sources)})" if sources else "")
        + ", and on the validation split (val. top-1). The first "
        + f"{len(TABLE1_FACTORS)} factor columns are those of the paper's Table 1; "
        + ", ".join(HEADERS.get(f, f) for f in OTHER_FACTORS)
        + " are the other ImageNet-X factors.",
        "* blocking pools object_blocking and person_blocking: their summed correct images over their summed "
        "image counts.",
        _thin_footnote(rows),
        f"{MISSING} not available (stage not done, or the metric was skipped).",
    ]
    return header, body, footnotes


def table1_markdown(rows: list[dict]) -> str:
    header, body, footnotes = table1_grid(rows)
    return _markdown(header, body, footnotes)


def table1_csv(rows: list[dict], path: str | Path) -> Path:
    """Accuracies in % with one decimal (empty when missing); ``thin`` lists the thin columns (``;``-separated)."""
    header = ["variant", "masking", "evaluate_status", *TABLE1_COLUMNS, "thin", "min_count"]
    out = []
    for r in rows:
        values = [pct(r["cells"][c]["accuracy"]).replace(MISSING, "") for c in TABLE1_COLUMNS]
        thin = ";".join(c for c in TABLE1_COLUMNS if r["cells"][c]["thin"])
        out.append([r["variant"], r["masking"], r["status"] or "", *values, thin, r["min_count"] or ""])
    return _write_csv(path, header, out)


# ------------------------------------------------------------------------------------------------ counts


def counts(variants: list[dict]) -> list[dict[str, Any]]:
    """Long rows ``{variant, factor, count, correct, accuracy, ci_low, ci_high, thin}`` for every factor (and pooled
    blocking) of every variant with factor results."""
    rows = []
    for v in variants:
        factors = factors_of(v)
        if factors is None:
            continue
        for name in (*FACTORS, "blocking"):
            cell = factor_cell(factors, name)
            low, high = (cell["ci95"] or [None, None])[:2]
            rows.append(
                {
                    "variant": v["name"],
                    "factor": name,
                    "count": cell["count"],
                    "correct": cell["correct"],
                    "accuracy": cell["accuracy"],
                    "ci_low": low,
                    "ci_high": high,
                    "thin": bool(cell["thin"]),
                }
            )
    return rows


def counts_grid(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """Factors down, variants across; a cell reads ``correct/count: accuracy [95 % interval]`` in %."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    factors = list(dict.fromkeys(r["factor"] for r in rows))
    index = {(r["variant"], r["factor"]): r for r in rows}
    body = []
    for factor in factors:
        cells = ["blocking* (pooled)" if factor == "blocking" else factor]
        for variant in variants:
            r = index.get((variant, factor))
            if r is None or not r["count"]:
                cells.append(MISSING if r is None else "0 images")
                continue
            mark = THIN if r["thin"] else ""
            cells.append(
                f"{r['correct']}/{r['count']}: {pct(r['accuracy'])}{mark} [{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
            )
        body.append(cells)
    footnotes = [
        "Correct images / images showing the factor: accuracy in % [95 % Wilson interval].",
        "* blocking pools object_blocking and person_blocking (summed correct over summed counts).",
        f"{THIN} thin: fewer images than the evaluation's min_factor_images.",
    ]
    return ["factor", *variants], body, footnotes


def counts_markdown(rows: list[dict]) -> str:
    if not rows:
        return "No variant has factor results yet.\n"
    header, body, footnotes = counts_grid(rows)
    return _markdown(header, body, footnotes, label_columns=1)


def counts_csv(rows: list[dict], path: str | Path) -> Path:
    """Full-precision long table (fractions, not %), one line per variant and factor."""
    header = ["variant", "factor", "count", "correct", "accuracy", "ci_low", "ci_high", "thin"]
    body = [["" if r[k] is None else r[k] for k in header] for r in rows]
    return _write_csv(path, header, body)


# ------------------------------------------------------------------------------------------------ summary


def occlusion_error_ratio(evaluate: dict | None, ratio: float = OCCLUSION_RATIO) -> float | None:
    """``(1 - accuracy with ``ratio`` of the patches occluded) / (1 - clean accuracy)``, the clean accuracy being
    the occlusion curve's own point at ratio 0 (the same images), else the evaluate stage's top-1. 1.0: occlusion
    costs nothing; 2.0: twice the clean error. None when ``ratio`` was not measured or the clean error is 0."""
    occlusion = (evaluate or {}).get("occlusion")
    if not isinstance(occlusion, dict) or "ratios" not in occlusion:
        return None
    points = dict(zip(occlusion["ratios"], occlusion["accuracy"], strict=False))
    occluded = next((a for r, a in points.items() if abs(r - ratio) < 1e-9), None)
    clean = next((a for r, a in points.items() if abs(r) < 1e-9), None)
    if clean is None:
        clean = ((evaluate or {}).get("accuracy") or {}).get("top1")
    if occluded is None or clean is None or clean >= 1:
        return None
    return (1 - occluded) / (1 - clean)


def psnr(variant: dict) -> list[dict[str, Any]]:
    """Masked-pixel PSNR per strategy: from the evaluate stage (the sweep's shared images), else from pretraining."""
    entries = (variant["results"].get("evaluate") or {}).get("reconstruction")
    if not entries:
        entries = (variant["results"].get("pretrain") or {}).get("reconstruction")
    return [e for e in entries or [] if isinstance(e, dict) and e.get("psnr_masked") is not None]


def summary(variants: list[dict]) -> list[dict[str, Any]]:
    """One row per variant of headline numbers (fractions and seconds; None where missing)."""
    rows = []
    for v in variants:
        evaluate = v["results"].get("evaluate") or {}
        factors = factors_of(v)
        shape = evaluate.get("shape_bias")
        worst = (factors or {}).get("worst_factor")
        texture = factor_cell(factors, "texture") if factors else {}
        rows.append(
            {
                "variant": v["name"],
                "masking": v["masking"],
                "val_top1": (evaluate.get("accuracy") or {}).get("top1"),
                "finetune_top1": ((v["results"].get("finetune") or {}).get("accuracy") or {}).get("top1"),
                "factor_average": (factors or {}).get("average"),
                "worst_factor": worst,
                "worst_factor_accuracy": factor_cell(factors, worst)["accuracy"] if worst else None,
                "texture_error_ratio": (factors or {}).get("factors", {}).get("texture", {}).get("error_ratio"),
                "texture_thin": bool(texture.get("thin")),
                "occlusion_error_ratio": occlusion_error_ratio(evaluate),
                "shape_bias": shape.get("shape_bias") if isinstance(shape, dict) else None,
                "psnr": [(e.get("patch_size"), e.get("ratio"), e["psnr_masked"]) for e in psnr(v)],
                "status": dict(v["status"]),
                "seconds": {s: (v["runs"].get(s) or {}).get("seconds") for s in v["stages"]},
                "stage_cells": {s: stage_state(v, s) for s in STAGES},
            }
        )
    return rows


def summary_grid(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    header = [
        "variant",
        "masking",
        "val. top-1",
        "factor avg.",
        "worst factor",
        "texture ER",
        f"occlusion ER @{OCCLUSION_RATIO:g}",
        "shape bias",
        "masked PSNR (dB)",
        "pretrain",
        "finetune",
        "evaluate",
    ]
    body = []
    for r in rows:
        worst = MISSING if not r["worst_factor"] else f"{r['worst_factor']} ({pct(r['worst_factor_accuracy'])})"
        texture = _num(r["texture_error_ratio"]) + (
            THIN if r["texture_thin"] and r["texture_error_ratio"] is not None else ""
        )
        body.append(
            [
                r["variant"],
                r["masking"],
                pct(r["val_top1"]),
                pct(r["factor_average"]),
                worst,
                texture,
                _num(r["occlusion_error_ratio"]),
                _num(r["shape_bias"], ".3f"),
                " / ".join(f"{value:.1f}" for _, _, value in r["psnr"]) or MISSING,
                *[r["stage_cells"][s] for s in STAGES],
            ]
        )
    footnotes = [
        "val. top-1 and factor avg. (accuracy over all factor-annotated images) in %; worst factor: the factor with "
        "the lowest accuracy (%).",
        "texture ER: texture error ratio (1 - texture accuracy) / (1 - factor avg.); 1.0 = as error-prone as the "
        f"average image. {THIN} thin.",
        f"occlusion ER @{OCCLUSION_RATIO:g}: (1 - accuracy with {OCCLUSION_RATIO:.0%} of the patches occluded) / "
        "(1 - clean accuracy on the same images); 1.0 = occlusion costs nothing.",
        "shape bias: shape decisions / (shape + texture decisions) on cue-conflict images. masked PSNR: "
        "reconstruction of the masked pixels per masking strategy (the same images for every variant).",
        "pretrain / finetune / evaluate: the stage's wall time when done, else its status (pending, running, failed).",
    ]
    return header, body, footnotes


def summary_markdown(rows: list[dict]) -> str:
    header, body, footnotes = summary_grid(rows)
    return _markdown(header, body, footnotes)


def summary_csv(rows: list[dict], path: str | Path) -> Path:
    """Full-precision values; ``psnr`` as ``patch/ratio=dB`` pairs; stage columns hold seconds or the status."""
    header = [
        "variant",
        "masking",
        "val_top1",
        "finetune_top1",
        "factor_average",
        "worst_factor",
        "worst_factor_accuracy",
        "texture_error_ratio",
        "occlusion_error_ratio",
        "shape_bias",
        "psnr",
    ]
    body = []
    for r in rows:
        values = ["" if r[k] is None else r[k] for k in header[:-1]]
        values.append(";".join(f"{p}/{q}={v:.3f}" for p, q, v in r["psnr"]))
        stages = [
            r["seconds"].get(s)
            if r["status"].get(s) == "done" and r["seconds"].get(s) is not None
            else r["status"].get(s, "")
            for s in STAGES
        ]
        body.append(values + stages)
    return _write_csv(path, header + [f"{s}_seconds_or_status" for s in STAGES], body)


def safe_name(name: str) -> str:
    """A variant name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "variant"
