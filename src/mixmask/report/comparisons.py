"""Which differences are real: every variant against the study's reference (with several references, the one of its
own backbone), metric by metric, paired on the same images, per seed and pooled over seeds, with Holm's correction.

The numbers come from the per-image records each evaluation wrote (``EvaluateResults.per_image``); nothing is
re-derived from the aggregate tables. Per seed, an accuracy (validation top-1, a factor's accuracy, accuracy at an
occlusion ratio) is compared with McNemar's exact test and a ratio (a factor's error ratio, shape bias) or the
pretraining's masked-pixel PSNR of a strategy both pretrainings used (from each image's squared error) with a
paired bootstrap over images; when both ran two or more seeds, the mean difference over their common seeds gets a
hierarchical bootstrap (seeds, then images). Holm's correction runs within the rows of one table of the report at
one level (one seed, or ``all``), for one reference: the headline numbers (top-1, factor average, shape bias, and
the probes' top-1), the factor accuracies, the error ratios, the occlusion accuracies, each of the finetuned
classifier or of one probe, and the PSNRs. Bootstrap p-values cannot be smaller than 2 / (resamples + 1), so the default 10,000
resamples (``statistics.RESAMPLES``) keep a family of 50 rows resolvable. Occlusion ratio 0 is the clean
validation accuracy, already compared as ``top1``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mixmask.evaluation import statistics
from mixmask.factors import FACTORS
from mixmask.results import Comparison, Variant, by_name

ALPHA = 0.05
COLUMNS = [
    "variant",
    "reference",
    "metric",
    "seed",
    "test",
    "n_images",
    "n_seeds",
    "value",
    "reference_value",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "significant",
]

Table = dict[str, dict[str, str]]  # file name -> the CSV row of that image


def assign_references(variants: list[Variant], named: list[str] | None = None) -> dict[str, str]:
    """Each variant's reference, a reference being its own: ``{}`` when there is none. ``named``: the study's
    references (names that are not variants are left out); none named: ``scratch`` when there is one. With one
    reference every variant is compared with it; with several, each with the reference of its own backbone (MAE's ViT
    with the ViT trained from scratch, the ResNets with the ResNet), else with the first named; two references of
    one backbone are refused (ValueError)."""
    groups = by_name(variants)
    named = [n for n in named if n in groups] if named else [n for n in ("scratch",) if n in groups]
    if not named:
        return {}

    def backbone(name: str) -> str | None:
        method = groups[name][0].method
        return method.backbone if method is not None else None

    by_backbone: dict[str | None, str] = {}
    for reference in named:
        if (other := by_backbone.setdefault(backbone(reference), reference)) != reference:
            raise ValueError(
                f"the references {other} and {reference} are both {backbone(reference)}; name one per backbone"
            )
    return {name: name if name in named else by_backbone.get(backbone(name), named[0]) for name in groups}


def reference_text(references: dict[str, str]) -> str:
    """``scratch``, or ``scratch / scratch_vit (each variant's backbone)`` for several references."""
    names = list(dict.fromkeys(references.values()))
    return names[0] if len(names) == 1 else " / ".join(names) + " (each variant's backbone)"


def _read(variant: Variant, key: str) -> Table | None:
    evaluation = variant.evaluation
    run = variant.runs.get("evaluate")
    name = evaluation.per_image.get(key) if evaluation is not None else None
    if name is None or run is None or run.run_dir is None or not (Path(run.run_dir) / name).is_file():
        return None
    with (Path(run.run_dir) / name).open(newline="") as handle:
        return {row["file_name"]: row for row in csv.DictReader(handle)}


def _joined(reference: Table, model: Table, columns: dict[str, str], where: str | None = None):
    """Both models' columns on the images they share (in the reference's order), as float arrays; only the
    images with ``where`` = 1 when given."""
    names = [n for n in reference if n in model and (where is None or reference[n][where] == "1")]
    ref = {k: np.array([float(reference[n][c]) for n in names]) for k, c in columns.items()}
    var = {k: np.array([float(model[n][c]) for n in names]) for k, c in columns.items()}
    return ref, var, len(names)


def metric_data(reference: Variant, model: Variant) -> Iterator[tuple[str, str, dict, dict]]:
    """``(metric, kind, reference columns, model columns)`` for every metric both replicates recorded per image (the
    finetuned classifier's, then each probe's as ``probe/<kind>/<metric>``); ``kind`` is ``accuracy`` (McNemar) or
    the name of a ratio statistic (bootstrap)."""
    recorded = set(reference.evaluation.per_image) & set(model.evaluation.per_image)
    probes = sorted({key.rsplit("/", 1)[0] + "/" for key in recorded if key.startswith("probe/")})
    for prefix in ["", *probes]:
        for metric, kind, a, b in _metric_data(reference, model, prefix):
            yield prefix + metric, kind, a, b


def _metric_data(reference: Variant, model: Variant, prefix: str) -> Iterator[tuple[str, str, dict, dict]]:
    keys = ("top1", "factors", "occlusion", "shape_bias", "reconstruction")
    pairs = {key: (_read(reference, prefix + key), _read(model, prefix + key)) for key in keys}
    ref, var = pairs["top1"]
    if ref and var:
        a, b, n = _joined(ref, var, {"correct": "correct"})
        if n:
            yield "top1", "accuracy", a, b
    ref, var = pairs["factors"]
    if ref and var:
        a, b, n = _joined(ref, var, {"correct": "correct"})
        if n:
            yield "factor_average", "accuracy", a, b
        for factor in FACTORS:
            a, b, n = _joined(ref, var, {"correct": "correct"}, where=factor)
            if n:
                yield f"factor_acc/{factor}", "accuracy", a, b
        for factor in FACTORS:
            a, b, n = _joined(ref, var, {"correct": "correct", f"factor/{factor}": factor})
            if n and a[f"factor/{factor}"].any():
                yield f"error_ratio/{factor}", f"error_ratio/{factor}", a, b
    ref, var = pairs["occlusion"]
    if ref and var:
        ratios = [c.split("@", 1)[1] for c in next(iter(ref.values())) if c.startswith("correct@")]
        for ratio in ratios:
            if float(ratio) > 0 and f"correct@{ratio}" in next(iter(var.values())):
                a, b, n = _joined(ref, var, {"correct": f"correct@{ratio}"})
                if n:
                    yield f"occlusion/{ratio}", "accuracy", a, b
    ref, var = pairs["shape_bias"]
    if ref and var:
        a, b, n = _joined(ref, var, {"shape": "shape_decision", "texture": "texture_decision"})
        if n:
            yield "shape_bias", "shape_bias", a, b
    ref, var = pairs["reconstruction"]  # the pretraining's masked-pixel PSNR, for the strategies both scored
    if ref and var:
        strategies = [c.split("@", 1)[1] for c in next(iter(ref.values())) if c.startswith("sse@")]
        for strategy in strategies:
            if f"sse@{strategy}" in next(iter(var.values())):
                a, b, n = _joined(ref, var, {"sse": f"sse@{strategy}", "count": f"count@{strategy}"})
                if n:
                    yield f"psnr/{strategy}", "psnr", a, b


def _statistic(kind: str) -> statistics.Statistic:
    if kind == "accuracy":
        return statistics.accuracy
    if kind == "psnr":
        return statistics.masked_psnr
    if kind == "shape_bias":
        return statistics.shape_bias
    return statistics.error_ratio(kind.split("/", 1)[1])


def _row(variant: str, reference: str, metric: str, seed: str, test: statistics.PairedTest) -> dict:
    return {"variant": variant, "reference": reference, "metric": metric, "seed": seed, **asdict(test)}


def family(metric: str) -> str:
    """The table a metric is read in, which is its Holm family (with the reference and the seed level)."""
    prefix, name = "", metric
    if metric.startswith("probe/"):
        kind, _, name = metric[len("probe/") :].partition("/")
        prefix = f"probe/{kind}/"
    if name in ("top1", "factor_average", "shape_bias"):
        return "headline"  # the summary table: every classifier and probe together
    return prefix + name.split("/", 1)[0]


def compare(
    variants: list[Variant], references: dict[str, str], resamples: int = statistics.RESAMPLES
) -> list[Comparison]:
    """Every variant against its reference (``assign_references``): per common seed, and pooled (``seed="all"``)
    when they share two or more seeds; Holm-corrected within each family (``family``) at each seed level, for each
    reference."""
    groups = by_name(variants)
    rows: list[dict] = []
    for name, replicates in groups.items():
        reference = references.get(name, name)
        if name == reference or reference not in groups:
            continue
        evaluated = {v.seed: v for v in groups[reference] if v.evaluation is not None}
        paired: dict[str, list[tuple[str, dict, dict]]] = {}  # metric -> (kind, ref, model) per common seed
        for model in replicates:
            ref = evaluated.get(model.seed)
            if ref is None or model.evaluation is None:
                continue
            for metric, kind, a, b in metric_data(ref, model):
                if kind == "accuracy":
                    test = statistics.mcnemar(a["correct"] > 0, b["correct"] > 0)
                else:
                    test = statistics.paired_bootstrap(_statistic(kind), a, b, resamples, seed=model.seed or 0)
                rows.append(_row(name, reference, metric, str(model.seed), test))
                paired.setdefault(metric, []).append((kind, a, b))
        for metric, seeds in paired.items():
            if len(seeds) >= 2:
                statistic = _statistic(seeds[0][0])
                test = statistics.hierarchical_bootstrap(statistic, [(a, b) for _, a, b in seeds], resamples)
                rows.append(_row(name, reference, metric, "all", test))
    families: dict[tuple[str, str, str], list[int]] = {}
    for i, row in enumerate(rows):
        families.setdefault((row["reference"], row["seed"], family(row["metric"])), []).append(i)
    for members in families.values():
        p_values = [rows[i]["p_value"] for i in members]
        finite = [i for i, p in zip(members, p_values, strict=True) if p == p]  # nan: no resample was defined
        for i, p_holm in zip(finite, statistics.holm([rows[i]["p_value"] for i in finite]), strict=True):
            rows[i]["p_holm"] = p_holm
    return [
        Comparison(**row | {"p_holm": row.get("p_holm", float("nan"))}, significant=row.get("p_holm", 1.0) < ALPHA)
        for row in rows
    ]


def headline(comparisons: list[Comparison]) -> list[Comparison]:
    """The row that speaks for each (variant, metric): pooled over seeds when there is one, else the only seed's."""
    best: dict[tuple[str, str], Comparison] = {}
    for c in comparisons:
        key = (c.variant, c.metric)
        if key not in best or c.seed == "all":
            best[key] = c
    return list(best.values())


def marks(comparisons: list[Comparison]) -> dict[tuple[str, str], str]:
    """``{(variant, metric): "↑" or "↓"}`` for the resolved differences of the headline rows."""
    return {(c.variant, c.metric): "↑" if c.difference > 0 else "↓" for c in headline(comparisons) if c.significant}


HEADLINE_COLUMNS = {
    "top1": "val. top-1",
    "probe/linear/top1": "linear probe",
    "probe/knn/top1": "kNN",
    "factor_average": "factor avg.",
    "shape_bias": "shape bias",
}


def headline_grid(comparisons: list[Comparison]) -> tuple[list[str], list[list[str]], list[str]]:
    """The headline differences to the reference, a variant per row: ``difference [95 % interval]`` in points (plain
    for shape bias, dB for the pretraining's masked-pixel PSNR of each strategy compared), ``↑`` / ``↓`` when
    resolved; the columns no variant has are left out."""
    rows = {(c.variant, c.metric): c for c in headline(comparisons)}
    psnr = {m: f"PSNR {m.split('/', 1)[1]} (dB)" for _, m in rows if m.startswith("psnr/")}
    columns = HEADLINE_COLUMNS | dict(sorted(psnr.items()))
    metrics = [m for m in columns if any(metric == m for _, metric in rows)]
    variants = list(dict.fromkeys(variant for variant, _ in rows))
    references = {c.variant: c.reference for c in rows.values()}
    several = len(set(references.values())) > 1
    body = []
    for variant in variants:
        cells = [variant, references[variant]] if several else [variant]
        for metric in metrics:
            c = rows.get((variant, metric))
            if c is None:
                cells.append("–")
                continue
            mark = ("↑" if c.difference > 0 else "↓") if c.significant else ""
            cells.append(
                f"{_points(metric, c.difference)} [{_points(metric, c.ci_low)}, {_points(metric, c.ci_high)}]{mark}"
            )
        body.append(cells)
    seeds = sorted({c.n_seeds for c in rows.values()})
    to = "the reference of the variant's backbone (column vs)" if several else next(iter(references.values()), "?")
    footnotes = [
        f"Difference to {to} (variant minus reference) with its 95 % interval, paired on the same images; "
        "accuracies in points, shape bias as a fraction, PSNR in dB. "
        + ("Pooled over seeds by a hierarchical bootstrap" if seeds[-1] > 1 else "One seed (McNemar's interval)")
        + f" ({' / '.join(map(str, seeds))} seed(s)). ↑ / ↓: resolved, Holm-corrected p < {ALPHA} within the table"
        + (" (the PSNRs a table of their own)." if psnr else "."),
        "Every metric (factors, error ratios, occlusion, the probes' factors), per seed and pooled: comparisons.csv.",
    ]
    header = ["variant", "vs"] if several else ["variant"]
    return [*header, *[columns[m] for m in metrics]], body, footnotes


def write_csv(comparisons: list[Comparison], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for c in comparisons:
            record = c.to_json()
            writer.writerow([record[k] for k in COLUMNS])
    return path


def _is_ratio(metric: str) -> bool:
    return "error_ratio/" in metric or metric.endswith("shape_bias")


def _points(metric: str, value: float) -> str:
    """A difference in the metric's own unit: points for accuracies, plain for ratios, dB for PSNR."""
    if metric.startswith("psnr/"):
        return f"{value:+.2f}"
    return f"{value:+.3f}" if _is_ratio(metric) else f"{100 * value:+.1f}"


def describe(c: Comparison) -> str:
    """``patch4: top1 +2.1 points [+0.8, +3.4] vs scratch (Holm p = 0.003, 3 seeds)``."""
    unit = " dB" if c.metric.startswith("psnr/") else "" if _is_ratio(c.metric) else " points"
    seeds = f"{c.n_seeds} seeds" if c.seed == "all" else f"seed {c.seed}"
    return (
        f"{c.variant}: {c.metric} {_points(c.metric, c.difference)}{unit} "
        f"[{_points(c.metric, c.ci_low)}, {_points(c.metric, c.ci_high)}] vs {c.reference} "
        f"(Holm p = {c.p_holm:.2g}, {seeds}, {c.n_images:,} images)"
    )


def resolved_lines(comparisons: list[Comparison], limit: int = 12) -> list[str]:
    """Plain sentences: which differences are resolved (in which direction), and how many are not."""
    rows = headline(comparisons)
    if not rows:
        return []
    significant = sorted((c for c in rows if c.significant), key=lambda c: (family(c.metric) != "headline", c.p_holm))
    reference = reference_text({c.variant: c.reference for c in rows})
    lines = [
        f"{len(significant)} of {len(rows)} differences to {reference} are resolved (95 % intervals, Holm-corrected "
        f"p < {ALPHA} within each table); the other {len(rows) - len(significant)} are not."
    ]
    for c in significant[:limit]:
        direction = "higher" if c.difference > 0 else "lower"
        lines.append(f"{direction}: {describe(c)}")
    if len(significant) > limit:
        lines.append(f"... and {len(significant) - limit} more (report/comparisons.csv).")
    top1 = [c for c in rows if c.metric.endswith("top1") and not c.significant]
    for c in top1:
        lines.append(f"not resolved: {describe(c)}")
    if any(c.seed == "all" and c.n_seeds == 2 for c in rows):
        lines.append(
            "caution: with two seeds the pooled intervals see the spread between seeds through two values only "
            "and may be too narrow; run three or more seeds (`seeds:` in the sweep) for conclusions."
        )
    return lines
