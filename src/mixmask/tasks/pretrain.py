"""``mixmask pretrain``: self-supervised pretraining into one run folder. ``model.method`` picks the method:
A2MIM (CNN or ViT, free or mixed masking), SimMIM, MAE (ViT) or MoCo v3 (two views, no masking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixmask.config import Config, ConfigError, save_config
from mixmask.data import build_dataset
from mixmask.data.transforms import eval_transform_for, train_transform, two_view_transform
from mixmask.engine import distributed
from mixmask.engine.run_dir import new_run_dir, write_json
from mixmask.engine.trainer import EpochSampler, fit
from mixmask.evaluation.reconstruction import reconstruct
from mixmask.masking import MixedMasker
from mixmask.models.a2mim import A2MIM
from mixmask.models.backbone import ViTBackbone, build_backbone
from mixmask.models.mae import MAE
from mixmask.models.mocov3 import MoCoV3, momentum_at
from mixmask.report.figures import reconstruction_figure


def build_pretrain_model(cfg: Config) -> tuple[torch.nn.Module, MixedMasker | None]:
    """The method's model and its masker (None for MoCo v3, which does not mask); fails on a patch/stage pairing
    the backbone cannot mask exactly."""
    backbone = build_backbone(cfg.model.backbone, cfg.data.image_size)
    if cfg.model.method == "mocov3":
        return MoCoV3(backbone, cfg.model.mocov3), None
    # on a ViT, and for SimMIM and MAE, the token enters (or tokens are dropped) right after the patch embedding
    vit = isinstance(backbone, ViTBackbone)
    auto_stage = 0 if vit or cfg.model.method in ("simmim", "mae") else None
    masker = MixedMasker.from_config(cfg.masking, backbone.strides, seed=cfg.train.seed, auto_stage=auto_stage)
    if cfg.model.method == "mae":
        for i, stage in enumerate(masker.stages):
            if stage != 0:
                raise ConfigError(
                    f"config field `masking.strategies[{i}].stage`: got {stage}; MAE drops masked patches at the "
                    "patch embedding, so the stage must be 0 or auto"
                )
        # the encoder's batch is (B, visible tokens, C): every image must keep as many patches
        dropped = {
            spec.count(cfg.data.image_size) * (spec.patch_size // backbone.patch_size) ** 2 for spec in masker.specs
        }
        if cfg.masking.mix == "per_sample" and len(dropped) > 1:
            raise ConfigError(
                f"config field `masking.mix`: got 'per_sample', but MAE needs the same number of masked patches in "
                f"every image of a batch and these strategies mask {sorted(dropped)}; use per_batch"
            )
        return MAE(backbone, cfg.model.mae, norm_pix=cfg.loss.norm_pix), masker
    model = A2MIM(
        backbone,
        masker.stages,
        cfg.loss,
        fill=cfg.masking.fill,
        token_mode=cfg.model.token_mode,
        gamma_init=cfg.model.token_gamma_init,
        decoder=cfg.model.decoder,
    )
    return model, masker


def reconstruction_images(cfg: Config, count: int = 8) -> torch.Tensor:
    """A fixed set of validation images (the same for every run of a data set) for figures and PSNR."""
    data = cfg.data
    dataset = build_dataset(data, "val", eval_transform_for(data))
    step = max(1, len(dataset) // count)
    # spread over the set, and off any period of the class order (class folders are sorted, ShapesX cycles)
    return torch.stack([dataset[(i * step + i) % len(dataset)][0] for i in range(min(count, len(dataset)))])


def pretrain(cfg: Config, out: str | Path | None = None, resume: str | Path | None = None) -> Path:
    """Train, checkpoint, and write reconstructions and ``results.json``; returns the run folder."""
    dist = distributed.setup(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # the same config gives the same initial weights (and, on the CPU, final ones)
    model, masker = build_pretrain_model(cfg)  # before any data is read: a bad pairing fails at once
    data = cfg.data
    make_transform = two_view_transform if masker is None else train_transform
    dataset = build_dataset(
        data,
        "train",
        make_transform(data.image_size, tuple(data.pretrain_scale), hflip=data.hflip, mean=data.mean, std=data.std),
    )
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = Path(distributed.broadcast_text(str(new_run_dir(cfg, "pretrain", out)) if dist.main else "", dist))
    if dist.main:
        save_config(cfg, run_dir / "config.yaml")
        print(f"run folder: {run_dir}")
    shown = reconstruction_images(cfg).to(dist.device) if dist.main and masker is not None else None
    train = cfg.train
    sampler = EpochSampler(len(dataset), train.batch_size, train.seed, 0, dist.world, train.accum_steps)
    total_micro_steps = train.epochs * sampler.batches_per_epoch()

    def step_fn(net: torch.nn.Module, batch, micro_step: int) -> dict[str, torch.Tensor]:
        if masker is None:  # MoCo v3: the two views of each image, and this step's momentum for the key encoder
            momentum = momentum_at(micro_step / total_micro_steps, cfg.model.mocov3)
            return net(batch.images, momentum=momentum)
        # masks differ per rank and step but are the same after a resume; the strategy choice is rank-independent
        generator = torch.Generator(device=dist.device).manual_seed(
            (cfg.train.seed * 1_000_003 + micro_step) * 1_009 + dist.rank
        )
        masks = masker(micro_step, len(batch), data.image_size, generator=generator)
        return net(batch.images, masks)

    recon: list[dict[str, Any]] = []

    def on_epoch_end(epoch: int, inner: torch.nn.Module) -> None:
        every = cfg.train.reconstruction_every_epochs
        if masker is None or not dist.main or not (epoch == cfg.train.epochs or (every and epoch % every == 0)):
            return
        recon.clear()
        for result in reconstruct(inner, masker, shown, data.mean, data.std, seed=cfg.train.seed):
            name = f"epoch{epoch:03d}_p{result['patch_size']}_r{result['ratio']}_s{result['stage']}.png"
            reconstruction_figure(result, run_dir / "reconstructions" / name)
            recon.append({k: v for k, v in result.items() if k != "rows"} | {"figure": f"reconstructions/{name}"})

    try:
        summary = fit(cfg, run_dir, model, dataset, step_fn, dist, on_epoch_end, description="pretrain")
        if dist.main:
            results = {
                "task": "pretrain",
                "method": cfg.model.method,
                "steps": summary["steps"],
                "epochs": summary["epochs"],
                "final_loss": summary["final"],
                "reconstruction": recon,
                "unreadable_images": summary["unreadable"],
            }
            write_json(run_dir / "results.json", results)
            print(f"done: {run_dir / 'results.json'}")
    finally:
        distributed.cleanup()
    return run_dir
