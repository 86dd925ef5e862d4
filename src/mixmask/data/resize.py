"""Resized copies of an image tree, for loading that decodes less: every image's shorter side brought down to
``size`` pixels (bicubic, with PIL's antialiasing; smaller images are copied byte for byte), written as JPEG at
``quality`` (90 by default; PNG files stay PNG), under the same relative path and file name, so class folders,
labels and the ImageNet-X join by file name still hold.

Each file is written to a temporary name and moved into place, so a stopped run leaves only whole files and the
same command resumes it (files already there are kept). ``resized.json`` in the output folder records the size and
quality; a second run with other settings into the same folder is refused. Unreadable images are copied as they
are, counted and listed: the loaders count them again when they meet them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mixmask.data import usable_cores
from mixmask.data.common import DataError
from mixmask.data.folders import list_images

QUALITY = 90
MARKER = "resized.json"


def resize_file(job: tuple[str, str, int, int]) -> str:
    """Write one resized copy (``(source, destination, size, quality)``); returns an error message, or "" when the
    image was read."""
    source, destination, size, quality = job
    temporary = f"{destination}.part"
    error = ""
    try:
        with Image.open(source) as image:
            image.load()
            width, height = image.size
            if min(width, height) <= size:
                shutil.copyfile(source, temporary)
            else:
                scale = size / min(width, height)
                shape = (max(1, round(width * scale)), max(1, round(height * scale)))
                smaller = image.convert("RGB").resize(shape, Image.Resampling.BICUBIC)
                kind = "PNG" if destination.lower().endswith(".png") else "JPEG"
                smaller.save(temporary, format=kind, **({"quality": quality} if kind == "JPEG" else {}))
    except Exception as failure:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        error = f"{type(failure).__name__}: {failure}"
        shutil.copyfile(source, temporary)
    os.replace(temporary, destination)
    return error


def check_marker(out: Path, size: int, quality: int) -> None:
    """Refuse settings out of range, and an output folder resized with other settings; record these settings in a
    new one."""
    if size < 1 or not 1 <= quality <= 100:
        raise DataError(f"--resize must be a positive number of pixels and --quality 1..100, got {size}, {quality}")
    marker = out / MARKER
    wanted = {"shorter_side": size, "quality": quality}
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded != wanted:
            raise DataError(
                f"{out} holds copies resized with {recorded}, not {wanted}; choose another --out (or the same "
                "--resize and --quality to resume)"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted) + "\n")


def write_resized(
    pairs: Iterable[tuple[str, str]], size: int, quality: int = QUALITY, workers: int | None = None, progress=True
) -> dict[str, object]:
    """Resized copies of ``(source, destination)`` pairs, on ``workers`` processes (default: every core); files
    already written are kept (the settings were checked by ``check_marker``). Returns counts and the unreadable
    sources."""
    pairs = list(pairs)
    todo = [(s, d, size, quality) for s, d in pairs if not os.path.exists(d)]
    for folder in {os.path.dirname(d) for _, d, _, _ in todo}:
        os.makedirs(folder, exist_ok=True)
    unreadable = []
    processes = workers or usable_cores()
    with Pool(processes) as pool, tqdm(total=len(todo), desc="resizing", unit="img", disable=not progress) as bar:
        for job, error in zip(todo, pool.imap(resize_file, todo, chunksize=32), strict=True):
            if error:
                unreadable.append({"path": job[0], "error": error})
            bar.update()
    return {"written": len(todo), "kept": len(pairs) - len(todo), "unreadable": unreadable}


def resize_tree(source: str | os.PathLike, out: str | os.PathLike, size: int, quality: int = QUALITY, **kwargs):
    """Resized copies of every image file under ``source`` (any depth), at the same relative paths under ``out``."""
    source, out = Path(source).expanduser().absolute(), Path(out).expanduser().absolute()
    if not source.is_dir():
        raise DataError(f"--src {source} is not a folder")
    if out.resolve() == source.resolve() or out.resolve().is_relative_to(source.resolve()):
        raise DataError(f"--out {out} lies in --src {source}; choose a folder outside it")
    pairs = [(path, str(out / Path(path).relative_to(source))) for path in list_images(str(source))]
    if not pairs:
        raise DataError(f"no image files under {source}")
    check_marker(out, size, quality)
    return {"source": str(source), "out": str(out), "images": len(pairs)} | write_resized(
        pairs, size, quality, **kwargs
    )
