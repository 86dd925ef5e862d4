"""``mixmask export``: a run's network as one safetensors file that timm loads by itself.

The file holds the timm model's state dict under timm's names: the backbone of a pretraining run (no head), or
the whole classifier of a finetuning run. Its metadata records the backbone, the timm entry point and arguments
that build it, and the number of classes, so both ``mixmask finetune finetune.init=FILE`` and plain timm can use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file

from mixmask.engine.run_dir import resume_config, run_task
from mixmask.models.backbone import timm_name_and_args
from mixmask.models.classifier import classes_in, read_weights


def timm_snippet(timm_name: str, timm_args: dict, num_classes: int, file: str | Path) -> str:
    """The one line of Python that loads the exported file with timm (strictly: every tensor must fit)."""
    args = "".join(f", {k}={v!r}" for k, v in timm_args.items())
    return (
        f"timm.create_model({timm_name!r}, pretrained=True, num_classes={num_classes}{args}, "
        f"pretrained_cfg_overlay={{'file': {str(file)!r}, 'num_classes': {num_classes}}})"
    )


def export(run_dir: str | Path, out: str | Path) -> dict[str, str]:
    """Write ``out`` (atomically) and return its metadata, including the timm line that loads it."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"export writes safetensors; give a file name ending in .safetensors, not {out.name!r}")
    task = run_task(run_dir)
    cfg = resume_config(run_dir)
    weights = read_weights(run_dir)
    timm_name, timm_args = timm_name_and_args(cfg.model.backbone)
    num_classes = classes_in(weights, cfg.model.backbone)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".safetensors")
    except FileExistsError as error:  # a parent is a file
        raise OSError(f"cannot write {out}: {error.filename} is a file, not a folder") from None
    except OSError as error:  # the system's message would name a parent folder or the temporary file
        raise OSError(f"cannot write {out}: {error.strerror or error}") from None
    metadata = {
        "format": "mixmask-timm",
        "task": task,
        "backbone": cfg.model.backbone,
        "timm_name": timm_name,
        "timm_args": json.dumps(timm_args),
        "num_classes": str(num_classes),
        "source": str(Path(run_dir).resolve()),
    }
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, (OSError, SafetensorError)):  # a full disk: one line naming the file
            raise OSError(f"cannot write {out}: {getattr(error, 'strerror', None) or error}") from None
        raise
    return metadata | {"tensors": str(len(weights)), "timm": timm_snippet(timm_name, timm_args, num_classes, out)}
