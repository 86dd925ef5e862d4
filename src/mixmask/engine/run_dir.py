"""Run folders: where a run's config, metrics, checkpoints, results and figures go."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixmask.config import Config, load_config, save_config
from mixmask.results import Method, RunInfo, read_run_info

if TYPE_CHECKING:
    from mixmask.engine.distributed import Dist


class RunDirError(ValueError):
    """A run folder that cannot be made, or is not the run it should be."""


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
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(
            f"cannot create the run folder {run_dir}: {error.strerror or error}; pick another --out or train.out_dir"
        ) from None
    from mixmask import __version__

    info = RunInfo(kind, __version__, time.strftime("%Y-%m-%d %H:%M:%S"), cfg.train.seed, method)
    write_json(run_dir / "run.json", info.to_json())
    return run_dir


def open_run_dir(
    cfg: Config,
    kind: str,
    dist: Dist,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    method: Method | None = None,
) -> Path:
    """The run folder of a training task: ``resume`` (checked to be a ``kind`` run), or a new one that rank 0
    makes (recording ``method``, what is trained) and every rank learns. Rank 0 saves the resolved config there and
    prints where the run goes."""
    from mixmask.engine import distributed

    if resume is not None:
        run_dir = Path(resume)
        task = run_task(run_dir) if (run_dir / "run.json").is_file() else kind  # older runs have no run.json
        if task != kind:
            raise RunDirError(
                f"--resume {run_dir}: that folder is a {task} run, not a {kind} run; continue it with "
                f"`mixmask {task} --resume {run_dir}`"
            )
    else:
        made = str(new_run_dir(cfg, kind, out, method)) if dist.main else ""
        run_dir = Path(distributed.broadcast_text(made, dist))
    check_shared(run_dir, dist)
    if dist.main:
        save_config(cfg, run_dir / "config.yaml")
        print(f"run folder: {run_dir}")
    return run_dir


def check_shared(run_dir: Path, dist: Dist) -> None:
    """Every process must see the run folder as rank 0 does (its ``run.json``): a run across nodes writes one
    folder, so it must be on a file system every node shares. All processes fail together, in one line."""
    from mixmask.engine import distributed

    if dist.world == 1:
        return
    info = run_dir / "run.json"
    expected = distributed.broadcast_text(info.read_text() if dist.main and info.is_file() else "", dist)
    if not expected:
        return  # a run from before run.json: nothing to compare
    sees = info.is_file() and info.read_text() == expected
    blind = int(distributed.all_sum(0 if sees else 1, dist))
    if blind:
        raise RunDirError(
            f"{blind} of {dist.world} processes do not see the run folder {run_dir} that rank 0 made (this one, rank "
            f"{dist.rank} on {socket.gethostname()}, {'does' if sees else 'does not'}); a run across nodes needs its "
            "folder on a file system every node shares (train.out_dir or --out)"
        )


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


__all__ = [
    "RunDirError",
    "check_shared",
    "new_run_dir",
    "open_run_dir",
    "resume_config",
    "run_task",
    "save_config",
    "write_json",
]
