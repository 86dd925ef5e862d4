"""``mixmask finetune``: a classifier on the backbone, from a pretraining run, a weights file, or scratch.

Three protocols (``finetune.probe``): ``none`` trains everything (the paper's recipe: AdamW, lr 1e-3, wd 0.05,
cross-entropy, 15 epochs; label smoothing and layer-wise lr decay available), ``linear`` trains the head on a frozen
backbone, ``knn`` trains nothing and classifies by a weighted vote of the nearest training images' features.
Training goes through the same engine as pretraining: checkpoints, ``--resume``, DDP, bf16 on CUDA, logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mixmask.config import Config, ConfigError
from mixmask.data import build_dataset, eval_loader, label_fraction
from mixmask.data.transforms import eval_transform_for, train_transform
from mixmask.engine import distributed
from mixmask.engine.run_dir import open_run_dir, write_json
from mixmask.engine.trainer import StepFn, fit
from mixmask.evaluation.classification import collect, knn_predict, topk_accuracy
from mixmask.models.classifier import Classifier, load_backbone_weights
from mixmask.models.factory import supervised
from mixmask.results import TOPK, Accuracy, FinetuneResults, Method, read_run_info


def build_classifier(cfg: Config, num_classes: int) -> tuple[Classifier, dict[str, Any]]:
    """The classifier with its backbone initialised from ``finetune.init`` (head always fresh)."""
    classifier = Classifier(
        cfg.model.backbone,
        num_classes,
        frozen=cfg.finetune.probe == "linear",
        image_size=cfg.data.image_size,
        drop_path=cfg.model.drop_path,
    )
    init: dict[str, Any] = {"from": cfg.finetune.init or "scratch"}
    if cfg.finetune.init:
        init |= load_backbone_weights(classifier, cfg.finetune.init)
    return classifier, init


def validation_accuracy(classifier: Classifier, cfg: Config, device: torch.device) -> Accuracy:
    """Top-k accuracy on the validation split (evaluation transform)."""
    data = cfg.data
    val = build_dataset(data, "val", eval_transform_for(data))
    classifier.eval()
    outputs = collect(classifier, eval_loader(val, data, cfg.eval.batch_size, cfg.eval.max_images), device, "val")
    return Accuracy(
        topk_accuracy(outputs.values, outputs.labels, cfg.eval.topk),
        images=len(outputs.labels),
        unreadable=[{"path": s.path, "error": s.error} for s in outputs.skipped],
    )


def knn_accuracy(classifier: Classifier, cfg: Config, device: torch.device) -> dict[str, Any]:
    """Weighted kNN on frozen, pooled backbone features: training images (evaluation transform) as the bank."""
    data, ft = cfg.data, cfg.finetune
    transform = eval_transform_for(data)
    train = label_fraction(build_dataset(data, "train", transform), ft.label_fraction, cfg.train.seed)
    val = build_dataset(data, "val", transform)
    classifier.eval()
    bank = collect(classifier.features, eval_loader(train, data, cfg.eval.batch_size), device, "kNN bank")
    query = collect(
        classifier.features, eval_loader(val, data, cfg.eval.batch_size, cfg.eval.max_images), device, "val"
    )
    scores = knn_predict(bank.values, bank.labels, query.values, len(train.classes), ft.knn_k, ft.knn_temperature)
    return {
        **topk_accuracy(scores, query.labels, cfg.eval.topk),
        "images": len(query.labels),
        "bank_images": len(bank.labels),
        "k": ft.knn_k,
        "temperature": ft.knn_temperature,
        "split": "val",
        "unreadable": [{"path": s.path, "error": s.error} for s in bank.skipped + query.skipped],
    }


def trained_method(cfg: Config) -> Method:
    """What the finetuned network was pretrained as: the record of the pretraining run ``finetune.init`` names,
    else a supervised classifier (from scratch, or from a weights file)."""
    init = Path(cfg.finetune.init) if cfg.finetune.init else None
    if init is not None and (init / "run.json").is_file():
        info = read_run_info(init)
        if info.task == "pretrain" and info.method is not None:
            return info.method
    return supervised(cfg)


def check_finetune_data(cfg: Config) -> None:
    """The pretraining-only data fields are refused in a finetuning config: finetuning reads the full labelled set
    (not ``data.subset``) with its own augmentation (not ``data.input_augment``)."""
    if cfg.data.subset:
        raise ConfigError(
            f"config field `data.subset`: got {cfg.data.subset}; it picks the images of pretraining, and finetuning "
            "uses the full labelled set (finetune.label_fraction for fewer labels)"
        )
    if cfg.data.input_augment:
        raise ConfigError(
            f"config field `data.input_augment`: got {cfg.data.input_augment}; it augments a masked-image model's "
            "input in pretraining, and finetuning has its own augmentation"
        )


def training_set(cfg: Config) -> Dataset:
    """The labelled training images with the finetuning augmentation (``finetune.label_fraction`` of them), as uint8
    crops: the trainer normalises them on the device."""
    data = cfg.data
    check_finetune_data(cfg)
    transform = train_transform(data.image_size, tuple(data.finetune_scale), hflip=data.hflip, mean=None, std=None)
    return label_fraction(build_dataset(data, "train", transform), cfg.finetune.label_fraction, cfg.train.seed)


def step_function(cfg: Config) -> StepFn:
    """Cross-entropy (with ``finetune.label_smoothing``) of one micro-step, as the trainer calls it (and the dry-run
    plan times it)."""

    def step_fn(net: torch.nn.Module, batch, micro_step: int) -> dict[str, torch.Tensor]:
        logits = net(batch.images)
        return {"loss": F.cross_entropy(logits.float(), batch.labels, label_smoothing=cfg.finetune.label_smoothing)}

    return step_fn


def finetune(cfg: Config, out: str | Path | None = None, resume: str | Path | None = None) -> Path:
    """Train (or, for kNN, just fit the bank), then write validation accuracy to ``results.json``."""
    dist = distributed.setup(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    ft = cfg.finetune
    train_set = training_set(cfg)
    classifier, init = build_classifier(cfg, len(train_set.classes))  # bad weights fail before a run folder exists
    run_dir = open_run_dir(cfg, "finetune", dist, out, resume, trained_method(cfg))

    results = FinetuneResults(probe=ft.probe, init=init, classes=list(train_set.classes), train_images=len(train_set))
    try:
        if ft.probe == "knn":
            if dist.main:
                classifier.to(dist.device)
                results.knn = knn_accuracy(classifier, cfg, dist.device)
                topk = {k: v for k, v in results.knn.items() if TOPK.match(k)}
                results.accuracy = Accuracy(topk, images=results.knn["images"])
        else:
            step_fn = step_function(cfg)
            summary = fit(cfg, run_dir, classifier, train_set, step_fn, dist, None, "finetune", ft.layer_decay)
            if dist.main:
                results.steps, results.epochs = summary["steps"], summary["epochs"]
                results.final_loss = summary["final"]
                results.unreadable_images = summary["unreadable"]
                results.seconds = {"train": summary["seconds"], "per_step": summary["seconds_per_step"]}
                results.compiled = summary["compiled"]
                results.accuracy = validation_accuracy(classifier, cfg, dist.device)
        if dist.main:
            write_json(run_dir / "results.json", results.to_json())
            top = ", ".join(f"{k} {v:.4f}" for k, v in results.accuracy.topk.items())
            print(f"validation: {top}")
            print(f"done: {run_dir / 'results.json'}")
    finally:
        distributed.cleanup()
    return run_dir
