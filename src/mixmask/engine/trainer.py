"""The training loop shared by pretraining and finetuning.

Reproducible and resumable by construction: the sample order of epoch e comes from a generator seeded by (seed, e);
each sample's augmentation from one seeded by (seed, e, index); the task's ``step_fn`` gets the global micro-step
to seed its masks. So a run stopped after any checkpoint and resumed with ``--resume`` replays exactly the batches,
augmentations and masks it would have seen, and on the CPU ends with bitwise the same weights.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mixmask.config import Config, ConfigError
from mixmask.data import Batch, collate, resolve_num_workers
from mixmask.data.transforms import normalize
from mixmask.engine.checkpoint import (
    checkpoints_dir,
    has_checkpoint,
    latest_intact_checkpoint,
    load_checkpoint,
    set_aside_newer,
    write_checkpoint,
)
from mixmask.engine.distributed import Dist, all_sum
from mixmask.engine.optim import base_lr, build_optimizer, lr_at, set_lr, set_weight_decay, weight_decay_at
from mixmask.models.backbone import Backbone, ViTBackbone

StepFn = Callable[[nn.Module, Batch, int], dict[str, torch.Tensor]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a permutation seeded by (seed, epoch), this rank's share of it, whole batches
    only (a multiple of ``group`` batches: gradient accumulation never spans epochs), optionally starting
    ``skip_batches`` batches in (resume)."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, group: int = 1):
        self.size, self.batch_size, self.seed, self.rank, self.world, self.group = (
            size,
            batch_size,
            seed,
            rank,
            world,
            group,
        )
        self.epoch, self.skip_batches = 0, 0

    def batches_per_epoch(self) -> int:
        return self.size // self.world // self.batch_size // self.group * self.group

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[self.rank : self.size // self.world * self.world : self.world]
        mine = mine[self.skip_batches * self.batch_size : self.batches_per_epoch() * self.batch_size]
        return iter([(self.epoch, i) for i in mine.tolist()])

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * self.batch_size


class SeededAugmentation(Dataset):
    """Draws each sample's random augmentation from a generator seeded by (seed, epoch, index), so it does not
    depend on worker processes, on the order of loading or on where a resumed run starts."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


def make_loader(dataset: Dataset, cfg: Config, dist: Dist) -> tuple[Iterable[Batch], EpochSampler]:
    train = cfg.train
    sampler = EpochSampler(len(dataset), train.batch_size, train.seed, dist.rank, dist.world, train.accum_steps)
    if sampler.batches_per_epoch() == 0:
        raise ConfigError(
            f"config field `train.batch_size`: got {train.batch_size}, but {len(dataset)} images cannot fill "
            f"{train.accum_steps} batch(es) of it on each of {dist.world} process(es); use a smaller batch"
            + (" or a larger data.repeat" if cfg.data.subset else "")
        )
    if cfg.data.decoder == "dali":  # the same keys, crops drawn by mixmask, decoded by DALI
        from mixmask.data.dali import DaliBatches

        return DaliBatches(dataset, SeededAugmentation(dataset, cfg.train.seed), sampler, cfg, dist.device), sampler
    workers = resolve_num_workers(cfg.data.num_workers)
    loader = DataLoader(
        SeededAugmentation(dataset, cfg.train.seed),
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=dist.device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,  # no new worker processes (and dataset copies) every epoch
    )
    return loader, sampler


class DeviceBatches:
    """The loader's batches on ``device``: uint8 images (the training transforms' output) normalised there with
    ``mean`` and ``std`` (float images pass as they are), 4-D CUDA images in channels_last when asked. On CUDA the
    next batch is copied and normalised on a side stream while the current one trains (timm's prefetching loader);
    on the CPU, one batch after the other. Normalising after the loader moves a quarter of the bytes through the
    workers' shared memory and pinned copies, and gives the same numbers as normalising in the loader."""

    def __init__(self, loader: Iterable[Batch], device: torch.device, mean, std, channels_last: bool):
        self.loader, self.device, self.mean, self.std, self.channels_last = loader, device, mean, std, channels_last

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalize(images, self.mean, self.std)
        if self.channels_last and images.ndim == 4:  # not views (B, 2, 3, H, W)
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _move(self, batch: Batch) -> Batch:
        parts = batch.images if isinstance(batch.images, tuple) else (batch.images,)  # DINO's crops of two sizes
        images = tuple(self._images(part) for part in parts)
        labels = batch.labels.to(self.device, non_blocking=True)
        return Batch(images if isinstance(batch.images, tuple) else images[0], labels, batch.indices, batch.skipped)

    def __iter__(self):
        if self.device.type != "cuda":
            yield from map(self._move, self.loader)
            return
        side, pending = torch.cuda.Stream(self.device), None
        for batch in self.loader:
            side.wait_stream(torch.cuda.current_stream(self.device))  # a loader's own device copies (DALI) first
            with torch.cuda.stream(side):
                ready = self._move(batch)
            if pending is not None:
                yield pending
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(side)
            for tensor in (*(ready.images if isinstance(ready.images, tuple) else (ready.images,)), ready.labels):
                tensor.record_stream(main)  # made on the side stream, used on the main one: freed only after it
            pending = ready
        if pending is not None:
            yield pending


class MetricsLog:
    """metrics.jsonl (appended, one line per log step) and TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next step instead of returning it to the system. By default it
    hands large freed blocks and the heap's free top back, and the next step faults every page in again, zeroed: a
    resnet_tiny step at 64 px on the CPU took some 22,000 page faults and about a quarter of its time
    (``benchmarks/pretrain_step.py`` reports the faults per step; ``--default-malloc`` runs without this). Blocks
    up to 32 MiB (glibc's largest mmap threshold) then come from the heap, and up to 1 GiB of freed heap stays with
    the process. Process-wide and harmless elsewhere: off glibc, or with jemalloc or tcmalloc preloaded, nothing
    changes. Returns whether glibc took the settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def compile_in_place(model: nn.Module) -> None:
    """``train.compile``: torch.compile the model's forward in place (its state dict keeps its names). A masked-image
    model is compiled whole: its masks are drawn outside it and its inputs keep their shapes (full batches), so its
    steps share one graph. A two-view model's forward takes this step's schedules as Python numbers, on which a
    compiled graph would specialise and recompile every step: its encoders are compiled instead."""
    if getattr(model, "two_views", False):
        for module in model.modules():
            if isinstance(module, (Backbone, ViTBackbone)):
                module.compile()
    else:
        model.compile()


def fit(
    cfg: Config,
    run_dir: Path,
    model: nn.Module,
    dataset: Dataset,
    step_fn: StepFn,
    dist: Dist,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    description: str = "train",
    layer_decay: float = 1.0,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` with the loss from ``step_fn``; resume from the newest intact checkpoint of
    ``run_dir`` when it has one (damaged newer ones are set aside with a warning), keep the newest
    ``train.keep_checkpoints``. The model's declarations shape the optimizer (``no_weight_decay``, ``lr_scales``,
    ``group_matcher`` with ``layer_decay`` < 1) and its steps: parameters the model reports as ``idle_parameters()``
    in every micro-step of an optimisation step keep their values and optimizer state. ``max_steps`` stops early,
    without a checkpoint (the dry-run plan times real steps that way). Returns a summary (steps, final loss terms,
    unreadable images, wall seconds of the whole call and the median seconds per optimisation step, loading
    included)."""
    started = time.perf_counter()
    keep_freed_memory()  # before the loader's workers fork, so they keep theirs too
    train = cfg.train
    device = dist.device
    cuda = device.type == "cuda"
    model.to(device)
    if cuda and train.channels_last in ("auto", True):  # the batches follow (DeviceBatches)
        model.to(memory_format=torch.channels_last)
    inner = model
    if dist.world > 1:
        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if cuda else None)
    if train.compile:
        compile_in_place(inner)
    use_bf16 = train.precision == "bf16" or (train.precision == "auto" and cuda)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    loader, sampler = make_loader(dataset, cfg, dist)
    channels_last = cuda and train.channels_last in ("auto", True)
    batches = DeviceBatches(loader, device, cfg.data.mean, cfg.data.std, channels_last)
    steps_per_epoch = sampler.batches_per_epoch() // train.accum_steps
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    lr = base_lr(cfg.optim, train.batch_size * dist.world * train.accum_steps)
    optimizer = build_optimizer(inner, cfg.optim, lr, layer_decay=layer_decay)

    checkpoints = checkpoints_dir(run_dir)
    step, epoch, position = 0, 0, 0
    unreadable: list[dict[str, str]] = []
    if has_checkpoint(run_dir):
        checkpoint = latest_intact_checkpoint(run_dir, warn=dist.main)
        state = load_checkpoint(checkpoint, inner, optimizer)
        step, epoch, position = state["step"], state["epoch"], state["position"]
        unreadable = state.get("unreadable", [])
        if dist.main:
            for moved in set_aside_newer(run_dir, checkpoint):
                print(f"mixmask: warning: set the damaged checkpoint aside as {moved}", file=sys.stderr)
            print(f"resuming from {checkpoint}: epoch {epoch}, step {step}")

    log = MetricsLog(run_dir, dist.main)

    def save() -> None:
        if dist.main:
            state = {"step": step, "epoch": epoch, "position": position, "unreadable": unreadable}
            write_checkpoint(run_dir, inner, optimizer, state, keep=train.keep_checkpoints)

    sums: dict[str, torch.Tensor] = {}
    summed = 0
    last_terms: dict[str, float] = {}
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    idle: set[int] | None = None  # ids of the parameters idle in every micro-step of this optimisation step
    progress = tqdm(total=total_steps, initial=step, desc=description, unit="step", disable=not dist.main)
    timer, images_seen = time.perf_counter(), 0
    step_ends: list[float] = []  # wall clock at the end of each optimisation step of this call
    model.train()
    try:
        while epoch < train.epochs:
            sampler.set_epoch(epoch, skip_batches=position)
            epoch_skipped: list[dict[str, str]] = []
            for batch in batches:
                epoch_skipped += [{"path": s.path, "error": s.error} for s in batch.skipped]
                micro_step = epoch * sampler.batches_per_epoch() + position
                last_of_accumulation = (position + 1) % train.accum_steps == 0
                sync = nullcontext() if last_of_accumulation or dist.world == 1 else model.no_sync()
                with sync:
                    with autocast():
                        out = step_fn(model, batch, micro_step)
                    (out["loss"] / train.accum_steps).backward()
                if hasattr(inner, "idle_parameters"):
                    now_idle = {id(p) for p in inner.idle_parameters()}
                    idle = now_idle if idle is None else idle & now_idle
                position += 1
                images_seen += len(batch)
                summed += 1
                nonfinite |= ~torch.isfinite(out["loss"].detach())
                for key, value in out.items():
                    if key.startswith(("loss", "monitor/")):  # loss terms and collapse monitors are logged
                        sums[key] = sums.get(key, 0) + value.detach().float()
                if not last_of_accumulation:
                    continue

                set_lr(optimizer, lr_at(step, total_steps, warmup_steps, lr, cfg.optim.min_lr), base=lr)
                if cfg.optim.weight_decay_end is not None:
                    wd = weight_decay_at(step, total_steps, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
                    set_weight_decay(optimizer, wd)
                if idle:  # no gradient: AdamW and LARS skip the parameter and leave its state as it is
                    for param in inner.parameters():
                        if id(param) in idle:
                            param.grad = None
                idle = None
                if cfg.optim.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(inner.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                progress.update(1)
                step_ends.append(time.perf_counter())
                if max_steps and step >= max_steps:
                    break

                at_log = step % train.log_every_steps == 0 or step == total_steps
                at_checkpoint = train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0
                if at_log or at_checkpoint:
                    if nonfinite.item():
                        raise TrainingDiverged(
                            f"loss is NaN or Inf at step {step} (epoch {epoch}); stopped. The last good checkpoint "
                            f"is kept in {checkpoints}; try a lower optim.lr or optim.clip_grad"
                        )
                if at_log:
                    elapsed = time.perf_counter() - timer
                    last_terms = {k: v.item() / summed for k, v in sums.items()}
                    record = {"step": step, "epoch": epoch, **last_terms, "lr": optimizer.param_groups[0]["lr"]}
                    record["images_per_s"] = images_seen * dist.world / max(elapsed, 1e-9)
                    log.write(record)
                    progress.set_postfix(
                        loss=f"{last_terms.get('loss', math.nan):.4f}", img_s=f"{record['images_per_s']:.0f}"
                    )
                    sums, summed, timer, images_seen = {}, 0, time.perf_counter(), 0
                if at_checkpoint:
                    save()

            skipped_total = all_sum(len(epoch_skipped), dist)
            if skipped_total and dist.main:
                tqdm.write(
                    f"epoch {epoch}: {int(skipped_total)} unreadable image(s) skipped, e.g. {epoch_skipped[:3]}",
                    file=sys.stderr,
                )
            unreadable += epoch_skipped
            if max_steps and step >= max_steps:
                break
            epoch, position = epoch + 1, 0
            if nonfinite.item():
                raise TrainingDiverged(
                    f"loss is NaN or Inf in epoch {epoch - 1}; the last good checkpoint is kept in {checkpoints}"
                )
            save()
            if on_epoch_end is not None:
                on_epoch_end(epoch, inner)
    finally:
        progress.close()
        log.close()
    gaps = sorted(b - a for a, b in zip(step_ends, step_ends[1:], strict=False))
    return {
        "steps": step,
        "epochs": epoch,
        "final": last_terms,
        "unreadable": unreadable,
        "seconds": time.perf_counter() - started,
        "seconds_per_step": gaps[len(gaps) // 2] if gaps else None,
        "compiled": train.compile,
    }
