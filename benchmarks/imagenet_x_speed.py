"""ImageNet-X scoring speed: seconds for ``evaluate`` on predictions for all 50,000 ImageNet-1k val images.

    python benchmarks/imagenet_x_speed.py [--repeats 5] [--seed 0]

Per annotation set (top, multi): the first call with every cache cleared, so it includes reading the package's
annotation files (the val file list, the prototype list and the factor file), then the median of warm calls.
The predictions are random (the true label 60 % of the time); the time does not depend on them.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time

import numpy as np

from mixmask.evaluation import imagenet_x as ix

_CACHES = (ix.annotation_dir, ix.imagenet_wnids, ix._val_images, ix._prototypes, ix._annotations)


def random_predictions(seed: int) -> dict[str, int]:
    with open(ix.annotation_dir() / "filename_label.csv", newline="") as f:
        labels = {row["file_name"]: int(row["label"]) for row in csv.DictReader(f)}
    rng = np.random.default_rng(seed)
    truth = np.array(list(labels.values()))
    guess = np.where(rng.random(truth.size) < 0.6, truth, rng.integers(0, 1000, truth.size))
    return dict(zip(labels, guess.tolist(), strict=True))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm calls per set; the median is printed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    predictions = random_predictions(args.seed)
    print(f"{'factor':<8}{'first call s':>14}{'warm median s':>15}{'images':>9}{'average':>9}")
    for which in ix.WHICH_FACTORS:
        for cache in _CACHES:
            cache.cache_clear()
        first = seconds(lambda w=which: ix.evaluate(predictions, which_factor=w))
        warm = statistics.median(
            seconds(lambda w=which: ix.evaluate(predictions, which_factor=w)) for _ in range(args.repeats)
        )
        result = ix.evaluate(predictions, which_factor=which)
        print(f"{which:<8}{first:>14.3f}{warm:>15.3f}{result.images:>9,}{result.average:>9.4f}")


if __name__ == "__main__":
    main()
