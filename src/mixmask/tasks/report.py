"""``mixmask report``: the tables, figures and one self-contained HTML page of a sweep folder (and extra runs).

Works on a sweep that is still running or partly failed: every variant is listed, and what a stage has not produced
yet is shown as missing with the stage's status, never left out silently.
"""

from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mixmask.analysis import interactions
from mixmask.report import collect, comparisons, figures, html, plots, tables
from mixmask.results import (
    CKACurves,
    Factors,
    FrequencyProfile,
    InteractionCurve,
    OcclusionCurve,
    PretrainResults,
    ShapeBias,
    Variant,
    by_name,
)


def _say(message: str) -> None:
    print(f"report: {message}", flush=True)


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def seed_mean(records: list):
    """One record of a kind from a variant's replicates: values averaged over the seeds, counts summed (a single
    record is returned as it is)."""
    first = records[0]
    if len(records) == 1:
        return first
    if isinstance(first, OcclusionCurve):
        accuracy = [_mean(r.accuracy[k] for r in records) for k in range(len(first.ratios))]
        correct = [sum(r.correct[k] for r in records) for k in range(len(first.ratios))]
        return replace(first, accuracy=accuracy, correct=correct, images=sum(r.images for r in records))
    if isinstance(first, CKACurves):
        stages = {s: [_mean(r.stages[s][k] for r in records) for k in range(len(v))] for s, v in first.stages.items()}
        return replace(first, stages=stages, images=sum(r.images for r in records))
    if isinstance(first, ShapeBias):
        per_class = {
            c: {
                "shape_bias": _mean(r.per_class[c]["shape_bias"] for r in records if c in r.per_class),
                **{
                    k: sum(r.per_class[c][k] for r in records if c in r.per_class)
                    for k in ("shape", "texture", "images")
                },
            }
            for c in first.per_class
        }
        return replace(
            first,
            shape_bias=_mean(r.shape_bias for r in records),
            shape_decisions=sum(r.shape_decisions for r in records),
            texture_decisions=sum(r.texture_decisions for r in records),
            images=sum(r.images for r in records),
            per_class=per_class,
        )
    if isinstance(first, Factors):
        cells = {
            f: replace(
                cell,
                accuracy=_mean(r.factors[f].accuracy for r in records),
                error_ratio=_mean(r.factors[f].error_ratio for r in records),
                count=sum(r.factors[f].count for r in records),
                correct=sum(r.factors[f].correct for r in records),
                ci95=(None, None),
                thin=any(r.factors[f].thin for r in records),
            )
            for f, cell in first.factors.items()
        }
        return replace(
            first, factors=cells, average=_mean(r.average for r in records), images=sum(r.images for r in records)
        )
    return first  # frequency profiles and the rest: the first seed's


def _by_variant(variants: list[Variant], metric: str, kind: type) -> dict:
    """``{variant: its evaluation's metric}``, the mean over its seeds, for the variants that measured it (a
    ``kind`` record, not skipped)."""
    out = {}
    for name, replicates in by_name(variants).items():
        records = [value for v in replicates if isinstance(value := getattr(v.evaluation, metric, None), kind)]
        if records:
            out[name] = seed_mean(records)
    return out


def common_interactions(variants: list[Variant]) -> dict[str, InteractionCurve]:
    """Each variant's J(m) over the images every variant with interactions classified correctly (from their
    ``interactions.csv``; the same pairs and contexts per image in every variant)."""
    tables_by_name = {}
    for v in variants:
        evaluation, run = v.evaluation, v.runs.get("evaluate")
        name = evaluation.per_image.get("interactions") if evaluation is not None else None
        if name and run is not None and run.run_dir is not None and (Path(run.run_dir) / name).is_file():
            with (Path(run.run_dir) / name).open(newline="") as handle:
                tables_by_name[v.name] = (evaluation.interactions, {r["file_name"]: r for r in csv.DictReader(handle)})
    if not tables_by_name:
        return {}
    common = set.intersection(*(set(rows) for _, rows in tables_by_name.values()))
    out = {}
    for name, (curve, rows) in tables_by_name.items():
        per_image = np.array([[float(rows[f][f"j@{r:g}"]) for r in curve.ratios] for f in sorted(common)])
        if not len(per_image):
            continue
        points = interactions.curve(curve.ratios, curve.grid, per_image)
        out[name] = replace(
            curve, images=len(common), strength=[p.strength for p in points], normalised=[p.normalised for p in points]
        )
    return out


def report(
    sweep_dir: str | Path,
    extra_runs: tuple | list = (),
    out: str | Path | None = None,
    references: tuple | list = (),
) -> Path:
    """Build everything into ``out`` (default ``SWEEP_DIR/report``): comparisons.csv (every variant against its
    reference: those named here, else the sweep's, else ``scratch``; with several, the one of the variant's backbone,
    ``comparisons.assign_references``), table1.md/.csv, counts.md/.csv,
    summary.md/.csv, figure2_error_ratios.png, figure3_reconstructions.png, occlusion.png, cka.png, shape_bias.png,
    curves_<variant>.png and report.html; return the HTML path. Figures without data yet are not written (the
    page says why). Raises FileNotFoundError when there is no results.sqlite and no extra run."""
    sweep_dir = Path(sweep_dir)
    variants = collect.collect_variants(sweep_dir, extra_runs)
    meta = collect.read_meta(sweep_dir)
    out_dir = Path(out) if out else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = by_name(variants)
    states = "; ".join(
        v.name + (f"/seed{v.seed}" if len(groups[v.name]) > 1 else "") + ": "
        + ", ".join(f"{s} {run.status}" for s, run in v.runs.items())
        for v in variants
    )  # fmt: skip
    _say(f"{len(groups)} variant(s): {states}")
    # reconstructions, frequency profiles and training curves show each variant's first seed; the other figures the
    # mean over its seeds, the tables and comparisons every seed
    shown = [replicates[0] for replicates in groups.values()]

    in_sweep = meta.get("reference")  # a name, or a list of names (one per backbone)
    named = list(references) or ([in_sweep] if isinstance(in_sweep, str) else list(in_sweep or []))
    unknown = [name for name in named if name not in groups]
    problem = f"{', '.join(map(repr, unknown))} is not a variant" if unknown else "no variant is named scratch"
    try:
        assigned = {} if unknown else comparisons.assign_references(variants, named)  # variant -> its reference
    except ValueError as error:  # two references of one backbone
        assigned, problem = {}, str(error)
    reference = comparisons.reference_text(assigned) if assigned else None
    compared = comparisons.compare(variants, assigned) if assigned else []
    comparisons.write_csv(compared, out_dir / "comparisons.csv")
    resolved = comparisons.resolved_lines(compared)
    if reference is None:
        resolved = [f"No comparisons: {problem} (name one with `reference:` in the sweep or --reference)."]
    elif not compared:
        resolved = [
            f"No comparisons with {reference} yet: no other variant has per-image evaluation records for a seed "
            f"that its reference has evaluated (evaluate stages pending or failed, or written by an older release)."
        ]
    _say(f"comparisons with {reference} -> {out_dir / 'comparisons.csv'} ({len(compared)} rows)")
    for line in resolved:
        _say(line)

    marks = comparisons.marks(compared)
    rows1, count_rows = tables.table1(variants, marks, assigned), tables.counts(variants)
    summary_rows = tables.summary(variants, marks, assigned)
    (out_dir / "table1.md").write_text(tables.table1_markdown(rows1))
    tables.table1_csv(rows1, out_dir / "table1.csv")
    (out_dir / "counts.md").write_text(tables.counts_markdown(count_rows))
    tables.counts_csv(count_rows, out_dir / "counts.csv")
    (out_dir / "summary.md").write_text(tables.summary_markdown(summary_rows))
    tables.summary_csv(summary_rows, out_dir / "summary.csv")
    _say(f"tables -> {out_dir}/{{table1,counts,summary}}.{{md,csv}}")

    written: dict[str, Path | None] = {}
    plan = [
        ("figure2", "figure2_error_ratios.png", _by_variant(variants, "factors", Factors), plots.error_ratio_bars),
        ("occlusion", "occlusion.png", _by_variant(variants, "occlusion", OcclusionCurve), plots.occlusion_curve),
        ("cka", "cka.png", _by_variant(variants, "cka", CKACurves), plots.cka_curves),
        ("cka-encoder", "cka_encoder.png", _by_variant(variants, "cka_encoder", CKACurves), plots.cka_curves),
        ("interactions", "interactions.png", common_interactions(shown), plots.interaction_curves),
        ("frequency", "frequency.png", _by_variant(shown, "frequency", FrequencyProfile), plots.frequency_profiles),
        ("shape-bias", "shape_bias.png", _by_variant(variants, "shape_bias", ShapeBias), plots.shape_bias_bars),
    ]
    for key, name, data, draw in plan:
        target = out_dir / name
        target.unlink(missing_ok=True)  # a figure left from an earlier report must not pass for this one
        written[key] = draw(data, target) if data else None
    target = out_dir / "figure3_reconstructions.png"
    target.unlink(missing_ok=True)
    written["figure3"] = figures.reconstruction_grid(shown, target)
    _say("figures -> " + ", ".join(f"{key} {'written' if p else 'no data yet'}" for key, p in written.items()))

    curves: dict[str, Path | None] = {}
    for v in shown:
        target = out_dir / f"curves_{tables.safe_name(v.name)}.png"
        target.unlink(missing_ok=True)
        runs = {
            stage if run.status == "done" else f"{stage} ({run.status})": run.run_dir
            for stage, run in v.runs.items()
            if stage in ("pretrain", "finetune")
        }
        curves[v.name] = figures.training_curves(runs, target, title=v.name) if runs else None
    _say(f"training curves for {sum(p is not None for p in curves.values())} of {len(shown)} variant(s)")

    notes = []
    if len(shown) < len(variants):
        seeds = ", ".join(f"{v.name} seed {v.seed}" for v in shown if len(groups[v.name]) > 1)
        notes.append(
            "Error ratios, occlusion, CKA and shape bias show the mean over each variant's seeds; reconstructions, "
            f"feature-map frequency and training curves one seed ({seeds}); the tables use every seed."
        )
    collapsed = [
        f"{v.name} seed {v.seed}: {results.collapse}"
        for v in variants
        if isinstance(results := v.results("pretrain"), PretrainResults) and results.collapse
    ]
    if collapsed:
        notes.append(
            "Collapsed pretraining (its encoder maps every image alike; its numbers measure a collapsed network): "
            + "; ".join(collapsed)
        )
    if not (sweep_dir / "results.sqlite").is_file():
        notes.append(f"{sweep_dir} has no results store: only the run folders named on the command line are shown.")
    page = html.write_html(
        {
            "title": f"{meta.get('name') or sweep_dir.resolve().name}: mixmask study report",
            "meta": meta,
            "generated": time.time(),
            "sweep_dir": str(sweep_dir),
            "variants": variants,
            "summary": summary_rows,
            "table1": rows1,
            "counts": count_rows,
            "resolved": resolved,
            "comparisons": comparisons.headline_grid(compared) if compared else None,
            "figures": written,
            "curves": curves,
            "notes": notes,
        },
        out_dir / "report.html",
    )
    _say(f"page -> {page}")
    return page
