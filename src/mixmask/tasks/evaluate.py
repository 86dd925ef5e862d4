"""``mixmask evaluate``: the evaluations that tell models apart beyond top-1, on a finetuned run.

Every metric is switched by the ``eval`` section and saved in ``results.json`` with the settings that produced it,
next to its plot. On ShapesX the factor table uses the test split's annotations and shape bias the cue-conflict
split; on ImageNet(-100) class folders the factor table is ImageNet-X on the validation images. A pretraining run
(or a finetuned run whose ``finetune.init`` is one) also gets its reconstructions scored.
"""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from mixmask.analysis import frequency, interactions
from mixmask.config import Config, ConfigError, EvalConfig, apply_override, load_config, read_yaml, to_dict
from mixmask.data import build_dataset, eval_loader
from mixmask.data.transforms import eval_transform_for
from mixmask.engine import distributed
from mixmask.engine.checkpoint import latest_intact_checkpoint, load_checkpoint
from mixmask.engine.run_dir import resume_config, run_task, write_json
from mixmask.evaluation import imagenet_x
from mixmask.evaluation.cka import occlusion_invariance, vit_token_drop
from mixmask.evaluation.classification import Outputs, collect, topk_accuracy
from mixmask.evaluation.occlusion import OcclusionSettings, occlusion_curve, occlusion_predictions
from mixmask.evaluation.probes import knn_probe, linear_probe
from mixmask.evaluation.reconstruction import masked_errors, reconstruct, reconstructs_pixels
from mixmask.evaluation.shape_bias import (
    CueConflictFolder,
    category_columns,
    category_scores,
    cue_conflict_predictions,
    shape_bias,
)
from mixmask.models.classifier import (
    Classifier,
    classes_in,
    load_backbone_weights,
    load_classifier_weights,
    read_classifier_weights,
    read_weights,
)
from mixmask.report import plots
from mixmask.report.figures import reconstruction_figure
from mixmask.results import (
    Accuracy,
    CKACurves,
    EvaluateResults,
    Factors,
    FrequencyProfile,
    InteractionCurve,
    OcclusionCurve,
    ProbeResults,
    Reconstruction,
    ShapeBias,
    Skipped,
)

WNID = re.compile(r"^n\d{8}$")


def evaluation_config(run: str | Path | None, path: str | Path | None, overrides: list[str]) -> Config:
    """The evaluated run's own config, then ``path`` (e.g. an eval settings file), then overrides. The run comes from
    the argument or from ``eval.run`` in the file or overrides."""
    user = read_yaml(path) if path else {}
    for override in overrides:
        user = apply_override(user, override)
    run = run or user.get("eval", {}).get("run")
    if not run:
        raise ConfigError(
            "config field `eval.run`: got ''; expected the run folder to evaluate (mixmask evaluate RUN_DIR ...)"
        )
    run_config = Path(run) / "config.yaml"
    if not run_config.is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    cfg = load_config(path, overrides, base=read_yaml(run_config))
    cfg.eval.run = str(run)
    return cfg


def load_classifier(cfg: Config, run_dir: Path, device: torch.device) -> Classifier:
    """The finetuned classifier of ``run_dir`` (its newest intact checkpoint), in eval mode on ``device``."""
    if cfg.finetune.probe == "knn":
        raise ConfigError(
            f"config field `eval.run`: {run_dir} is a kNN run; it has no trained classifier to evaluate "
            "(finetune with finetune.probe=none or linear)"
        )
    weights = read_weights(run_dir)
    classifier = Classifier(cfg.model.backbone, classes_in(weights, cfg.model.backbone), image_size=cfg.data.image_size)
    classifier.timm_model.load_state_dict(weights)
    return classifier.to(device).eval()


def write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_predictions(path: Path, dataset, outputs: Outputs, scores: torch.Tensor | None = None) -> dict[str, int]:
    """Per-image predictions (the argmax of ``scores``, by default the outputs' own values) as CSV (file_name, label,
    prediction, correct, class names), so any number can be recomputed with other tools; returns
    ``{file_name: predicted index}``."""
    names = [dataset.file_name(i) for i in outputs.indices.tolist()]
    predicted = (outputs.values if scores is None else scores).argmax(1).tolist()
    rows = (
        [name, label, guess, int(label == guess), dataset.classes[label], dataset.classes[guess]]
        for name, label, guess in zip(names, outputs.labels.tolist(), predicted, strict=True)
    )
    write_csv(path, ["file_name", "label", "prediction", "correct", "label_name", "prediction_name"], rows)
    return dict(zip(names, predicted, strict=True))


def write_cue_conflict(path: Path, dataset, indices, shapes, textures, predicted) -> None:
    """Per cue-conflict image: its shape and texture classes, the prediction, and which cue it followed."""
    rows = (
        [dataset.file_name(i), shape, texture, guess, int(guess == shape), int(guess == texture)]
        for i, shape, texture, guess in zip(indices, shapes, textures, predicted, strict=True)
    )
    header = ["file_name", "shape", "texture", "prediction", "shape_decision", "texture_decision"]
    write_csv(path, header, rows)


def write_factor_images(path: Path, factors: imagenet_x.FactorResults) -> None:
    """The images the factor table scored: file name, correct (0/1) and one 0/1 column per factor."""
    names, correct, shows = factors.scored
    rows = ([name, int(c), *map(int, row)] for name, c, row in zip(names, correct, shows, strict=True))
    write_csv(path, ["file_name", "correct", *imagenet_x.FACTORS], rows)


def score_factors(
    cfg: Config, val_set, val_predictions: dict[str, int], test_set, test_predictions: dict[str, int] | None
) -> imagenet_x.FactorResults | str:
    """ImageNet-X style factor accuracies: on ShapesX, the test split's annotations; on ImageNet(-100) class
    folders, ImageNet-X on the val file names; else why they do not apply."""
    ev = cfg.eval
    options = {
        "which_factor": ev.which_factor,
        "filter_prototypes": ev.filter_prototypes,
        "min_count": ev.min_factor_images,
    }
    if test_predictions is not None:
        return imagenet_x.evaluate_annotations(test_predictions, imagenet_x.shapesx_rows(test_set), **options)
    classes = list(val_set.classes)
    if not all(WNID.match(c) for c in classes):
        return "the class folders are not ImageNet wnids, so ImageNet-X annotations do not apply"
    return imagenet_x.evaluate(val_predictions, wnids=classes, **options)


def factor_results(
    cfg: Config, classifier: Classifier, val_set, val_predictions: dict[str, int], out_dir: Path, device
) -> imagenet_x.FactorResults | str:
    """The classifier's factor accuracies (``score_factors``), predicting the ShapesX test split first."""
    ev, data = cfg.eval, cfg.data
    if data.dataset != "shapesx":
        return score_factors(cfg, val_set, val_predictions, None, None)
    test = build_dataset(data, "test", eval_transform_for(data))
    outputs = collect(classifier, eval_loader(test, data, ev.batch_size), device, "ShapesX test")
    predictions = write_predictions(out_dir / "test_predictions.csv", test, outputs)
    return score_factors(cfg, val_set, val_predictions, test, predictions)


def reconstruction_results(
    pretrain_run: Path, out_dir: Path, device: torch.device, ev: EvalConfig
) -> tuple[list[Reconstruction], str | None]:
    """Masked-pixel PSNR per strategy of a pretraining run on the first ``ev.reconstruction_images`` validation
    images, each image's squared error and masked pixel-channels written to ``reconstruction.csv`` (what the report's
    paired comparisons read), and its figure grids on 8 fixed images; nothing for a method that predicts no image (a
    two-view method, or HOG targets). Returns the records and the CSV's name (None without one)."""
    from mixmask.models.factory import build_pretrain_model
    from mixmask.tasks.pretrain import reconstruction_images

    cfg = resume_config(pretrain_run)
    model, masker = build_pretrain_model(cfg)
    if not reconstructs_pixels(model):  # a contrastive method or HOG targets: no image to score
        print(f"reconstructions: none ({'two views' if model.two_views else 'the model predicts HOG features'})")
        return [], None
    load_checkpoint(latest_intact_checkpoint(pretrain_run, weights_only=True), model, restore_rng=False)
    model.to(device).eval()
    val_set = build_dataset(cfg.data, "val", eval_transform_for(cfg.data))
    loader = eval_loader(val_set, cfg.data, ev.batch_size, min(ev.reconstruction_images, len(val_set)))
    indices, errors = masked_errors(model, masker, loader, cfg.data.mean, cfg.data.std, ev.seed, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(errors)
    columns = [f"{column}@{name}" for name in names for column in ("sse", "count")]
    per_image = zip(*[errors[name][column] for name in names for column in ("sse", "count")], strict=True)
    csv_rows = ([val_set.file_name(i), *values] for i, values in zip(indices, per_image, strict=True))
    write_csv(out_dir / "reconstruction.csv", ["file_name", *columns], csv_rows)
    images = reconstruction_images(cfg).to(device)
    results = []
    for result in reconstruct(model, masker, images, cfg.data.mean, cfg.data.std, seed=cfg.train.seed):
        stem = f"reconstructions/p{result['patch_size']}_r{result['ratio']}_s{result['stage']}"
        reconstruction_figure(result, out_dir / f"{stem}.png")
        # the image rows as uint8 (B, 3, H, W) tensors, so a report can lay out several runs side by side
        # (contiguous: a ViT's decoder output is a channels-last view, which safetensors refuses)
        rows = {name: (row * 255).round().to(torch.uint8).cpu().contiguous() for name, row in result["rows"].items()}
        save_file(rows, out_dir / f"{stem}.safetensors")
        error = errors[names[result["strategy"]]]
        scores = {k: v for k, v in result.items() if k != "rows"}
        scores["psnr_masked"] = 10 * math.log10(sum(error["count"]) / max(sum(error["sse"]), 1e-10))
        results.append(
            Reconstruction(**scores, figure=f"{stem}.png", images=f"{stem}.safetensors", scored=len(indices))
        )
    return results, "reconstruction.csv"


def cka_curves(cfg: Config, network: Classifier, val_set, device: torch.device) -> CKACurves:
    """CKA occlusion invariance of ``network``'s stages on ``eval.cka_images`` validation images, at the occlusion
    ratios above 0."""
    ev = cfg.eval
    settings = OcclusionSettings.from_config(cfg)
    occluded_only = replace(settings, ratios=tuple(r for r in settings.ratios if r > 0))
    drop = None
    if ev.cka_drop == "tokens":  # the cells are the ViT's patches
        drop = vit_token_drop(network.backbone)
        occluded_only = replace(occluded_only, patch_size=network.backbone.patch_size)
    loader = eval_loader(val_set, cfg.data, ev.batch_size, min(ev.cka_images, len(val_set)))
    curves = occlusion_invariance(
        network.backbone.forward_stages, loader, occluded_only, debiased=ev.cka_debiased, device=device, drop=drop
    )
    return CKACurves(**(curves | ({"fill": "tokens dropped"} if drop else {})))


def evaluate_classifier(
    cfg: Config, classifier: Classifier, device: torch.device, out_dir: Path, results: EvaluateResults, save
) -> None:
    """The evaluations of a classifier that ``cfg.eval`` switches on, into ``results`` (``save()`` after each), with
    their plots in ``out_dir`` and the wall time of each in ``results.seconds``."""
    ev, data = cfg.eval, cfg.data
    seconds = results.seconds
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name], clock = time.perf_counter() - clock, time.perf_counter()
        save()

    transform = eval_transform_for(data)
    val_set = build_dataset(data, "val", transform)
    # read the stimuli folder first: a wrong one fails before any compute
    stimuli = CueConflictFolder(ev.cue_conflict_root, transform, data.strict) if ev.cue_conflict_root else None
    val_loader = eval_loader(val_set, data, ev.batch_size, ev.max_images)
    val_outputs = collect(classifier, val_loader, device, "val")
    results.accuracy = Accuracy(topk_accuracy(val_outputs.values, val_outputs.labels, ev.topk), len(val_outputs.labels))
    results.unreadable_images = [{"path": s.path, "error": s.error} for s in val_outputs.skipped]
    val_predictions = write_predictions(out_dir / "val_predictions.csv", val_set, val_outputs)
    results.per_image["top1"] = "val_predictions.csv"
    print("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in results.accuracy.topk.items()))
    lap("accuracy")

    if ev.imagenet_x:
        factors = factor_results(cfg, classifier, val_set, val_predictions, out_dir, device)
        if isinstance(factors, str):
            results.factors = Skipped(factors)
            print(f"factors skipped: {factors}")
        else:
            results.factors = Factors.from_json(factors.to_dict())
            write_factor_images(out_dir / "factor_images.csv", factors)
            results.per_image["factors"] = "factor_images.csv"
            plots.factor_accuracy_bars(results.factors, out_dir / "factor_accuracy.png")
            plots.error_ratio_bars(results.factors, out_dir / "error_ratio.png")
            print(factors.table())
        lap("factors")

    if ev.occlusion:
        occlusion = OcclusionSettings.from_config(cfg)
        indices, labels, predicted = occlusion_predictions(classifier, val_loader, occlusion, device=device)
        results.occlusion = OcclusionCurve(**occlusion_curve(labels, predicted, occlusion))
        header = ["file_name", "label"] + [f"prediction@{r:g}" for r in occlusion.ratios]
        header += [f"correct@{r:g}" for r in occlusion.ratios]
        rows = (
            [val_set.file_name(i), label, *guesses, *(int(g == label) for g in guesses)]
            for i, label, guesses in zip(indices.tolist(), labels.tolist(), predicted.tolist(), strict=True)
        )
        write_csv(out_dir / "occlusion_predictions.csv", header, rows)
        results.per_image["occlusion"] = "occlusion_predictions.csv"
        plots.occlusion_curve(results.occlusion, out_dir / "occlusion.png")
        lap("occlusion")

    if ev.cka:
        results.cka = cka_curves(cfg, classifier, val_set, device)
        plots.cka_curves(results.cka, out_dir / "cka.png")
        lap("cka")

    if ev.shape_bias:
        if data.dataset == "shapesx":
            cue_conflict = build_dataset(data, "cue_conflict", transform)
            predicted, shapes, textures, indices = cue_conflict_predictions(
                classifier, cue_conflict, ev.batch_size, device
            )
            results.shape_bias = ShapeBias(**shape_bias(predicted, shapes, textures, cue_conflict.classes))
            write_cue_conflict(
                out_dir / "cue_conflict_predictions.csv", cue_conflict, indices, shapes, textures, predicted
            )
            results.per_image["shape_bias"] = "cue_conflict_predictions.csv"
            plots.shape_bias_bars(results.shape_bias, out_dir / "shape_bias.png")
            print(f"shape bias: {results.shape_bias.shape_bias:.3f}")
        elif stimuli is not None:
            results.shape_bias = imagenet_shape_bias(classifier, val_set, stimuli, ev.batch_size, out_dir, device)
            if isinstance(results.shape_bias, ShapeBias):
                results.per_image["shape_bias"] = "cue_conflict_predictions.csv"
        else:
            results.shape_bias = Skipped(
                "shape bias needs the ShapesX cue-conflict split or eval.cue_conflict_root (the Geirhos et al. stimuli)"
            )
        lap("shape_bias")

    if ev.interactions:
        results.interactions = interaction_results(cfg, classifier, val_set, device, out_dir)
        results.per_image["interactions"] = "interactions.csv"
        lap("interactions")


def imagenet_shape_bias(
    network: torch.nn.Module, val_set, stimuli: CueConflictFolder, batch_size: int, out_dir: Path, device
) -> ShapeBias | Skipped:
    """Shape bias of an ImageNet classifier on the Geirhos et al. ``stimuli`` by the 16-category protocol
    (``category_scores``), overall and per shape category, with the per-stimulus decisions in a CSV."""
    if isinstance(network, DatasetClasses):  # a 1000-class model read on a subset: its own 1000 logits
        network, columns = network.classifier, None
    elif all(WNID.match(c) for c in val_set.classes):
        columns = imagenet_x.wnid_indices(list(val_set.classes))
    else:
        return Skipped("16-category shape bias needs a classifier of ImageNet classes (class folders named by wnid)")
    try:
        category_columns(range(imagenet_x.NUM_CLASSES) if columns is None else columns)
    except ValueError as error:
        return Skipped(f"16-category shape bias: {error}")
    predicted, shapes, textures, indices = cue_conflict_predictions(
        lambda images: category_scores(network(images), columns), stimuli, batch_size, device
    )
    write_cue_conflict(out_dir / "cue_conflict_predictions.csv", stimuli, indices, shapes, textures, predicted)
    result = ShapeBias(**shape_bias(predicted, shapes, textures, stimuli.classes))
    plots.shape_bias_bars(result, out_dir / "shape_bias.png")
    value = "undefined" if result.shape_bias is None else f"{result.shape_bias:.3f}"
    left_out = f"{stimuli.same_cue} with one category for both cues left out"
    print(f"shape bias (16 categories, {result.images} stimuli; {left_out}): {value}")
    return result


def probe_encoder(cfg: Config, init: str, num_classes: int, device: torch.device) -> tuple[Classifier, str]:
    """The encoder the probes read, in eval mode: the backbone of ``init`` (a pretraining run or a weights file),
    or, without one, a random initialisation drawn from ``train.seed`` (what a scratch run started from)."""
    torch.manual_seed(cfg.train.seed)
    encoder = Classifier(cfg.model.backbone, num_classes, image_size=cfg.data.image_size)
    if init:
        load_backbone_weights(encoder, init)
    return encoder.to(device).eval(), init or f"random init (train.seed={cfg.train.seed})"


def probe_results(
    cfg: Config, encoder: Classifier, described: str, device: torch.device, out_dir: Path, results: EvaluateResults
) -> None:
    """``eval.probes`` on the frozen encoder: features of the training images (``eval.probe_images`` of them), the
    validation split and, on ShapesX, the test and cue-conflict splits, computed once; each probe's accuracy,
    factors and shape bias into ``results.probes`` with their per-image records."""
    ev, data = cfg.eval, cfg.data
    transform = eval_transform_for(data)
    sets = {"train": build_dataset(data, "train", transform), "val": build_dataset(data, "val", transform)}
    if data.dataset == "shapesx":
        sets |= {
            "test": build_dataset(data, "test", transform),
            "cue_conflict": build_dataset(data, "cue_conflict", transform),
        }
    limits = {"train": ev.probe_images, "val": ev.max_images}
    features = {
        split: collect(encoder.features, eval_loader(dataset, data, ev.batch_size, limits.get(split, 0)), device,
                       f"probe features: {split}")
        for split, dataset in sets.items()
    }  # fmt: skip
    train, classes = features["train"], len(sets["train"].classes)
    for kind in ev.probes:
        if kind == "linear":
            classify = linear_probe(train.values, train.labels, classes, ev.probe_weight_decay)
            settings = {"weight_decay": ev.probe_weight_decay, "features": "standardised, pooled"}
        else:
            classify = knn_probe(train.values, train.labels, classes, cfg.finetune.knn_k, cfg.finetune.knn_temperature)
            settings = {"k": cfg.finetune.knn_k, "temperature": cfg.finetune.knn_temperature}
        prefix = f"probe_{kind}"
        val, val_scores = features["val"], classify(features["val"].values)
        accuracy = Accuracy(topk_accuracy(val_scores, val.labels, ev.topk), len(val.labels))
        val_predictions = write_predictions(out_dir / f"{prefix}_val.csv", sets["val"], val, val_scores)
        results.per_image[f"probe/{kind}/top1"] = f"{prefix}_val.csv"
        probe = ProbeResults(kind, described, len(train.labels), settings, accuracy)
        if ev.imagenet_x:
            test_predictions = None
            if "test" in sets:
                test = features["test"]
                test_predictions = write_predictions(
                    out_dir / f"{prefix}_test.csv", sets["test"], test, classify(test.values)
                )
            factors = score_factors(cfg, sets["val"], val_predictions, sets.get("test"), test_predictions)
            if isinstance(factors, str):
                probe.factors = Skipped(factors)
            else:
                probe.factors = Factors.from_json(factors.to_dict())
                write_factor_images(out_dir / f"{prefix}_factor_images.csv", factors)
                results.per_image[f"probe/{kind}/factors"] = f"{prefix}_factor_images.csv"
        if ev.shape_bias and "cue_conflict" in sets:
            conflict = features["cue_conflict"]
            predicted = classify(conflict.values).argmax(1).tolist()
            indices = conflict.indices.tolist()
            shapes = [int(sets["cue_conflict"].annotation(i)["shape"]) for i in indices]
            textures = [int(sets["cue_conflict"].annotation(i)["texture"]) for i in indices]
            probe.shape_bias = ShapeBias(**shape_bias(predicted, shapes, textures, sets["cue_conflict"].classes))
            write_cue_conflict(
                out_dir / f"{prefix}_cue_conflict.csv", sets["cue_conflict"], indices, shapes, textures, predicted
            )
            results.per_image[f"probe/{kind}/shape_bias"] = f"{prefix}_cue_conflict.csv"
        results.probes[kind] = probe
        print(f"{kind} probe on the frozen encoder ({described}): top1 {accuracy.top1:.4f}")


def interaction_results(
    cfg: Config, classifier: Classifier, val_set, device: torch.device, out_dir: Path
) -> InteractionCurve:
    """J(m) of the classifier on the candidates it classifies correctly; each scored image's J at every order goes
    to ``interactions.csv`` so the report can average over the images every variant got right."""
    ev = cfg.eval
    outputs = collect(classifier, eval_loader(val_set, cfg.data, ev.batch_size, ev.interaction_images), device, "val")
    right = (outputs.values.argmax(1) == outputs.labels).nonzero()[:, 0]
    indices = outputs.indices[right].tolist()
    images = torch.stack([val_set[i][0] for i in indices]).to(device) if indices else torch.zeros(0)
    labels = outputs.labels[right].to(device)
    ratios = list(interactions.DEFAULT_RATIOS)
    grid = ev.interaction_grid
    seeds = [ev.seed * 1_000_003 + i for i in indices]
    strengths = interactions.image_strengths(
        classifier, images, labels, grid, ratios, ev.interaction_pairs, ev.interaction_contexts, seeds
    )
    header = ["file_name", *[f"j@{r:g}" for r in ratios]]
    write_csv(
        out_dir / "interactions.csv",
        header,
        ([val_set.file_name(i), *row] for i, row in zip(indices, strengths.tolist(), strict=True)),
    )
    points = interactions.curve(ratios, grid, strengths) if indices else []
    return InteractionCurve(
        grid, ev.interaction_pairs, ev.interaction_contexts, ev.seed, len(outputs.labels), len(indices), ratios,
        [p.order for p in points], [p.strength for p in points], [p.normalised for p in points],
    )  # fmt: skip


def frequency_results(cfg: Config, encoder: Classifier, described: str, device: torch.device):
    """Feature-map frequency and variance of the encoder, and of a random initialisation of its architecture as the
    reference, on ``eval.frequency_images`` validation images at ``eval.frequency_image_size``."""
    ev = cfg.eval
    data = replace(cfg.data, image_size=ev.frequency_image_size or cfg.data.image_size)
    val_set = build_dataset(data, "val", eval_transform_for(data))
    images = next(iter(eval_loader(val_set, data, ev.frequency_images, ev.frequency_images))).images.to(device)
    random_init, _ = probe_encoder(cfg, "", len(val_set.classes), device)
    profiles = []
    for network in (encoder, random_init):
        try:
            layers = frequency.feature_frequency(network.timm_model, images, min_size=1)
        except ValueError as error:  # a ViT: no residual blocks with spatial maps
            return Skipped(str(error))
        profiles.append([asdict(layer) for layer in layers if min(layer.size) >= frequency.MIN_SIZE])
    skipped = [layer.layer for layer in layers if min(layer.size) < frequency.MIN_SIZE]
    return FrequencyProfile(described, len(images), profiles[0], data.image_size, skipped, profiles[1])


class DatasetClasses(torch.nn.Module):
    """An ImageNet-1k classifier read on a subset of its classes (ImageNet-100 class folders): the logits of the data
    set's wnids, in the data set's class order; the rest of the network as it is (for CKA, features)."""

    def __init__(self, classifier: Classifier, wnids: list[str]):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("columns", torch.tensor(imagenet_x.wnid_indices(wnids)), persistent=False)

    @property
    def backbone(self):
        return self.classifier.backbone

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)[:, self.columns]


def evaluate_model(cfg: Config, model: str, weights: str | Path, out: str | Path | None = None) -> Path:
    """``mixmask evaluate --model NAME --weights FILE``: any timm classifier with its own head (a file, a checkpoint
    of the official A2MIM / MoCo v3 / MAE code, a ``mixmask export``), evaluated as a run's classifier is. A
    1000-class model on ImageNet class folders of fewer classes is read on those classes' logits."""
    cfg.model.backbone = model
    found = read_classifier_weights(weights)
    classes = classes_in(found, model)
    if not classes:
        raise ConfigError(f"--weights {weights}: no classifier head for {model!r} in the file; evaluate needs one")
    classifier = Classifier(model, classes, image_size=cfg.data.image_size)
    load_classifier_weights(classifier, found, str(weights))
    device = distributed.setup(cfg.train.device).device
    network: torch.nn.Module = classifier
    val_classes = build_dataset(cfg.data, "val").classes
    if classes == imagenet_x.NUM_CLASSES and len(val_classes) < classes and all(WNID.match(c) for c in val_classes):
        network = DatasetClasses(classifier, list(val_classes))
    elif classes != len(val_classes):
        raise ConfigError(
            f"--model {model}: its head has {classes} classes but data.root has {len(val_classes)} class folders"
        )
    out_dir = Path(out) if out else Path(f"evaluation-{model}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    results = EvaluateResults(
        run=str(weights),
        run_task="model",
        settings=to_dict(cfg.eval),
        data={"dataset": data.dataset, "root": data.root, "image_size": data.image_size},
    )

    def save() -> None:
        write_json(out_dir / "results.json", results.to_json())

    evaluate_classifier(cfg, network.to(device).eval(), device, out_dir, results, save)
    save()
    print(f"done: {out_dir / 'results.json'}")
    return out_dir


def evaluate(cfg: Config, out: str | Path | None = None) -> Path:
    """Run the configured evaluations of ``cfg.eval.run``; write ``results.json`` and plots; return the folder."""
    run_dir = Path(cfg.eval.run)
    task = run_task(run_dir)
    out_dir = Path(out) if out else run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    device = distributed.setup(cfg.train.device).device
    ev, data = cfg.eval, cfg.data
    results = EvaluateResults(
        run=str(run_dir),
        run_task=task,
        settings=to_dict(ev),
        data={"dataset": data.dataset, "root": data.root, "image_size": data.image_size},
    )  # results.seconds: the wall time of each evaluation, which the dry-run plan scales

    def save() -> None:  # after every metric: a crash late in a long evaluation keeps what was measured
        write_json(out_dir / "results.json", results.to_json())

    if task == "finetune":
        start = time.perf_counter()
        classifier = load_classifier(cfg, run_dir, device)
        results.seconds["load"] = time.perf_counter() - start
        evaluate_classifier(cfg, classifier, device, out_dir, results, save)

    # the encoder before finetuning: the pretraining's, or the random initialisation a scratch run started from
    init = str(run_dir) if task == "pretrain" else cfg.finetune.init
    val_set = build_dataset(data, "val", eval_transform_for(data))
    if ev.probes or ev.frequency or (ev.cka and (task == "pretrain" or ev.cka_encoder)):
        encoder, described = probe_encoder(cfg, init, len(val_set.classes), device)
    if ev.probes:
        start = time.perf_counter()
        probe_results(cfg, encoder, described, device, out_dir, results)
        results.seconds["probes"] = time.perf_counter() - start
        save()
    if ev.frequency:
        start = time.perf_counter()
        results.frequency = frequency_results(cfg, encoder, described, device)
        results.seconds["frequency"] = time.perf_counter() - start
        save()
    if ev.cka and (task == "pretrain" or ev.cka_encoder):
        start = time.perf_counter()
        curves = cka_curves(cfg, encoder, val_set, device)
        if task == "pretrain":
            results.cka = curves
        else:
            results.cka_encoder = curves
        plots.cka_curves(curves, out_dir / ("cka.png" if task == "pretrain" else "cka_encoder.png"))
        print(f"CKA of the encoder before finetuning: {described}")
        results.seconds["cka_encoder"] = time.perf_counter() - start
        save()

    pretrain_run = run_dir if task == "pretrain" else Path(cfg.finetune.init) if cfg.finetune.init else None
    if (
        ev.reconstruction
        and pretrain_run is not None
        and pretrain_run.is_dir()
        and run_task(pretrain_run) == "pretrain"
    ):
        start = time.perf_counter()
        results.reconstruction, per_image = reconstruction_results(pretrain_run, out_dir, device, ev)
        if per_image:
            results.per_image["reconstruction"] = per_image
        results.reconstruction_run = str(pretrain_run)
        results.seconds["reconstruction"] = time.perf_counter() - start
        save()

    save()
    print(f"done: {out_dir / 'results.json'}")
    return out_dir
