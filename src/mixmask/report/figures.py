"""Report figures of images and runs rather than of one metric: one run's reconstructions, Figure 3 (the same images
reconstructed under every masking variant) and training curves. Like ``plots``, they draw on
``matplotlib.figure.Figure`` objects with an Agg canvas, never pyplot, so nothing global changes and no display is
needed. Each writes one PNG and returns its path, or None when there is nothing to draw yet (the caller says so in
the report).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from mixmask.report.plots import DPI, _figure, _save
from mixmask.results import Variant

CELL = 1.15  # inches per image cell of Figure 3


def _reconstruction_rows(variants: list[Variant]) -> list[dict[str, Any]]:
    """Every saved reconstruction of every variant's evaluate stage: label, PSNR and its uint8 image rows."""
    entries = []
    for v in variants:
        evaluation = v.evaluation
        folder = v.runs["evaluate"].run_dir if evaluation is not None else None
        for rec in (evaluation.reconstruction or []) if evaluation is not None else []:
            file = Path(folder) / rec.images if folder is not None and rec.images else None
            if file is None or not file.is_file():
                continue
            images = load_file(str(file))
            if "pasted" not in images or "original" not in images:
                continue
            label = f"{v.name}: patch {rec.patch_size} / {rec.ratio}"
            strategies = v.method.strategies if v.method is not None else ()
            if rec.strategy < len(strategies):
                label = f"{v.name}: {strategies[rec.strategy].label(with_stage=False)}"
            detail = f"stage {rec.stage}, {rec.psnr_masked:.1f} dB"
            entries.append({"variant": v.name, "label": label, "detail": detail, "images": images})
    return entries


def _hwc(batch: np.ndarray, i: int) -> np.ndarray:
    return np.transpose(batch[i], (1, 2, 0))


def reconstruction_figure(result: dict, path: str | Path, max_images: int = 8) -> Path:
    """One strategy's reconstructions (a result of ``mixmask.evaluation.reconstruction.reconstruct``): a row per
    image, columns masked input | prediction | pasted | original, titled with the strategy and masked-pixel PSNR."""
    rows = result["rows"]
    count = min(max_images, len(rows["original"]))
    columns = ["masked", "prediction", "pasted", "original"]
    fig = _figure(4 * 1.6, count * 1.6)
    axes = fig.subplots(count, 4, squeeze=False)
    for r in range(count):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(rows[name][r].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")  # (3, H, W) tensors
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(
        f"patch {result['patch_size']}, ratio {result['ratio']}, stage {result['stage']}: "
        f"masked PSNR {result['psnr_masked']:.2f} dB",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def reconstruction_grid(
    variants: list[Variant], path: str | Path, max_images: int = 6, masked: bool = True
) -> Path | None:
    """Figure 3: columns are the same validation images; the first row the originals, then per pretrained variant
    and masking strategy (mixed variants get a row per strategy) the masked input (grey = masked; with ``masked``)
    and the prediction pasted into the visible pixels, labelled with the variant, strategy, stage and masked-pixel
    PSNR. Built from the ``.safetensors`` image rows the evaluate stage saves; None when no variant has them."""
    entries = _reconstruction_rows(variants)
    if not entries:
        return None
    reference = entries[0]["images"]["original"]
    columns = min(max_images, *(len(e["images"]["original"]) for e in entries))
    rows: list[tuple[str, np.ndarray]] = [("original", reference)]
    for e in entries:
        original = e["images"]["original"]
        if original.shape != reference.shape or not np.array_equal(original, reference):
            rows.append((f"{e['variant']}: original\n(other images)", original))
        if masked and "masked" in e["images"]:
            rows.append((f"{e['label']}\nmasked input", e["images"]["masked"]))
        rows.append((f"{e['label']}\nreconstruction, {e['detail']}", e["images"]["pasted"]))
    gap, title = 0.06, 0.45  # between cells (share of a cell); inches above the grid for the title
    height = CELL * len(rows) * (1 + gap) + title
    fig = _figure(CELL * columns * (1 + gap), height)  # the row labels go left of the figure: savefig's tight box
    grid = fig.add_gridspec(
        len(rows), columns, left=0, right=1, bottom=0, top=1 - title / height, wspace=gap, hspace=gap
    )
    for r, (label, batch) in enumerate(rows):
        for c in range(columns):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(_hwc(batch, c), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)
    fig.suptitle("The same images reconstructed under each masking variant", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # the grid keeps its own spacing (no tight_layout)
    return path


def read_metrics(run_dir: str | Path | None) -> list[dict[str, Any]]:
    """The lines of a run's ``metrics.jsonl`` (unparseable lines, e.g. one cut by a crash, are skipped)."""
    if run_dir is None:
        return []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def training_curves(run_dirs: dict[str, str | Path | None], path: str | Path, title: str = "") -> Path | None:
    """Loss against step from each run's ``metrics.jsonl``, one panel per entry (e.g. pretrain, finetune); the
    pretraining panel also shows its spatial and frequency terms. A run without metrics gets a panel that says so.
    None when no run has any metrics."""
    series = {label: read_metrics(folder) for label, folder in run_dirs.items()}
    if not any(series.values()):
        return None
    fig = _figure(0.8 + 4.4 * len(series), 3.4)
    for k, (label, rows) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(series), k + 1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        if not rows:
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        steps = [row["step"] for row in rows]
        for key, style in (("loss", "-"), ("loss_spatial", "--"), ("loss_freq", ":")):
            if any(key in row for row in rows):
                ax.plot(steps, [_value(row.get(key)) for row in rows], style, marker=".", label=key)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
