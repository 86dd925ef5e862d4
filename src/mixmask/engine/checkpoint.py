"""Checkpoints that are atomic, checksummed, and load without unpickling anything.

A checkpoint is a folder ``run_dir/checkpoints/step-00000123/`` with ``model.safetensors``, ``optimizer.safetensors``
(every tensor of the optimizer state, keyed ``<param index>.<name>``) and ``state.json`` (step, epoch, loader
position, schedule, RNG states as base64, the optimizer's hyper-parameters, the sha256 of each safetensors file,
anything else the loop wants back). It is written into a temporary folder and renamed into place, so a crash leaves
the previous checkpoint whole; the newest ``train.keep_checkpoints`` are kept. Run folders from before this layout
have one folder ``checkpoints/last`` and still load.

Everything that reads a run's weights goes through :func:`latest_intact_checkpoint`: it checks the checksums and
falls back to an older checkpoint when the newest is damaged (a disk that filled up, a copy cut short).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
LEGACY_NAME = "last"  # the single checkpoint folder of run folders written before step folders
_STEP_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message names the file and what is left."""


def rng_state() -> dict[str, Any]:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in saved["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]
) -> Path:
    """Write ``model`` (its state dict), ``optimizer`` and the JSON ``state`` (with each file's sha256) atomically
    into ``folder``, replacing a checkpoint already there only once the new one is complete."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    old = folder.with_name(f".{folder.name}.old")
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, tmp / MODEL_FILE)
        state = dict(state, rng=rng_state())
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, tmp / OPTIMIZER_FILE)
            state["optimizer"] = meta
        state["sha256"] = {
            name: file_sha256(tmp / name) for name in (MODEL_FILE, OPTIMIZER_FILE) if (tmp / name).exists()
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)  # the old checkpoint stays whole until the new one is in place
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    return folder


def load_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True
) -> dict[str, Any]:
    """Check, then load weights (and optimizer state) into the given objects; return the JSON state. A damaged
    checkpoint raises :class:`CheckpointError` naming the file."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint in {folder} ({STATE_FILE} missing)")
    problem = verify_checkpoint(folder, weights_only=optimizer is None)
    if problem is not None:
        raise CheckpointError(problem)
    state = json.loads((folder / STATE_FILE).read_text())
    device = next(model.parameters()).device
    model.load_state_dict(load_file(folder / MODEL_FILE, device=str(device)))
    if optimizer is not None and "optimizer" in state:
        tensors = load_file(folder / OPTIMIZER_FILE)  # on the CPU: load_state_dict moves each as needed
        meta = state["optimizer"]
        per_param: dict[int, dict[str, Any]] = {}
        for name, value in list(tensors.items()) + list(meta["scalars"].items()):
            index, key = name.split(".", 1)
            per_param.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


# ------------------------------------------------------------------------------------ a run's checkpoints


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(folder: Path) -> int:
    """The step a checkpoint folder holds: from its name, or for a legacy ``last`` from its state (-1 if unreadable)."""
    match = _STEP_NAME.match(folder.name)
    if match:
        return int(match.group(1))
    try:
        return int(json.loads((folder / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """A run's checkpoint folders, newest first, unchecked (``step-N`` folders, and a legacy ``last``)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and (_STEP_NAME.match(p.name) or p.name == LEGACY_NAME)]
    # on equal steps a step folder is newer than a legacy ``last`` (it was written by the resumed run)
    return sorted(folders, key=lambda p: (_step_of(p), p.name != LEGACY_NAME), reverse=True)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder holds any checkpoint (intact or not): a run to resume, not to start."""
    return bool(checkpoint_folders(run_dir))


def verify_checkpoint(folder: str | Path, weights_only: bool = False) -> str | None:
    """None when the checkpoint in ``folder`` is whole, else what is wrong, naming the file. Checks each file's
    sha256 against ``state.json``; checkpoints from before checksums get their safetensors headers and sizes
    checked. ``weights_only``: the optimizer file is not needed."""
    folder = Path(folder)
    state_file = folder / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        return f"{state_file} is missing"
    except (OSError, ValueError) as error:
        return f"{state_file} is unreadable ({error})"
    if not isinstance(state, dict):
        return f"{state_file} is unreadable (not a JSON object)"
    needed = [MODEL_FILE] + ([OPTIMIZER_FILE] if "optimizer" in state and not weights_only else [])
    sums = state.get("sha256")
    for name in needed:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if isinstance(sums, dict):
            try:
                intact = sums.get(name) == file_sha256(path)
            except OSError as error:
                return f"{path} is unreadable ({error.strerror or error})"
            if not intact:
                return f"{path} does not match its sha256 in {STATE_FILE} (truncated or changed)"
        else:
            try:
                with safe_open(str(path), "pt"):
                    pass
            except (SafetensorError, OSError) as error:
                return f"{path} is damaged ({error})"
    return None


def latest_intact_checkpoint(run_dir: str | Path, weights_only: bool = False, warn: bool = True) -> Path:
    """The newest whole checkpoint of a run: the one place that picks which checkpoint is read. Damaged ones are
    skipped with a warning on stderr naming the file; none at all, or none whole, raises :class:`CheckpointError`.
    ``weights_only``: only the model file has to be whole (readers of weights)."""
    folders = checkpoint_folders(run_dir)
    if not folders:
        raise CheckpointError(f"{run_dir} holds no checkpoint (nothing in {checkpoints_dir(run_dir)})")
    problems = []
    for folder in folders:
        problem = verify_checkpoint(folder, weights_only)
        if problem is None:
            if problems and warn:
                print(f"mixmask: warning: {'; '.join(problems)}; using the checkpoint {folder}", file=sys.stderr)
            return folder
        problems.append(problem)
    raise CheckpointError(
        f"no intact checkpoint in {checkpoints_dir(run_dir)}: {'; '.join(problems)}; nothing was changed, start a "
        "new run (another --out) or restore the files"
    )


def set_aside_newer(run_dir: str | Path, chosen: Path) -> list[Path]:
    """Rename the checkpoints newer than ``chosen`` (damaged ones a resume skipped) to ``damaged-<name>``, so they
    are neither counted nor deleted by the rotation; returns their new paths."""
    moved = []
    for folder in checkpoint_folders(run_dir):
        if folder == chosen:
            break
        target = folder.with_name(f"damaged-{folder.name}")
        n = 1
        while target.exists():
            target, n = folder.with_name(f"damaged-{folder.name}.{n}"), n + 1
        os.replace(folder, target)
        moved.append(target)
    return moved


def write_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Save ``checkpoints/step-<state['step']>`` atomically, then delete all but the newest ``keep``. A write that
    fails (a full disk, no permission) raises :class:`CheckpointError` saying which checkpoint is still there."""
    folder = checkpoints_dir(run_dir) / f"step-{state['step']:08d}"
    try:
        save_checkpoint(folder, model, optimizer, state)
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as a SafetensorError
        kept = checkpoint_folders(run_dir)  # a failed write leaves what was there, a same-step folder included
        left = f"the previous checkpoint {kept[0]} is intact" if kept else "there is no earlier checkpoint"
        reason = getattr(error, "strerror", None) or str(error)
        raise CheckpointError(f"could not write the checkpoint {folder} ({reason}); {left}") from error
    for old in checkpoint_folders(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return folder
