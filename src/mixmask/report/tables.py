"""The tables of a study report, from the ``Variant`` records ``report.collect`` reads.

The table functions turn the variants into rows of plain values (fractions, counts, None where missing), and each
table has one ``*_grid`` function that formats the rows as header, body cells and footnotes, so the Markdown, CSV and
HTML versions of a table always show the same numbers. Stages that are pending, running or failed stay in the rows
(as missing values and a status), never silently dropped.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

from mixmask.evaluation.imagenet_x import FACTORS, wilson_interval
from mixmask.results import EvaluateResults, FactorCell, Factors, Reconstruction, Variant, by_name

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


# ------------------------------------------------------------------------------------------------ formatting


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: float | None, sd: float | None = None) -> str:
    """A fraction as a percentage with one decimal (``± sd`` across seeds when given); the dash when missing."""
    if _missing(value):
        return MISSING
    return f"{100 * value:.1f}" + ("" if _missing(sd) else f" ±{100 * sd:.1f}")


def _num(value: float | None, spec: str = ".2f", sd: float | None = None) -> str:
    if _missing(value):
        return MISSING
    return format(value, spec) + ("" if _missing(sd) else f" ±{format(sd, spec)}")


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None below two values) and count of the values that are not missing."""
    present = [float(v) for v in values if not _missing(v)]
    if not present:
        return None, None, 0
    mean = sum(present) / len(present)
    sd = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1)) if len(present) > 1 else None
    return mean, sd, len(present)


def seeds_note(replicates: list[Variant]) -> str | None:
    """``3 seeds`` for a variant run with several seeds; None for one."""
    return f"{len(replicates)} seeds" if len(replicates) > 1 else None


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


def stage_state(variant: Variant, stage: str) -> str:
    """What a stage cell says: its wall time when done, else its status (or ``not in variant``)."""
    run = variant.runs.get(stage)
    if run is None:
        return "no " + stage if stage == "pretrain" else "not run"
    if run.status == "done":
        return duration(run.seconds) if variant.source == "sweep" else "done"
    return run.status or "unknown"


def factors_of(variant: Variant) -> Factors | None:
    """The evaluate stage's factor results, or None (not done, skipped, or not measured)."""
    evaluation = variant.evaluation
    return evaluation.factors if evaluation is not None and isinstance(evaluation.factors, Factors) else None


def _factors_note(variant: Variant) -> str | None:
    evaluation = variant.evaluation
    status = variant.status("evaluate")
    if status is None:
        return "no evaluate stage"
    if evaluation is None:
        return f"evaluate {status}"
    if evaluation.factors is None:
        return "factors not measured"
    if not isinstance(evaluation.factors, Factors):
        return f"factors skipped: {evaluation.factors.skipped}"
    return None


EMPTY_CELL = FactorCell(accuracy=None, error_ratio=None, count=0, correct=0, ci95=(None, None), thin=False)


def factor_cell(factors: Factors | None, name: str) -> FactorCell:
    """One factor's cell (empty when missing), ``blocking`` pooled from object and person blocking (summed correct
    over summed images, its own Wilson interval, thin when the pooled count is below the evaluation's min_count)."""
    if factors is None:
        return EMPTY_CELL
    if name != "blocking":
        return factors.factors.get(name, EMPTY_CELL)
    parts = [factors.factors[p] for p in BLOCKING_PARTS if p in factors.factors]
    if not parts:
        return EMPTY_CELL
    count, correct = sum(p.count for p in parts), sum(p.correct for p in parts)
    min_count = factors.min_count
    thin = count < min_count if min_count is not None else any(p.thin for p in parts)
    low, high = (None if math.isnan(x) else x for x in wilson_interval(correct, count))
    accuracy = correct / count if count else None
    return FactorCell(accuracy=accuracy, error_ratio=None, count=count, correct=correct, ci95=(low, high), thin=thin)


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


def _table1_cells(v: Variant) -> dict[str, FactorCell]:
    factors = factors_of(v)
    cells = {name: factor_cell(factors, name) for name in (*TABLE1_FACTORS, *OTHER_FACTORS)}
    accuracy = v.evaluation.accuracy if v.evaluation is not None else None
    top1, images = (accuracy.top1, accuracy.images or 0) if accuracy is not None else (None, 0)
    cells["val_top1"] = FactorCell(top1, None, images, 0, (None, None), False)
    return cells


def _pooled(cells: list[FactorCell]) -> tuple[FactorCell, float | None]:
    """One column's cells of a variant's replicates as one cell (accuracy and error ratio: the mean over seeds;
    counts summed; thin when thin in any seed) and the standard deviation of the accuracy across seeds."""
    accuracy, sd, n = mean_sd([c.accuracy for c in cells])
    if len(cells) == 1:
        return cells[0], None
    error_ratio = mean_sd([c.error_ratio for c in cells])[0]
    count, correct = sum(c.count for c in cells), sum(c.correct for c in cells)
    return FactorCell(accuracy, error_ratio, count, correct, (None, None), any(c.thin for c in cells)), sd


def _column_metric(column: str) -> str:
    return "top1" if column == "val_top1" else f"factor_acc/{column}"


def _marks_note(marked: bool, rows: list[dict[str, Any]]) -> str | None:
    references = list(dict.fromkeys(r["reference"] for r in rows if r["reference"]))
    if not references:
        return None
    reference = (
        f"the reference ({references[0]})"
        if len(references) == 1
        else f"the reference of the variant's backbone ({', '.join(references)})"
    )
    return (
        f"↑ / ↓: higher / lower than {reference} beyond noise: Holm-corrected p < 0.05 of a test "
        "paired on the same images (McNemar per seed; hierarchical bootstrap over seeds and images when pooled), "
        "intervals in comparisons.csv. No mark: not resolved." + ("" if marked else " No difference is resolved.")
    )


def table1(
    variants: list[Variant], marks: dict[tuple[str, str], str] | None = None, references: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per variant: ``{variant, masking, status, note, min_count, seeds, cells: {column: FactorCell},
    sd: {column: sd across seeds}, marks: {column: ↑ or ↓}}``, where the ``val_top1`` cell holds the evaluate
    stage's top-1 validation accuracy. A variant run with several seeds shows the mean over its seeds; ``marks``
    (``comparisons.marks``) flags the differences to each variant's reference (``references``,
    ``comparisons.assign_references``) that are resolved."""
    marks = marks or {}
    rows = []
    for name, replicates in by_name(variants).items():
        first, factors = replicates[0], factors_of(replicates[0])
        per_seed = [_table1_cells(v) for v in replicates]
        pooled = {column: _pooled([cells[column] for cells in per_seed]) for column in per_seed[0]}
        statuses = [v.status("evaluate") for v in replicates]
        reference = (references or {}).get(name)
        notes = ["reference" if name == reference else None, seeds_note(replicates)]
        notes += [note for v in replicates if (note := _factors_note(v))]
        rows.append(
            {
                "variant": name,
                "masking": first.label,
                "status": next((s for s in statuses if s != "done"), statuses[0]),
                "note": "; ".join(dict.fromkeys(filter(None, notes))) or None,
                "reference": reference,
                "min_count": factors.min_count if factors else None,
                "settings": factors.settings if factors else {},
                "seeds": len(replicates),
                "cells": {column: cell for column, (cell, _) in pooled.items()},
                "sd": {column: sd for column, (_, sd) in pooled.items()},
                "marks": {c: marks[name, _column_metric(c)] for c in pooled if (name, _column_metric(c)) in marks},
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
            thin = THIN if cell.thin and cell.accuracy is not None else ""
            cells.append(pct(cell.accuracy, r["sd"][column]) + thin + r["marks"].get(column, ""))
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
    if any(r["seeds"] > 1 for r in rows):
        footnotes.append("A variant run with several seeds: the mean over its seeds ± their standard deviation.")
    marked = _marks_note(any(r["marks"] for r in rows), rows)
    if marked:
        footnotes.append(marked)
    return header, body, footnotes


def table1_markdown(rows: list[dict]) -> str:
    header, body, footnotes = table1_grid(rows)
    return _markdown(header, body, footnotes)


def table1_csv(rows: list[dict], path: str | Path) -> Path:
    """Accuracies in % with one decimal (empty when missing); ``thin`` lists the thin columns (``;``-separated);
    ``seeds`` and ``<column>_sd``: the number of seeds and the standard deviation across them (empty for one)."""
    header = ["variant", "masking", "evaluate_status", *TABLE1_COLUMNS, "thin", "min_count", "seeds"]
    header += [f"{c}_sd" for c in TABLE1_COLUMNS]
    out = []
    for r in rows:
        values = [pct(r["cells"][c].accuracy).replace(MISSING, "") for c in TABLE1_COLUMNS]
        spread = [pct(r["sd"][c]).replace(MISSING, "") for c in TABLE1_COLUMNS]
        thin = ";".join(c for c in TABLE1_COLUMNS if r["cells"][c].thin)
        out.append([r["variant"], r["masking"], r["status"] or "", *values, thin, r["min_count"] or "", r["seeds"]])
        out[-1] += spread
    return _write_csv(path, header, out)


# ------------------------------------------------------------------------------------------------ counts


def counts(variants: list[Variant]) -> list[dict[str, Any]]:
    """Long rows ``{variant, factor, count, correct, accuracy, ci_low, ci_high, thin}`` for every factor (and pooled
    blocking) of every variant with factor results; a variant run with several seeds has a column per seed
    (``name/seed<k>``)."""
    rows = []
    replicated = {name for name, replicates in by_name(variants).items() if len(replicates) > 1}
    for v in variants:
        factors = factors_of(v)
        if factors is None:
            continue
        for name in (*FACTORS, "blocking"):
            cell = factor_cell(factors, name)
            rows.append(
                {
                    "variant": f"{v.name}/seed{v.seed}" if v.name in replicated else v.name,
                    "factor": name,
                    "count": cell.count,
                    "correct": cell.correct,
                    "accuracy": cell.accuracy,
                    "ci_low": cell.ci95[0],
                    "ci_high": cell.ci95[1],
                    "thin": cell.thin,
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


def occlusion_error_ratio(evaluation: EvaluateResults | None, ratio: float = OCCLUSION_RATIO) -> float | None:
    """``(1 - accuracy with ``ratio`` of the patches occluded) / (1 - clean accuracy)``, the clean accuracy being
    the occlusion curve's own point at ratio 0 (the same images), else the evaluate stage's top-1. 1.0: occlusion
    costs nothing; 2.0: twice the clean error. None when ``ratio`` was not measured or the clean error is 0."""
    occlusion = evaluation.occlusion if evaluation is not None else None
    if occlusion is None:
        return None
    occluded, clean = occlusion.accuracy_at(ratio), occlusion.accuracy_at(0.0)
    if clean is None and evaluation.accuracy is not None:
        clean = evaluation.accuracy.top1
    if occluded is None or clean is None or clean >= 1:
        return None
    return (1 - occluded) / (1 - clean)


def psnr(variant: Variant) -> list[Reconstruction]:
    """Masked-pixel PSNR per strategy: from the evaluate stage (the sweep's shared images), else from pretraining."""
    evaluation, pretraining = variant.evaluation, variant.results("pretrain")
    if evaluation is not None and evaluation.reconstruction:
        return evaluation.reconstruction
    return pretraining.reconstruction if pretraining is not None else []


SPREAD = (
    "val_top1",
    "finetune_top1",
    "linear_probe_top1",
    "knn_top1",
    "factor_average",
    "texture_error_ratio",
    "occlusion_error_ratio",
    "shape_bias",
)


def _summary_row(v: Variant) -> dict[str, Any]:
    evaluation, finetuning = v.evaluation, v.results("finetune")
    factors = factors_of(v)
    shape = evaluation.shape_bias if evaluation is not None else None
    texture = factor_cell(factors, "texture")
    return {
        "val_top1": evaluation.accuracy.top1 if evaluation and evaluation.accuracy else None,
        "finetune_top1": finetuning.accuracy.top1 if finetuning and finetuning.accuracy else None,
        **{
            f"{'linear_probe' if kind == 'linear' else kind}_top1": probe.accuracy.top1
            for kind, probe in (evaluation.probes.items() if evaluation is not None else ())
        },
        "factor_average": factors.average if factors else None,
        "factor_accuracy": {f: cell.accuracy for f, cell in factors.factors.items()} if factors else {},
        "texture_error_ratio": texture.error_ratio,
        "texture_thin": texture.thin,
        "occlusion_error_ratio": occlusion_error_ratio(evaluation),
        "shape_bias": getattr(shape, "shape_bias", None),  # None when skipped
        "psnr": {(e.patch_size, e.ratio): e.psnr_masked for e in psnr(v)},
        "status": {stage: run.status for stage, run in v.runs.items()},
        "seconds": {stage: run.seconds for stage, run in v.runs.items()},
    }


SUMMARY_METRICS = {
    "val_top1": "top1",
    "linear_probe_top1": "probe/linear/top1",
    "knn_top1": "probe/knn/top1",
    "factor_average": "factor_average",
    "texture_error_ratio": "error_ratio/texture",
    "shape_bias": "shape_bias",
}


def summary(
    variants: list[Variant], marks: dict[tuple[str, str], str] | None = None, references: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per variant of headline numbers (fractions and seconds; None where missing). A variant run with
    several seeds: the mean over its seeds, ``sd`` their standard deviation, stage seconds summed. ``marks``: the
    resolved differences to each variant's reference, as in Table 1."""
    marks = marks or {}
    rows = []
    for name, replicates in by_name(variants).items():
        per_seed = [_summary_row(v) for v in replicates]
        row: dict[str, Any] = {"variant": name, "masking": replicates[0].label, "seeds": len(replicates), "sd": {}}
        row["reference"] = (references or {}).get(name)
        row["marks"] = {k: marks[name, m] for k, m in SUMMARY_METRICS.items() if (name, m) in marks}
        for key in SPREAD:
            row[key], row["sd"][key], _ = mean_sd([r.get(key) for r in per_seed])
        factors = {f for r in per_seed for f in r["factor_accuracy"]}
        means = {f: mean_sd([r["factor_accuracy"].get(f) for r in per_seed])[0] for f in factors}
        means = {f: a for f, a in means.items() if a is not None}
        row["worst_factor"] = min(means, key=means.get) if means else None
        row["worst_factor_accuracy"] = means.get(row["worst_factor"])
        row["texture_thin"] = any(r["texture_thin"] for r in per_seed)
        strategies = dict.fromkeys(key for r in per_seed for key in r["psnr"])
        row["psnr"] = [(*key, mean_sd([r["psnr"].get(key) for r in per_seed])[0]) for key in strategies]
        stages = dict.fromkeys(stage for r in per_seed for stage in r["status"])
        row["status"] = {
            s: next((r["status"][s] for r in per_seed if r["status"].get(s) != "done"), "done") for s in stages
        }
        row["seconds"] = {s: sum(r["seconds"].get(s) or 0.0 for r in per_seed) for s in stages}
        row["stage_cells"] = {s: stage_state(replicates[0], s) for s in STAGES}
        if len(replicates) > 1:  # the summed wall time, or the first unfinished status
            row["stage_cells"] = {
                s: duration(row["seconds"][s]) if row["status"].get(s) == "done" else row["status"].get(s, "not run")
                for s in STAGES
            }
        rows.append(row)
    return rows


def summary_grid(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    header = [
        "variant",
        "masking",
        "val. top-1",
        "linear probe",
        "kNN",
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
        texture = _num(r["texture_error_ratio"], sd=r["sd"]["texture_error_ratio"]) + (
            THIN if r["texture_thin"] and r["texture_error_ratio"] is not None else ""
        )
        sd, mark = r["sd"], r["marks"]
        notes = ["reference" if r["variant"] == r["reference"] else None]
        notes = [n for n in [*notes, f"{r['seeds']} seeds" if r["seeds"] > 1 else None] if n]
        body.append(
            [
                r["variant"] + (f" ({'; '.join(notes)})" if notes else ""),
                r["masking"],
                pct(r["val_top1"], sd["val_top1"]) + mark.get("val_top1", ""),
                pct(r["linear_probe_top1"], sd["linear_probe_top1"]) + mark.get("linear_probe_top1", ""),
                pct(r["knn_top1"], sd["knn_top1"]) + mark.get("knn_top1", ""),
                pct(r["factor_average"], sd["factor_average"]) + mark.get("factor_average", ""),
                worst,
                texture + mark.get("texture_error_ratio", ""),
                _num(r["occlusion_error_ratio"], sd=sd["occlusion_error_ratio"]),
                _num(r["shape_bias"], ".3f", sd["shape_bias"]) + mark.get("shape_bias", ""),
                " / ".join(f"{value:.1f}" for _, _, value in r["psnr"]) or MISSING,
                *[r["stage_cells"][s] for s in STAGES],
            ]
        )
    footnotes = [
        "val. top-1 and factor avg. (accuracy over all factor-annotated images) in %; worst factor: the factor with "
        "the lowest accuracy (%).",
        "linear probe / kNN: top-1 (%) of a logistic regression / a kNN vote on the frozen encoder's features (the "
        "pretrained encoder; for a variant without pretraining, its random initialisation), when eval.probes ran.",
        "texture ER: texture error ratio (1 - texture accuracy) / (1 - factor avg.); 1.0 = as error-prone as the "
        f"average image. {THIN} thin.",
        f"occlusion ER @{OCCLUSION_RATIO:g}: (1 - accuracy with {OCCLUSION_RATIO:.0%} of the patches occluded) / "
        "(1 - clean accuracy on the same images); 1.0 = occlusion costs nothing.",
        "shape bias: shape decisions / (shape + texture decisions) on cue-conflict images. masked PSNR: "
        "reconstruction of the masked pixels per masking strategy (the same images for every variant).",
        "pretrain / finetune / evaluate: the stage's wall time when done, else its status (pending, running, failed).",
    ]
    if any(r["seeds"] > 1 for r in rows):
        footnotes.append(
            "A variant run with several seeds: the mean over its seeds ± their standard deviation; the worst factor "
            "by mean accuracy; wall times summed over the seeds."
        )
    marked = _marks_note(any(r["marks"] for r in rows), rows)
    if marked:
        footnotes.append(marked)
    return header, body, footnotes


def summary_markdown(rows: list[dict]) -> str:
    header, body, footnotes = summary_grid(rows)
    return _markdown(header, body, footnotes)


def summary_csv(rows: list[dict], path: str | Path) -> Path:
    """Full-precision values; ``psnr`` as ``patch/ratio=dB`` pairs; stage columns hold seconds or the status;
    ``seeds`` and ``<value>_sd``: the number of seeds and the standard deviation across them (empty for one)."""
    header = [
        "variant",
        "masking",
        "val_top1",
        "finetune_top1",
        "linear_probe_top1",
        "knn_top1",
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
        spread = ["" if r["sd"][k] is None else r["sd"][k] for k in SPREAD]
        body.append(values + stages + [r["seeds"], *spread])
    stage_columns = [f"{s}_seconds_or_status" for s in STAGES]
    return _write_csv(path, header + stage_columns + ["seeds", *[f"{k}_sd" for k in SPREAD]], body)


def safe_name(name: str) -> str:
    """A variant name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "variant"
