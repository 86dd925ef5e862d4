"""Time of ``mixmask evaluate`` per 1,000 images, metric by metric, for the tiny model on this machine.

    python benchmarks/evaluate_speed.py                  # resnet_tiny, ShapesX 64 px, 1,000 images per split
    python benchmarks/evaluate_speed.py --size 32 --images 2000

A briefly trained resnet_tiny classifier (the weights do not change the cost) is evaluated once per metric, each run
with only that metric switched on, on ``--images`` validation images (and as many test and cue-conflict images).
Times include rendering ShapesX images, as a real evaluation does. Each metric's time is the run's time minus the
accuracy-only run's (which every run includes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mixmask.config import load_config
from mixmask.tasks.evaluate import evaluate, evaluation_config
from mixmask.tasks.finetune import finetune

METRICS = ("imagenet_x", "occlusion", "cka", "shape_bias")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.images
    data = [
        f"data.image_size={args.size}",
        "data.shapesx.train=128",
        f"data.shapesx.val={n}",
        f"data.shapesx.test={n}",
        f"data.shapesx.cue_conflict={n}",
        "data.num_workers=0",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        finetune(load_config(None, [*data, "model.backbone=resnet_tiny", "train.epochs=1"]), out=run)
        timings = {}
        for metric in ("accuracy", *METRICS):
            switches = [f"eval.{m}={m == metric}" for m in METRICS] + ["eval.reconstruction=false"]
            cfg = evaluation_config(run, None, [*switches, f"eval.cka_images={n}"])
            start = time.perf_counter()
            evaluate(cfg, out=Path(tmp) / metric)
            timings[metric] = time.perf_counter() - start
    print(f"\nresnet_tiny, {args.size} px, {n} images, {torch.get_num_threads()} torch threads")
    print(f"{'metric':<12} {'s per 1,000 images':>20}")
    print(f"{'accuracy':<12} {timings['accuracy'] * 1000 / n:>20.2f}")
    for metric in METRICS:
        extra = timings[metric] - timings["accuracy"]
        print(f"{metric:<12} {extra * 1000 / n:>20.2f}")
    total = timings["accuracy"] + sum(timings[m] - timings["accuracy"] for m in METRICS)
    print(f"{'all':<12} {total * 1000 / n:>20.2f}")


if __name__ == "__main__":
    main()
