"""``mixmask demo``: the Mix-and-Mask study on the embedded ShapesX benchmark, then its report, in one command.

The sweep ships with the package (``resources/demo_shapesx.yaml``): a tiny ResNet at 64 px, three single masking
variants, one mixed variant and a scratch baseline. It is an ordinary sweep, so running the command again resumes it.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from mixmask.tasks.plan import plan_text
from mixmask.tasks.sweep import load_sweep, run_sweep


def demo_sweep_file() -> Path:
    return Path(str(resources.files("mixmask") / "resources" / "demo_shapesx.yaml"))


def demo(out: str | Path = "mixmask-demo", jobs: int = 1, dry_run: bool = False) -> Path | None:
    """Run (or resume) the demo study into ``out`` and write its report; returns the HTML page."""
    from mixmask.tasks.report import report

    start = time.perf_counter()
    sweep = load_sweep(demo_sweep_file())
    print(f"mixmask demo: {len(sweep.variants)} variants ({', '.join(v.name for v in sweep.variants)}) into {out}")
    if dry_run:
        print(plan_text(sweep, out))
        return None
    unfinished = run_sweep(sweep, out, jobs=jobs)
    page = report(out)
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    status = "finished" if not unfinished else f"{unfinished} variant(s) did not finish (see the report)"
    print(f"demo {status} in {minutes} min {seconds} s; report: {Path(page).resolve()}")
    return page
