"""Run folders: where a run's config, metrics, checkpoints, results and figures go."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mixmask.config import Config, load_config, save_config
from mixmask.results import Method, RunInfo, read_run_info


def new_run_dir(cfg: Config, kind: str, out: str | Path | None = None, method: Method | None = None) -> Path:
    """``out``, or ``train.out_dir/train.name``, or ``train.out_dir/<kind>-<backbone>-<time>``; must not hold a run.
    Its ``run.json`` records the task, the version, the seed and what is trained (``method``), before any training."""
    if out is None:
        name = cfg.train.name or f"{kind}-{cfg.model.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
        out = Path(cfg.train.out_dir) / name
    run_dir = Path(out)
    if (run_dir / "checkpoints").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    from mixmask import __version__

    info = RunInfo(kind, __version__, time.strftime("%Y-%m-%d %H:%M:%S"), cfg.train.seed, method)
    write_json(run_dir / "run.json", info.to_json())
    return run_dir


def run_task(run_dir: str | Path) -> str:
    """What made a run folder: ``pretrain`` or ``finetune``."""
    return read_run_info(run_dir).task


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The saved config of a run, with optional overrides (e.g. more epochs)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    return load_config(path, overrides)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Atomic JSON write: a crash never leaves a half-written results file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)
    return path


__all__ = ["new_run_dir", "resume_config", "run_task", "save_config", "write_json"]
