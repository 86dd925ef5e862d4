"""Training-loader throughput on generated JPEG folders: the float path (normalised in the workers, as mixmask did
before) against the uint8 path (crops as uint8, normalised after the loader, as the trainer does now).

    python benchmarks/loader.py                          # 224 and 500 px JPEGs, 1 and 2 workers
    python benchmarks/loader.py --sizes 500 --workers 4 8 --images 2000

Each image is decoded with PIL, cropped (RandomResizedCrop 0.08-1 to 224, flip) and batched (64); the uint8 path
also pays its normalisation (on the CPU here; on a GPU it runs on a side stream). The two paths alternate pass by
pass over the same files, so drifts in machine speed hit both alike; the median of the passes is reported as
images per second per worker, and ``ratio`` is the mean of the passes' uint8 / float ratios, with its 95 % t
interval. The JPEGs (quality 90, random smooth colours) are
written once to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader

from mixmask.data import collate
from mixmask.data.folders import ClassFolderDataset
from mixmask.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, train_transform


def write_jpeg(job: tuple[Path, int, int]) -> None:
    path, size, seed = job
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth: compresses like photos
    Image.fromarray(coarse).resize((size * 4 // 3, size), Image.Resampling.BICUBIC).save(path, quality=90)


def write_jpegs(root: Path, count: int, size: int, classes: int = 4) -> None:
    """``count`` JPEGs of ``size`` px (shorter side, 4:3) in ``classes`` class folders, on every core."""
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(root / f"class{i % classes}" / f"image{i:05d}.jpg", size, i) for i in range(count)]
    with Pool() as pool:
        pool.map(write_jpeg, jobs, chunksize=64)


def one_pass(root: Path, uint8: bool, workers: int, batch: int) -> float:
    norm = {"mean": None, "std": None} if uint8 else {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    dataset = ClassFolderDataset(str(root), transform=train_transform(224, (0.08, 1.0), **norm))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate)
    start, seen = time.perf_counter(), 0
    for loaded in loader:
        images = normalize(loaded.images, IMAGENET_MEAN, IMAGENET_STD) if uint8 else loaded.images
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 500], help="shorter side of the JPEGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collects batches (and, for uint8, normalises them)
    with tempfile.TemporaryDirectory() as temp:
        for size in args.sizes:
            root = Path(temp) / f"jpeg{size}"
            write_jpegs(root, args.images, size)
            for workers in args.workers:
                speeds: dict[str, list[float]] = {"float": [], "uint8": []}
                for _ in range(args.passes):
                    for path in ("float", "uint8"):
                        speeds[path].append(one_pass(root, path == "uint8", workers, args.batch))
                median = {path: statistics.median(values) for path, values in speeds.items()}
                ratios = [u / f for u, f in zip(speeds["uint8"], speeds["float"], strict=True)]  # pass by pass
                low, high = stats.t.interval(0.95, len(ratios) - 1, statistics.mean(ratios), stats.sem(ratios))
                row = {
                    "jpeg_px": size,
                    "workers": workers,
                    "float_img_s_per_worker": round(median["float"] / workers, 1),
                    "uint8_img_s_per_worker": round(median["uint8"] / workers, 1),
                    "ratio": round(statistics.mean(ratios), 3),
                    "ratio_95ci": [round(low, 3), round(high, 3)],
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
