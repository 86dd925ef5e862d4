"""``mixmask pretrain``: self-supervised pretraining into one run folder. ``model.method`` picks the method:
A2MIM (CNN or ViT, free or mixed masking), SimMIM, MAE (ViT), R-MAE, C-MAE, or a joint-embedding method without a
mask (MoCo v3, SimCLR, BYOL, SimSiam, DINO)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mixmask.config import Config
from mixmask.data import build_dataset, pretraining_subset
from mixmask.data.transforms import (
    complementary_views_transform,
    eval_transform_for,
    input_augment_transform,
    multi_crop_transform,
    symmetric_views_transform,
    train_transform,
    two_view_transform,
)
from mixmask.engine import distributed
from mixmask.engine.distributed import Dist
from mixmask.engine.run_dir import open_run_dir, write_json
from mixmask.engine.trainer import EpochSampler, StepFn, fit
from mixmask.evaluation.occlusion import patch_size_for
from mixmask.evaluation.reconstruction import reconstruct, reconstructs_pixels
from mixmask.masking import MixedMasker
from mixmask.models.dino import local_crop_size
from mixmask.models.factory import build_pretrain_model, describe
from mixmask.models.mocov3 import collapse, momentum_at
from mixmask.report.figures import reconstruction_figure
from mixmask.results import PretrainResults, Reconstruction


def reconstruction_images(cfg: Config, count: int = 8) -> torch.Tensor:
    """A fixed set of validation images (the same for every run of a data set) for figures and PSNR."""
    data = cfg.data
    dataset = build_dataset(data, "val", eval_transform_for(data))
    step = max(1, len(dataset) // count)
    # spread over the set, and off any period of the class order (class folders are sorted, ShapesX cycles)
    return torch.stack([dataset[(i * step + i) % len(dataset)][0] for i in range(min(count, len(dataset)))])


def training_set(cfg: Config, two_views: bool) -> Dataset:
    """The training images with the method's augmentation (two views per image for a two-view method), as uint8
    crops: the trainer normalises them on the device."""
    data = cfg.data
    scale = tuple(data.pretrain_scale)
    patch = patch_size_for(data.image_size, data.input_mask_patch)
    augment = (data.input_augment, data.input_mask_ratio, patch, data.hflip, None, None)
    method, size, look = cfg.model.method, data.image_size, {"hflip": data.hflip, "mean": None, "std": None}
    if method == "cmae":  # two colour-augmented copies of one crop (B, 2, 3, H, W)
        transform = complementary_views_transform(size, scale, *augment)
    elif data.input_augment:  # (clean target, augmented input) per image
        transform = input_augment_transform(size, scale, *augment)
    elif method in ("simclr", "simsiam"):
        transform = symmetric_views_transform(method, size, scale, **look)
    elif method == "dino":  # its own crop scales: two global crops and the local ones
        dino = cfg.model.dino
        local = local_crop_size(dino, size)
        transform = multi_crop_transform(size, local, dino.global_scale, dino.local_scale, dino.local_crops, **look)
    else:  # MoCo v3 and BYOL: BYOL's two asymmetric views; masked-image models: one crop
        transform = (two_view_transform if two_views else train_transform)(size, scale, **look)
    if data.decoder == "dali":  # DALI takes the plain crop only: anything else is refused before a run folder exists
        from mixmask.data.dali import crop_steps

        crop_steps(transform)
    return pretraining_subset(build_dataset(data, "train", transform), data, cfg.train.seed)


def step_function(
    cfg: Config, model: torch.nn.Module, masker: MixedMasker | None, dist: Dist, dataset_size: int
) -> StepFn:
    """The loss of one micro-step, as the trainer calls it (and the dry-run plan times it)."""
    train = cfg.train
    sampler = EpochSampler(dataset_size, train.batch_size, train.seed, 0, dist.world, train.accum_steps)
    total_micro_steps = train.epochs * sampler.batches_per_epoch()

    def step_fn(net: torch.nn.Module, batch, micro_step: int) -> dict[str, torch.Tensor]:
        if masker is None:  # a joint-embedding method: its views, and how far training is (its schedules)
            return net(batch.images, progress=micro_step / total_micro_steps)
        # masks differ per rank and step but are the same after a resume; the strategy choice is rank-independent
        generator = torch.Generator(device=dist.device).manual_seed(
            (train.seed * 1_000_003 + micro_step) * 1_009 + dist.rank
        )
        masks = masker(micro_step, len(batch), cfg.data.image_size, generator=generator)
        if model.two_views:  # C-MAE: two copies of each crop, complementary masks, the target's momentum
            return net(batch.images, masks, momentum=momentum_at(micro_step / total_micro_steps, cfg.model.cmae))
        if cfg.data.input_augment:  # the clean crop is the target, its augmented copy the input
            return net(batch.images[:, 0], masks, inputs=batch.images[:, 1])
        return net(batch.images, masks)

    return step_fn


def pretrain(cfg: Config, out: str | Path | None = None, resume: str | Path | None = None) -> Path:
    """Train, checkpoint, and write reconstructions and ``results.json``; returns the run folder."""
    dist = distributed.setup(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # the same config gives the same initial weights (and, on the CPU, final ones)
    model, masker = build_pretrain_model(cfg)  # before any data is read: a bad pairing fails at once
    dataset = training_set(cfg, model.two_views)
    method = describe(cfg, model, masker)  # the resolved masking and the method, recorded before training
    run_dir = open_run_dir(cfg, "pretrain", dist, out, resume, method)
    data = cfg.data
    # figures and PSNR need a predicted image: none for two-view methods or HOG targets
    shown = reconstruction_images(cfg).to(dist.device) if dist.main and reconstructs_pixels(model) else None
    step_fn = step_function(cfg, model, masker, dist, len(dataset))
    recon: list[Reconstruction] = []

    def on_epoch_end(epoch: int, inner: torch.nn.Module) -> None:
        every = cfg.train.reconstruction_every_epochs
        if shown is None or not (epoch == cfg.train.epochs or (every and epoch % every == 0)):
            return
        recon.clear()
        for result in reconstruct(inner, masker, shown, data.mean, data.std, seed=cfg.train.seed):
            name = f"epoch{epoch:03d}_p{result['patch_size']}_r{result['ratio']}_s{result['stage']}.png"
            reconstruction_figure(result, run_dir / "reconstructions" / name)
            scores = {k: v for k, v in result.items() if k != "rows"}
            recon.append(Reconstruction(**scores, figure=f"reconstructions/{name}"))

    try:
        summary = fit(cfg, run_dir, model, dataset, step_fn, dist, on_epoch_end, description="pretrain")
        if dist.main:
            final = summary["final"]
            monitors = {k: v for k, v in final.items() if k.startswith("monitor/")}
            results = PretrainResults(
                method=cfg.model.method,
                steps=summary["steps"],
                epochs=summary["epochs"],
                final_loss={k: v for k, v in final.items() if k not in monitors},
                monitors=monitors,
                collapse=collapse(monitors),
                reconstruction=recon,
                unreadable_images=summary["unreadable"],
                seconds={"train": summary["seconds"], "per_step": summary["seconds_per_step"]},
                compiled=summary["compiled"],
            )
            write_json(run_dir / "results.json", results.to_json())
            if results.collapse:
                print(f"mixmask: warning: this run collapsed: {results.collapse}", file=sys.stderr)
            print(f"done: {run_dir / 'results.json'}")
    finally:
        distributed.cleanup()
    return run_dir
