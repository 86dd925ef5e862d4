"""Figures of the robustness evaluations, drawn from their result records (``mixmask.results``; None where a value
is undefined).

Every function writes one PNG and returns its path. Figures are ``matplotlib.figure.Figure`` objects on an Agg canvas,
never pyplot, so plotting changes no global state and works without a display. Functions that compare models take
either one record or ``{model name: record}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mixmask.results import CKACurves, Factors, FrequencyProfile, InteractionCurve, OcclusionCurve, ShapeBias

DPI = 120
_THIN_HATCH = "///"
_THIN_COLOUR = "0.75"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # keeps legends placed outside the axes
    return path


def _num(value) -> float:
    """None (JSON's stand-in for nan) -> nan, so matplotlib leaves a gap."""
    return math.nan if value is None else float(value)


def _models(results, kind: type) -> dict:
    """``{name: record}`` for one ``kind`` record or a dict of them."""
    if isinstance(results, kind):
        return {"": results}
    if not results or not isinstance(results, dict) or not all(isinstance(r, kind) for r in results.values()):
        raise ValueError(f"expected a {kind.__name__} record or a dict of them by model name")
    return results


def _offsets(n_series: int, width: float = 0.8) -> tuple[list[float], float]:
    """Bar offsets and bar size of ``n_series`` grouped bars around each category position."""
    size = width / n_series
    return [(j - (n_series - 1) / 2) * size for j in range(n_series)], size


def _count_label(counts: Sequence[int]) -> str:
    counts = sorted(set(counts))
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]}"


def factor_accuracy_bars(factor_results: Factors, path: str | Path, title: str = "Accuracy per factor") -> Path:
    """Horizontal bars of accuracy per factor with 95 % confidence intervals, a dashed line at the average accuracy;
    tick labels give n per factor; thin factors (too few images to trust) are greyed, hatched and marked (thin);
    factors without images have no bar and say n=0."""
    factors = factor_results.factors
    names = list(factors)
    fig = _figure(7.5, 1.4 + 0.36 * max(len(names), 1))
    ax = fig.add_subplot(1, 1, 1)
    top = 0.0
    labels = []
    for i, name in enumerate(names):
        f = factors[name]
        y = len(names) - 1 - i  # first factor on top
        accuracy, count, thin = _num(f.accuracy), f.count, f.thin
        labels.append(f"{name}{' (thin)' if thin else ''}  n={count}")
        if count == 0 or math.isnan(accuracy):
            ax.text(0.005, y, "n=0" if count == 0 else "n/a", va="center", ha="left", fontsize=8, color="0.3")
            continue
        lo, hi = _num(f.ci95[0]), _num(f.ci95[1])
        xerr = None if math.isnan(lo) or math.isnan(hi) else [[max(accuracy - lo, 0)], [max(hi - accuracy, 0)]]
        ax.barh(
            y,
            accuracy,
            height=0.7,
            xerr=xerr,
            color=_THIN_COLOUR if thin else "C0",
            hatch=_THIN_HATCH if thin else None,
            edgecolor="0.4" if thin else "none",
            error_kw={"ecolor": "0.15", "capsize": 3, "elinewidth": 1},
        )
        top = max(top, accuracy, 0 if math.isnan(hi) else hi)
    ax.set_yticks(range(len(names))[::-1], labels, fontsize=8)
    handles = []
    average = _num(factor_results.average)
    if not math.isnan(average):
        handles.append(ax.axvline(average, color="k", linestyle="--", linewidth=1, label=f"average {average:.3f}"))
        top = max(top, average)
    if any(factors[n].thin for n in names):
        handles.append(Patch(facecolor=_THIN_COLOUR, hatch=_THIN_HATCH, edgecolor="0.4", label="thin (few images)"))
    ax.set_xlim(0, max(1.0, top) * 1.02)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("top-1 accuracy (bars: 95 % CI)")
    ax.set_title(f"{title} ({factor_results.images} images)", fontsize=10)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def error_ratio_bars(
    factor_results: Factors | dict[str, Factors],
    path: str | Path,
    title: str = "Error ratio per factor (factor error / overall error)",
) -> Path:
    """Horizontal bars of each factor's error ratio, with the line at 1.0 (as error-prone as the average image).
    Takes one ``Factors`` record or ``{model name: Factors}`` for grouped bars (the paper's variant
    comparison). Thin bars are hatched; a factor is marked (thin) when it is thin for any model."""
    models = _models(factor_results, Factors)
    names: list[str] = []
    for results in models.values():
        names.extend(n for n in results.factors if n not in names)
    offsets, size = _offsets(len(models))
    fig = _figure(8.0, 1.4 + max(len(names), 1) * max(0.36, 0.2 * len(models)))
    ax = fig.add_subplot(1, 1, 1)
    top = 1.0
    labels = []
    any_thin = False
    for i, name in enumerate(names):
        y = len(names) - 1 - i
        entries = [results.factors.get(name) for results in models.values()]
        counts = [e.count for e in entries if e is not None]
        thin = any(e.thin for e in entries if e is not None)
        any_thin |= thin
        labels.append(f"{name}{' (thin)' if thin else ''}  {_count_label(counts or [0])}")
        for j, entry in enumerate(entries):
            y_bar = y - offsets[j]  # first model on top within the group
            ratio = math.nan if entry is None else _num(entry.error_ratio)
            if math.isnan(ratio):
                empty = entry is None or not entry.count
                ax.text(0.01, y_bar, "n=0" if empty else "n/a", va="center", fontsize=7, color="0.3")
                continue
            entry_thin = entry.thin
            ax.barh(
                y_bar,
                ratio,
                height=size * 0.9,
                color=f"C{j}",
                alpha=0.45 if entry_thin else 1.0,
                hatch=_THIN_HATCH if entry_thin else None,
                edgecolor="0.3" if entry_thin else "none",
            )
            top = max(top, ratio)
    ax.set_yticks(range(len(names))[::-1], labels, fontsize=8)
    ax.axvline(1.0, color="k", linestyle="--", linewidth=1)
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("error ratio (1.0 = average error; higher = more error-prone)")
    ax.set_title(title, fontsize=10)
    handles = [Patch(facecolor=f"C{j}", label=name) for j, name in enumerate(models) if name]
    if any_thin:
        handles.append(Patch(facecolor="white", hatch=_THIN_HATCH, edgecolor="0.3", label="thin (few images)"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def occlusion_curve(
    results: OcclusionCurve | dict[str, OcclusionCurve],
    path: str | Path,
    title: str = "Accuracy under random patch occlusion",
) -> Path:
    """Top-1 accuracy against the occluded share of patches; one curve or ``{model name: curve}``."""
    models = _models(results, OcclusionCurve)
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    top = 1.0
    details = set()
    for j, (name, r) in enumerate(models.items()):
        accuracy = [_num(a) for a in r.accuracy]
        ax.plot(r.ratios, accuracy, marker="o", color=f"C{j}", label=name or None, clip_on=False)
        top = max([top] + [a for a in accuracy if not math.isnan(a)])
        details.add(f"patch {r.patch_size} px, fill {r.fill}")
    ax.set_xlabel("occlusion ratio (share of patches dropped)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, top * 1.02 if top > 1 else 1.0)
    ax.set_title(f"{title}\n{'; '.join(sorted(details))}", fontsize=10)
    ax.grid(alpha=0.3)
    if any(models):
        ax.legend(fontsize=8)
    return _save(fig, path)


def cka_curves(
    results: CKACurves | dict[str, CKACurves],
    path: str | Path,
    title: str = "Occlusion invariance: CKA(clean, occluded)",
) -> Path:
    """Linear CKA between clean and occluded features against the occlusion ratio, one line per stage, y from 0
    to 1. One record, or ``{model name: record}`` for one panel per model."""
    models = _models(results, CKACurves)
    fig = _figure(1.0 + 4.6 * len(models), 4.2)
    axes = [fig.add_subplot(1, len(models), k + 1) for k in range(len(models))]
    for ax, (name, r) in zip(axes, models.items(), strict=True):
        for s, values in r.stages.items():
            ax.plot(r.ratios, [_num(v) for v in values], marker="o", label=f"stage {s}", clip_on=False)
        kind = "debiased minibatch CKA" if r.debiased else "linear CKA"
        panel = f"{name}: " if name else ""
        ax.set_title(f"{panel}{kind}, patch {r.patch_size} px, fill {r.fill}", fontsize=9)
        ax.set_xlabel("occlusion ratio (share of patches dropped)")
        ax.set_ylabel("CKA with the clean features")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def shape_bias_bars(
    results: ShapeBias | dict[str, ShapeBias],
    path: str | Path,
    title: str = "Cue-conflict shape bias per shape class",
) -> Path:
    """Shape bias per shape class as bars, the overall shape bias as a dashed line; one record or
    ``{model name: record}`` for grouped bars. Classes without a shape-or-texture decision say n/a."""
    models = _models(results, ShapeBias)
    classes: list[str] = []
    for r in models.values():
        classes.extend(c for c in r.per_class if c not in classes)
    offsets, size = _offsets(len(models))
    fig = _figure(max(6.0, 1.5 + 0.55 * len(classes) * max(1, len(models) / 2)), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for j, (name, r) in enumerate(models.items()):
        for i, cls in enumerate(classes):
            entry = r.per_class.get(cls)
            value = math.nan if entry is None else _num(entry.get("shape_bias"))
            if math.isnan(value):
                ax.text(i + offsets[j], 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="0.3")
                continue
            ax.bar(i + offsets[j], value, width=size * 0.9, color=f"C{j}")
        overall = _num(r.shape_bias)
        if not math.isnan(overall):
            label = f"{name + ': ' if name else ''}overall {overall:.3f}"
            ax.axhline(overall, color=f"C{j}" if name else "k", linestyle="--", linewidth=1, label=label)
    labels = []
    for cls in classes:
        counts = [int(r.per_class[cls].get("images") or 0) for r in models.values() if cls in r.per_class]
        labels.append(f"{cls} ({_count_label(counts or [0])})")
    ax.set_xticks(range(len(classes)), labels, fontsize=8, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel("shape bias (shape / (shape + texture))")
    ax.set_title(title, fontsize=10)
    handles, legend_labels = ax.get_legend_handles_labels()
    if len(models) > 1:
        handles += [Patch(facecolor=f"C{j}") for j in range(len(models))]
        legend_labels += list(models)
    if handles:
        ax.legend(handles, legend_labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def interaction_curves(
    curves: InteractionCurve | dict[str, InteractionCurve],
    path: str | Path,
    title: str = "Multi-order interactions J(m)",
) -> Path:
    """Normalised J(m) against the order's share of the patches, one line per model (the images every model
    classified correctly)."""
    models = _models(curves, InteractionCurve)
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for j, (name, c) in enumerate(models.items()):
        label = f"{name} ({c.images} images)" if name else f"{c.images} images"
        ax.plot(c.ratios, [_num(v) for v in c.normalised], marker="o", color=f"C{j}", label=label, clip_on=False)
    first = next(iter(models.values()))
    ax.set_xlabel(f"order m / (n - 2)   (grid {first.grid}x{first.grid}, n = {first.grid**2} patches)")
    ax.set_ylabel("J(m) / mean over orders")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def frequency_profiles(
    profiles: FrequencyProfile | dict[str, FrequencyProfile],
    path: str | Path,
    title: str = "Feature maps of the encoders before finetuning",
) -> Path:
    """Two panels against normalised depth: the highest frequency's relative log amplitude, and the mean spatial
    variance of the feature maps (log scale); one line per model."""
    models = _models(profiles, FrequencyProfile)
    fig = _figure(10.0, 4.2)
    high, variance = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)

    def draw(layers: list[dict], **style) -> None:
        depth = [layer["depth"] for layer in layers]
        high.plot(depth, [layer["relative_log_amplitude"][-1] for layer in layers], marker="o", **style)
        variance.plot(depth, [layer["spatial_variance"] for layer in layers], marker="o", **style)

    for j, (name, p) in enumerate(models.items()):
        draw(p.layers, color=f"C{j}", label=name or None)
    first = next(iter(models.values()))
    if first.random_init is not None:  # the architecture's random initialisation, the papers' reference
        draw(first.random_init, color="0.5", linestyle="--", label="random init")
    notes = [f"input {first.image_size} px"] if first.image_size else []
    notes += [f"maps under 8x8 left out: {', '.join(first.skipped)}"] if first.skipped else []
    if notes:
        title = f"{title}\n({'; '.join(notes)})"
    high.set_xlabel("normalised depth (stem 0, last block 1)")
    high.set_ylabel("Δ log amplitude at the highest frequency")
    variance.set_xlabel("normalised depth (stem 0, last block 1)")
    variance.set_ylabel("mean spatial variance per channel")
    variance.set_yscale("log")
    for ax in (high, variance):
        ax.grid(alpha=0.3)
    if any(models) or first.random_init is not None:
        high.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
