"""ShapesX rendering speed on one core: images/s for render(i) (scene + pixels) and __getitem__ (PIL image).

    python benchmarks/shapesx_speed.py [--n 1000] [--repeats 3]

Each cell renders the first n samples of a split (n / 4 at 224 px) and keeps the best of a few repeats, since
timings on shared machines are noisy. The test split includes the occlusion and cropping solvers and the
cluttered backgrounds, so it is slower than train.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy and torch start their thread pools

import argparse  # noqa: E402
import time  # noqa: E402

from mixmask.data.shapesx import ShapesX  # noqa: E402


def images_per_second(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per cell (a quarter of it at 224 px)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    print(f"{'split':<8}{'size':>6}{'render img/s':>15}{'getitem img/s':>15}")
    for split in ("train", "test"):
        for size in (32, 64, 224):
            ds = ShapesX(split, size=size)
            n = args.n // 4 if size == 224 else args.n
            ds[0]  # warm the caches
            render = images_per_second(ds.render, n, args.repeats)
            getitem = images_per_second(ds.__getitem__, n, args.repeats)
            print(f"{split:<8}{size:>6}{render:>15,.0f}{getitem:>15,.0f}")


if __name__ == "__main__":
    main()
