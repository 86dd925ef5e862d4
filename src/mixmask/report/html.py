"""The study report as ONE self-contained HTML file: every image embedded as a base64 data URI, inline CSS, one tiny
inline script, no fonts, scripts or styles from anywhere else; it opens from disk in any browser, offline.

Plain semantic HTML (``<table>``, ``<figure>``, ``<figcaption>``, ``<details>``) with ids on the sections
(``setup``, ``summary``, ``table1``, ``figure2``, ``figure3``, ``occlusion``, ``cka``, ``shape-bias``, ``counts``,
``variants``). All text from runs and configs is escaped. The closing script counts images that failed to decode
and writes ``data-images-total`` / ``data-images-broken`` on ``<body>``, so a headless browser's dumped DOM tells
whether every image rendered.
"""

from __future__ import annotations

import base64
import time
from html import escape
from pathlib import Path
from typing import Any

import yaml

from mixmask.report import tables
from mixmask.results import Variant, by_name

SECTIONS = (
    ("resolved", "Differences"),
    ("summary", "Summary"),
    ("table1", "Table 1"),
    ("figure2", "Figure 2"),
    ("figure3", "Figure 3"),
    ("occlusion", "Occlusion"),
    ("cka", "CKA"),
    ("shape-bias", "Shape bias"),
    ("interactions", "Interactions"),
    ("frequency", "Frequency"),
    ("counts", "Counts"),
    ("variants", "Variants"),
)

CAPTIONS = {
    "figure2": "Figure 2. Error ratio per ImageNet-X factor, grouped by variant: (1 - factor accuracy) / (1 - accuracy "
    "over all factor-annotated images); 1.0 (dashed) is as error-prone as the average image, higher is worse. "
    "Hatched bars are thin factors (few images).",
    "figure3": "Figure 3. The same validation images under every masking variant: the originals, then for each "
    "pretrained variant and masking strategy (mixed variants: one pair of rows per strategy) the masked input (grey "
    "= masked) and the network's prediction pasted into the visible pixels, with the masked-pixel PSNR. A "
    "strategy masks the same patches in every variant.",
    "occlusion": "Top-1 validation accuracy as a growing share of square patches is dropped; every variant sees the "
    "same occlusions.",
    "cka": "Occlusion invariance: linear CKA between the features of clean and occluded images per network stage, one "
    "panel per variant (1.0: occlusion leaves the representation unchanged). Scroll sideways for more variants.",
    "cka-encoder": "The same before finetuning: CKA of each variant's encoder as pretraining left it (a variant "
    "without pretraining: its random initialisation), from eval.cka_encoder.",
    "interactions": "Multi-order interactions J(m) of each finetuned classifier, normalised by their mean over the "
    "orders, on the validation images every variant classified correctly (the same patch pairs and contexts per "
    "image in every variant). Low orders: interactions among few patches (local); high orders: with most of the "
    "image present (global).",
    "frequency": "The encoders before finetuning (a variant without pretraining: its random initialisation): left, "
    "the relative log amplitude of the feature maps' highest spatial frequency at the stem and after each residual "
    "block; right, the mean spatial variance of the maps.",
    "shape-bias": "Cue-conflict shape bias per shape class (bars) and overall (dashed lines): the share of shape "
    "decisions among shape-or-texture decisions; higher means the network follows shape over colour and texture.",
}

MISSING_FIGURE = {
    "figure2": "No variant has factor results yet.",
    "figure3": "No evaluated pretrained variant has saved reconstruction images yet.",
    "occlusion": "No variant has occlusion results yet.",
    "cka": "No variant has CKA results yet.",
    "shape-bias": "No variant has shape-bias results yet.",
    "interactions": "No variant measured interactions (eval.interactions=true).",
    "frequency": "No variant measured feature-map frequency (eval.frequency=true).",
}

CSS = """
:root { color-scheme: light; --fg: #1d2329; --muted: #5b6670; --line: #d5dbe0; --head: #eef2f5; --accent: #2860a8; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1440px; padding: 1.2rem 1.6rem 3rem; color: var(--fg); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.7rem; margin: 0.2rem 0 0.4rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 0.6rem; padding-bottom: 0.2rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
p.lead { color: var(--muted); margin-top: 0; max-width: 70rem; }
nav { margin: 0.8rem 0 0.4rem; font-size: 0.9rem; }
nav a { color: var(--accent); text-decoration: none; margin-right: 0.9rem; }
nav a:hover { text-decoration: underline; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; margin: 0.6rem 0; }
dl.meta dt { font-weight: 600; color: var(--muted); }
dl.meta dd { margin: 0; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 0.6rem 0.8rem;
  overflow: auto; max-height: 28rem; font-size: 0.8rem; line-height: 1.35; }
pre.error { background: #fdf0f0; border-color: #e2b4b4; color: #7d1d1d; max-height: 12rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.3rem 0; }
th, td { border: 1px solid var(--line); padding: 0.2rem 0.35rem; vertical-align: top; }
thead th { background: var(--head); text-align: center; font-size: 0.78rem; }
td:nth-child(2) { min-width: 10rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.thin { color: #8a5a00; background: #fff8e6; }
td.missing { color: #9aa3ab; text-align: center; }
tbody th { text-align: left; font-weight: 600; white-space: nowrap; }
.footnotes { font-size: 0.8rem; color: var(--muted); margin: 0.3rem 0 0; max-width: 70rem; }
.footnotes p { margin: 0.1rem 0; }
figure { margin: 0.6rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figure.wide img { max-width: none; height: 380px; width: auto; }
figcaption { font-size: 0.85rem; color: var(--muted); margin-top: 0.3rem; max-width: 70rem; }
p.missing { color: var(--muted); font-style: italic; }
.status { display: inline-block; padding: 0 0.45rem; border-radius: 0.7rem; font-size: 0.78rem; font-weight: 600;
  border: 1px solid transparent; white-space: nowrap; }
.status-done { background: #e3f4e6; color: #1d6b2c; border-color: #b5dfbd; }
.status-pending { background: #eef0f3; color: #4d5761; border-color: #d0d5db; }
.status-running { background: #e5eefb; color: #1f4f95; border-color: #b8cdef; }
.status-failed, .status-damaged { background: #fbe5e5; color: #8a1c1c; border-color: #eab3b3; }
.status-missing, .status-unknown { background: #fff4df; color: #7a5200; border-color: #edd3a0; }
details.variant { border: 1px solid var(--line); border-radius: 6px; padding: 0.4rem 0.8rem; margin: 0.5rem 0; }
details.variant > summary { cursor: pointer; font-weight: 600; }
details.variant > summary .masking { font-weight: 400; color: var(--muted); margin: 0 0.6rem; }
footer { margin-top: 3rem; font-size: 0.8rem; color: var(--muted); }
"""

SCRIPT = """
(function () {
  function count() {
    var images = document.images, broken = 0;
    for (var i = 0; i < images.length; i++) {
      if (!images[i].complete || images[i].naturalWidth === 0) { broken++; }
    }
    document.body.dataset.imagesTotal = String(images.length);
    document.body.dataset.imagesBroken = String(broken);
  }
  if (document.readyState === "complete") { count(); } else { window.addEventListener("load", count); }
})();
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _when(stamp: Any) -> str:
    if not isinstance(stamp, int | float):
        return tables.MISSING
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def data_uri(path: str | Path) -> str:
    """A PNG (or other image) file as a ``data:`` URI."""
    path = Path(path)
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    mime = kind.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def status_badge(status: str | None) -> str:
    status = status or "unknown"
    return f'<span class="status status-{_e(status)}">{_e(status)}</span>'


def _cell(text: str, column: int, label_columns: int) -> str:
    if column < label_columns:
        tag = 'th scope="row"' if column == 0 else "td"
        return f"<{tag}>{_e(text)}</{tag.split()[0]}>"
    if text in ("pending", "running", "failed", "missing", "unknown"):
        return f"<td>{status_badge(text)}</td>"
    classes = ["num"]
    if text == tables.MISSING:
        classes = ["missing"]
    elif tables.THIN in text:
        classes.append("thin")
    return f'<td class="{" ".join(classes)}">{_e(text)}</td>'


def html_table(grid: tuple[list[str], list[list[str]], list[str]], label_columns: int = 2) -> str:
    """A table from a ``tables.*_grid`` result (header, body, footnotes); label columns on the left."""
    header, body, footnotes = grid
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in header)
    rows = "\n".join("<tr>" + "".join(_cell(c, i, label_columns) for i, c in enumerate(row)) + "</tr>" for row in body)
    notes = "".join(f"<p>{_e(n)}</p>" for n in footnotes)
    return (
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table></div>\n'
        + (f'<div class="footnotes">{notes}</div>\n' if notes else "")
    )


def figure(path: str | Path | None, caption: str, alt: str, missing: str, wide: bool = False) -> str:
    """``<figure>`` with the embedded image and its caption, or a line saying why there is none."""
    if path is None or not Path(path).is_file():
        return f'<p class="missing">{_e(missing)}</p>\n'
    kind = ' class="wide"' if wide else ""
    image = f'<img src="{data_uri(path)}" alt="{_e(alt)}">'
    if wide:
        image = f'<div class="scroll">{image}</div>'
    return f"<figure{kind}>{image}<figcaption>{_e(caption)}</figcaption></figure>\n"


def config_text(variant: Variant, stage: str) -> tuple[str, str] | None:
    """(where it comes from, YAML text) of a stage's config: the run's config.yaml, else the planned one."""
    run = variant.runs.get(stage)
    folder = run.run_dir if run is not None else None
    if folder is not None and (Path(folder) / "config.yaml").is_file():
        return f"{Path(folder) / 'config.yaml'}", (Path(folder) / "config.yaml").read_text()
    planned = variant.planned.get(stage)
    if planned:
        return "planned config (the run has not written its own yet)", yaml.safe_dump(planned, sort_keys=False)
    return None


def _stage_table(variant: Variant) -> str:
    rows = []
    for stage, run in variant.runs.items():
        results = variant.results(stage)
        accuracy = getattr(results, "accuracy", None)  # pretraining has none
        top1 = accuracy.top1 if accuracy is not None else None
        rows.append(
            "<tr>"
            f'<th scope="row">{_e(stage)}</th><td>{status_badge(run.status)}</td>'
            f'<td class="num">{_e(tables.duration(run.seconds))}</td>'
            f'<td class="num">{_e(run.attempts if run.attempts is not None else tables.MISSING)}</td>'
            f"<td>{_e(_when(run.started))}</td><td>{_e(_when(run.finished))}</td>"
            f'<td class="num">{_e(tables.pct(top1))}</td>'
            f"<td><code>{_e(run.run_dir or tables.MISSING)}</code></td>"
            "</tr>"
        )
    head = "".join(
        f'<th scope="col">{h}</th>'
        for h in ("stage", "status", "wall time", "attempts", "started", "finished", "top-1 %", "folder")
    )
    out = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>\n'
    for stage, run in variant.runs.items():
        if run.error:
            out += f'<p>{_e(stage)} ({_e(run.status)}):</p><pre class="error">{_e(run.error)}</pre>\n'
    return out


def variant_block(replicates: list[Variant], curves: str | Path | None) -> str:
    """One ``<details>`` block per variant: each seed's stage statuses and times, configs, training curves."""
    variant = replicates[0]
    anchor = "variant-" + tables.safe_name(variant.name)
    badges = " ".join(
        f"{_e(stage)} {status_badge(next((r.status(stage) for r in replicates if r.status(stage) != 'done'), 'done'))}"
        for stage in variant.runs
    )
    seeds = f" ({len(replicates)} seeds)" if len(replicates) > 1 else ""
    parts = [
        f'<details class="variant" id="{_e(anchor)}">',
        f'<summary>{_e(variant.name + seeds)}<span class="masking">{_e(variant.label)}</span>{badges}</summary>',
    ]
    if variant.description:
        parts.append(f"<p>{_e(variant.description)}</p>")
    for replicate in replicates:
        if len(replicates) > 1:
            parts.append(f"<h3>seed {_e(replicate.seed)}</h3>")
        parts.append(_stage_table(replicate))
    for stage in ("pretrain", "finetune"):
        if stage not in variant.runs:
            continue
        found = config_text(variant, stage)
        if found is None:
            parts.append(f'<p class="missing">No {stage} config recorded.</p>')
            continue
        where, text = found
        parts.append(f'<h3>{_e(stage)} config</h3><p class="footnotes">{_e(where)}</p><pre>{_e(text)}</pre>')
    parts.append("<h3>Training curves</h3>")
    parts.append(
        figure(
            curves,
            f"{variant.name}: loss per logged step (metrics.jsonl) of its training stages.",
            f"training curves of {variant.name}",
            "No training metrics yet.",
        )
    )
    parts.append("</details>")
    return "\n".join(parts) + "\n"


def _setup(report: dict) -> str:
    meta = report.get("meta") or {}
    variants = by_name(report["variants"])
    done = sum(all(run.status == "done" for v in group for run in v.runs.values()) for group in variants.values())
    rows = [
        ("sweep", meta.get("name") or report.get("sweep_dir", "")),
        ("folder", report.get("sweep_dir", "")),
        ("created", _when(meta.get("created"))),
        ("report written", _when(report.get("generated"))),
        ("machine", meta.get("machine") or tables.MISSING),
        ("mixmask version", meta.get("mixmask_version") or tables.MISSING),
        ("sweep file", meta.get("sweep_file") or tables.MISSING),
        ("variants", f"{len(variants)} ({done} finished every stage)"),
    ]
    out = [f'<header id="setup"><h1>{_e(report["title"])}</h1>']
    if meta.get("description"):
        out.append(f'<p class="lead">{_e(meta["description"])}</p>')
    out.append('<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>")
    if meta.get("sweep_text"):
        out.append(f"<details><summary>Sweep file (YAML)</summary><pre>{_e(meta['sweep_text'])}</pre></details>")
    for note in report.get("notes") or []:
        out.append(f'<p class="missing">{_e(note)}</p>')
    out.append("</header>")
    out.append("<nav>" + "".join(f'<a href="#{key}">{_e(label)}</a>' for key, label in SECTIONS) + "</nav>")
    return "\n".join(out) + "\n"


def render(report: dict) -> str:
    """The page's HTML text. ``report``: ``title``, ``meta`` (the store's meta), ``generated`` (unix time),
    ``sweep_dir``, ``variants`` (collect.collect_variants), ``resolved`` (comparisons.resolved_lines: the first is
    the overall sentence), ``comparisons`` (comparisons.headline_grid, or None), ``summary``, ``table1`` and
    ``counts`` (the rows of
    tables.summary / table1 / counts), ``figures`` {figure2, figure3, occlusion, cka, cka-encoder, shape-bias: PNG
    path or None},
    ``curves`` {variant name: PNG path or None} and ``notes`` (lines shown under the setup)."""
    figures = report.get("figures") or {}
    curves = report.get("curves") or {}
    body = [_setup(report)]
    resolved = report.get("resolved") or []
    if resolved:
        body.append('<section id="resolved"><h2>Which differences are real</h2>')
        body.append(f'<p class="lead">{_e(resolved[0])}</p>')
        if len(resolved) > 1:
            body.append("<ul>" + "".join(f"<li>{_e(line)}</li>" for line in resolved[1:]) + "</ul>")
        if report.get("comparisons"):
            body.append(html_table(report["comparisons"], label_columns=1))
        else:
            body.append('<p class="footnotes">Every difference with its interval and p-values: comparisons.csv.</p>')
        body.append("</section>")
    body.append('<section id="summary"><h2>Summary</h2>')
    body.append(html_table(tables.summary_grid(report["summary"])) + "</section>")
    body.append('<section id="table1"><h2>Table 1: accuracy per ImageNet-X factor (%)</h2>')
    body.append(html_table(tables.table1_grid(report["table1"])) + "</section>")
    titles = {
        "figure2": "Figure 2: error ratios per factor",
        "figure3": "Figure 3: reconstructions",
        "occlusion": "Accuracy under occlusion",
        "cka": "CKA occlusion invariance",
        "shape-bias": "Shape bias",
        "interactions": "Multi-order interactions",
        "frequency": "Feature-map frequency and variance",
    }
    for key, title in titles.items():
        body.append(f'<section id="{key}"><h2>{_e(title)}</h2>')
        body.append(figure(figures.get(key), CAPTIONS[key], title, MISSING_FIGURE[key], wide=key == "cka"))
        if key == "cka" and figures.get("cka-encoder"):  # before finetuning, when eval.cka_encoder measured it
            body.append(figure(figures["cka-encoder"], CAPTIONS["cka-encoder"], "CKA before finetuning", "", wide=True))
        body.append("</section>")
    body.append('<section id="counts"><h2>Image counts and 95 % intervals per factor</h2>')
    if report["counts"]:
        body.append(html_table(tables.counts_grid(report["counts"]), label_columns=1))
    else:
        body.append(f'<p class="missing">{_e(MISSING_FIGURE["figure2"])}</p>')
    body.append("</section>")
    body.append('<section id="variants"><h2>Variants</h2>')
    body.extend(variant_block(group, curves.get(name)) for name, group in by_name(report["variants"]).items())
    body.append("</section>")
    body.append(f"<footer>Written by mixmask report on {_e(_when(report.get('generated')))}.</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(report['title'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_html(report: dict, path: str | Path) -> Path:
    """Write the report page (see ``render`` for the dict) to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report), encoding="utf-8")
    return path
