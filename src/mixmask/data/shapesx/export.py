"""ShapesX on disk: the export as class folders of PNGs with annotations, and the example grid figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

from mixmask.data.shapesx.dataset import SPLITS, ShapesX
from mixmask.data.shapesx.sampling import CYCLE
from mixmask.data.shapesx.shapes import CLASSES
from mixmask.factors import FACTORS


def export_shapesx(
    out: str | Path,
    size: int = 64,
    n_train: int | None = None,
    n_test: int | None = None,
    n_cue_conflict: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Writes ShapesX as class folders of PNGs (out/<split>/<class>/<file_name>) plus JSON-lines annotations
    for the test and cue-conflict splits; returns the number of images written per split."""
    from tqdm import tqdm

    out = Path(out)
    counts = {}
    for split, n in zip(SPLITS, (n_train, n_test, n_cue_conflict), strict=True):
        ds = ShapesX(split, size=size, length=n, seed=seed)
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        annotations = []
        for i in tqdm(range(len(ds)), desc=f"ShapesX {split}", disable=not progress):
            Image.fromarray(ds.render(i)).save(out / split / CLASSES[ds.label(i)] / ds.file_name(i))
            if split != "train":
                annotations.append(json.dumps(ds.annotation(i)))
        if annotations:
            (out / f"{split}_annotations.jsonl").write_text("\n".join(annotations) + "\n")
        counts[split] = len(ds)
    return counts


def example_grid(out: str | Path, size: int = 96, seed: int = 0) -> Path:
    """Draws a PNG overview: canonical examples of every class, one test image per factor (titled with its class
    and factors), and cue-conflict examples."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    test = ShapesX("test", size=size, seed=seed)
    cue = ShapesX("cue_conflict", size=size, seed=seed)
    # Test sample i has top factor CYCLE[i % 17] and class (i // 17) % 10: 16 + 17 c is the prototype of class c.
    n = len(CYCLE)
    panels = [(test, 16 + n * c, f"{CLASSES[c]}\n(canonical)") for c in range(len(CLASSES))]
    for k, factor in enumerate(FACTORS):
        # the first image with this factor alone, classes varied across factors
        i = next(i for i in range(k + n * (k % 10), len(test), n) if sum(test.annotation(i)[f] for f in FACTORS) == 1)
        panels.append((test, i, f"{CLASSES[test.label(i)]}\n{factor}"))
    for i in (0, 11, 22, 33):
        a = cue.annotation(i)
        panels.append((cue, i, f"{a['shape_name']} shape,\n{a['texture_name']} look"))
    cols = len(CLASSES)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(cols * 1.35, rows * 1.7))
    FigureCanvasAgg(fig)
    for k, (ds, i, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(ds.render(i))
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle("ShapesX: canonical classes, one test image per ImageNet-X factor, cue conflicts", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
