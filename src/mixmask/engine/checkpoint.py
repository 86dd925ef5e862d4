"""Checkpoints that are atomic and load without unpickling anything.

A checkpoint is a folder ``checkpoints/<name>/`` with ``model.safetensors``, ``optimizer.safetensors`` (every tensor
of the optimizer state, keyed ``<param index>.<name>``) and ``state.json`` (step, epoch, loader position, schedule,
RNG states as base64, the optimizer's hyper-parameters, anything else the loop wants back). It is written into a
temporary folder and renamed into place, so a crash leaves the previous checkpoint whole.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


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


def save_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any]
) -> Path:
    """Write ``model`` (its state dict), ``optimizer`` and the JSON ``state`` atomically into ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        state = dict(state, rng=rng_state())
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, tmp / "optimizer.safetensors")
            state["optimizer"] = meta
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)  # the old checkpoint stays whole until the new one is in place
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True
) -> dict[str, Any]:
    """Load weights (and optimizer state) into the given objects; return the JSON state."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint in {folder} (state.json missing)")
    state = json.loads((folder / "state.json").read_text())
    device = next(model.parameters()).device
    model.load_state_dict(load_file(folder / "model.safetensors", device=str(device)))
    if optimizer is not None and "optimizer" in state:
        tensors = load_file(folder / "optimizer.safetensors")  # on the CPU: load_state_dict moves each as needed
        meta = state["optimizer"]
        per_param: dict[int, dict[str, Any]] = {}
        for name, value in list(tensors.items()) + list(meta["scalars"].items()):
            index, key = name.split(".", 1)
            per_param.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state
