"""Finetuning, probes, export and evaluation end to end on ShapesX: a tiny A2MIM run, finetuned, exported, evaluated."""

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mixmask._compat import timm, torchvision
from mixmask.cli import main
from mixmask.config import ConfigError, load_config
from mixmask.engine.optim import param_groups
from mixmask.models.classifier import Classifier, WeightsError, load_backbone_weights, read_weights

ROOT = Path(__file__).resolve().parents[2]
DATA = ["data.image_size=32", "data.num_workers=0", "data.shapesx.val=300", "data.shapesx.test=340"]
PRETRAIN = [
    str(ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml"),
    *DATA,
    "data.shapesx.train=512",
    "train.epochs=1",
    "masking.strategies=[{patch_size: 4, ratio: 0.6}]",
    "train.reconstruction_every_epochs=0",
]
FINETUNE = [str(ROOT / "configs/finetune/tiny_shapesx.yaml"), *DATA, "data.shapesx.train=1500", "train.epochs=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One pretraining run and one finetuning run started from it."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", *PRETRAIN, "--out", str(root / "pre")]) == 0
    assert main(["finetune", *FINETUNE, f"finetune.init={root / 'pre'}", "--out", str(root / "ft")]) == 0
    return root / "pre", root / "ft"


def test_finetuning_from_an_a2mim_run_beats_chance_clearly(runs):
    pre, ft = runs
    results = json.loads((ft / "results.json").read_text())
    assert results["init"]["from"] == str(pre)
    backbone_tensors = len(read_weights(pre))
    assert results["init"]["loaded"] == backbone_tensors and results["init"]["head_initialised"] == 2
    assert results["accuracy"]["images"] == 300
    assert results["accuracy"]["top1"] > 0.3  # 10 classes: chance is 0.1
    assert results["accuracy"]["top5"] >= results["accuracy"]["top1"]
    assert len(results["classes"]) == 10 and results["steps"] == 2 * (1500 // 64)


def _exported_timm_model(run: Path, out: Path, capsys) -> torch.nn.Module:
    assert main(["export", str(run), "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[-1].strip()
    assert line.startswith("timm.create_model(")
    return eval(line, {"timm": timm}).eval()  # exactly the line the command tells users to run


def test_export_of_a_pretraining_run_loads_into_timm(runs, tmp_path, capsys):
    pre, _ = runs
    model = _exported_timm_model(pre, tmp_path / "backbone.safetensors", capsys)
    weights = read_weights(pre)
    assert set(model.state_dict()) == set(weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_export_of_a_finetuned_run_gives_the_same_logits_in_timm(runs, tmp_path, capsys):
    _, ft = runs
    model = _exported_timm_model(ft, tmp_path / "classifier.safetensors", capsys)
    classifier = Classifier("resnet_tiny", 10)
    classifier.timm_model.load_state_dict(read_weights(ft))
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(images), classifier.eval()(images), rtol=0, atol=0)
    # and finetuning accepts the exported file as init
    fresh = Classifier("resnet_tiny", 3)
    assert load_backbone_weights(fresh, tmp_path / "classifier.safetensors")["loaded"] == len(read_weights(ft)) - 2


def test_finetune_accepts_torchvision_weights_and_refuses_other_architectures(tmp_path):
    reference = torchvision.models.resnet18(weights=None, num_classes=1000)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "tv.pth")
    classifier = Classifier("resnet18", 7)
    load_backbone_weights(classifier, tmp_path / "tv.pth")
    for name, tensor in classifier.timm_model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, reference.state_dict()[name]), name
    assert classifier.timm_model.fc.weight.shape == (7, 512)  # fresh head for the new classes

    save_file(Classifier("resnet_tiny", 10).timm_model.state_dict(), tmp_path / "tiny.safetensors")
    with pytest.raises(ConfigError, match=r"finetune.init.*of another shape"):
        load_backbone_weights(Classifier("resnet18", 7), tmp_path / "tiny.safetensors")


def test_bad_init_fails_before_a_run_folder_is_made(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["finetune", *FINETUNE, f"finetune.init={tmp_path / 'missing.safetensors'}", "--out", str(out)]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not out.exists()


class MakesAFolder:
    """Pickled, this would run ``os.mkdir(path)`` when loaded with unpickling allowed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pickled_object_as_init_is_refused_in_one_line_and_never_run(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "hook": MakesAFolder(marker)}, tmp_path / "evil.pth")
    out = tmp_path / "r"
    assert main(["finetune", *FINETUNE, f"finetune.init={tmp_path / 'evil.pth'}", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.out + captured.err
    assert lines[0].startswith(f"mixmask: error: config field `finetune.init`: cannot read weights from {tmp_path}")
    assert "pickled Python objects (posix.mkdir)" in lines[0] and "a weights-only .pth/.pt state dict" in lines[0]
    assert not marker.exists() and not out.exists()


def _damaged_files(folder: Path) -> dict[str, Path]:
    """One file or folder per way a weights source can be unreadable."""
    torch.save([torch.zeros(2)], folder / "list.pth")
    torch.save(torch.zeros(2), folder / "tensor.pth")
    (folder / "random.pth").write_bytes(bytes(range(256)) * 8)
    torch.save({"w": torch.zeros(1000)}, folder / "whole.pth")
    (folder / "cut.pth").write_bytes((folder / "whole.pth").read_bytes()[:500])
    save_file({"w": torch.zeros(1000)}, folder / "whole.safetensors")
    (folder / "cut.safetensors").write_bytes((folder / "whole.safetensors").read_bytes()[:-100])
    (folder / "header.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    (folder / "not_a_run").mkdir()
    return {
        "list.pth": "it holds a list, not a state dict of named tensors",
        "tensor.pth": "it holds a Tensor, not a state dict",
        "random.pth": "not a readable PyTorch weights file",
        "cut.pth": "not a readable PyTorch weights file",
        "cut.safetensors": "not a whole safetensors file",
        "header.safetensors": "not a whole safetensors file",
        "not_a_run": "is a folder without checkpoints, not a mixmask run",
    }


def test_unreadable_weights_give_one_line_naming_the_file_and_what_is_accepted(tmp_path):
    for name, reason in _damaged_files(tmp_path).items():
        with pytest.raises(WeightsError) as info:
            read_weights(tmp_path / name)
        message = str(info.value)
        assert str(tmp_path / name) in message and reason in message, message
        assert "expected a .safetensors file, a weights-only .pth/.pt state dict" in message and "\n" not in message


def test_timm_training_checkpoints_still_load(tmp_path):
    """timm's own loader accepts its training checkpoints (argparse args, DDP prefixes): so does read_weights."""
    weights = Classifier("resnet_tiny", 10).timm_model.state_dict()
    wrapped = {f"module.{k}": v for k, v in weights.items()}
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=0.1), "state_dict": wrapped}, tmp_path / "timm.pth")
    loaded = read_weights(tmp_path / "timm.pth")
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_linear_probe_trains_only_the_head(runs, tmp_path):
    pre, _ = runs
    out = tmp_path / "linear"
    args = [*FINETUNE, "data.shapesx.train=256", "train.epochs=1", "finetune.probe=linear", f"finetune.init={pre}"]
    assert main(["finetune", *args, "--out", str(out)]) == 0
    before, after = read_weights(pre), read_weights(out)
    for name, tensor in before.items():  # weights and BatchNorm running statistics untouched
        assert torch.equal(after[name], tensor), name
    assert json.loads((out / "results.json").read_text())["accuracy"]["top1"] > 0.1


def test_knn_probe_classifies_with_frozen_features(runs, tmp_path):
    _, ft = runs  # the finetuned backbone's features: a kNN vote should do about as well as its own head
    out = tmp_path / "knn"
    assert main(["finetune", *FINETUNE, "finetune.probe=knn", f"finetune.init={ft}", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["knn"]["bank_images"] == 1500 and results["knn"]["images"] == 300
    head_top1 = json.loads((ft / "results.json").read_text())["accuracy"]["top1"]
    assert results["accuracy"]["top1"] > max(0.3, head_top1 - 0.15)
    assert not (out / "checkpoints").exists()


def test_low_label_finetuning_trains_on_its_share_and_the_knn_bank_too(runs, tmp_path):
    pre, _ = runs
    args = [*FINETUNE, f"finetune.init={pre}", "finetune.label_fraction=0.1", "train.batch_size=50"]
    assert main(["finetune", *args, "--out", str(tmp_path / "ft")]) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["train_images"] == 150 and results["steps"] == 6  # 150 labelled images, 3 batches, 2 epochs
    assert main(["finetune", *args, "finetune.probe=knn", "--out", str(tmp_path / "knn")]) == 0
    assert json.loads((tmp_path / "knn" / "results.json").read_text())["knn"]["bank_images"] == 150
    assert main(["finetune", *FINETUNE, "finetune.label_fraction=0", "--out", str(tmp_path / "bad")]) == 2


def test_layer_decay_scales_each_stage():
    classifier = Classifier("resnet_tiny", 10)
    groups = param_groups(classifier, 0.05, layer_decay=0.5)  # timm's helper over the classifier's stages
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    model = classifier.timm_model
    assert scale_of[id(model.fc.weight)] == 1.0
    assert scale_of[id(model.layer4[0].conv1.weight)] == 0.5
    assert scale_of[id(model.layer1[0].conv1.weight)] == 0.5**4
    assert scale_of[id(model.conv1.weight)] == scale_of[id(model.bn1.bias)] == 0.5**5
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(model.bn1.bias)] == 0.0 and decay_of[id(model.conv1.weight)] == 0.05


def test_evaluate_writes_every_metric_with_its_settings_and_plots(runs, tmp_path, capsys):
    pre, ft = runs
    out = tmp_path / "eval"
    args = ["evaluate", str(ft), "eval.cka_images=64", "data.shapesx.cue_conflict=100", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["occlusion_patch"] == 16 and results["run_task"] == "finetune"
    finetune_results = json.loads((ft / "results.json").read_text())
    assert results["accuracy"]["top1"] == pytest.approx(finetune_results["accuracy"]["top1"])
    occlusion = results["occlusion"]
    assert occlusion["ratios"][0] == 0 and occlusion["accuracy"][0] == pytest.approx(results["accuracy"]["top1"])
    assert occlusion["patch_size"] == 2  # 16 px at 224 scaled to 32 px
    factors = results["factors"]
    assert factors["images"] == 320 and set(factors["factors"]) >= {"texture", "shape", "pose"}
    assert all(f["count"] == 20 for f in factors["factors"].values())  # 340 test images: 20 per top factor
    assert all(f["thin"] for f in factors["factors"].values())  # fewer than 30 images each
    assert set(results["cka"]["stages"]) == {"0", "1", "2", "3", "4"}
    assert len(results["cka"]["stages"]["4"]) == 9 and results["cka"]["images"] == 64
    bias = results["shape_bias"]
    assert 0 <= bias["shape_bias"] <= 1 and bias["images"] == 100
    assert results["reconstruction_run"] == str(pre) and results["reconstruction"][0]["patch_size"] == 4
    for plot in ("factor_accuracy", "error_ratio", "occlusion", "cka", "shape_bias"):
        assert (out / f"{plot}.png").stat().st_size > 1000
    assert (out / results["reconstruction"][0]["figure"]).is_file()
    assert load_config(ft / "config.yaml").eval.run == ""  # the run's own config is left alone

    # the per-image records give back every number above
    import csv

    def rows(metric):
        with (out / results["per_image"][metric]).open(newline="") as handle:
            return list(csv.DictReader(handle))

    val = rows("top1")
    assert sum(int(r["correct"]) for r in val) / len(val) == pytest.approx(results["accuracy"]["top1"])
    scored = rows("factors")
    assert len(scored) == 320 and sum(int(r["correct"]) for r in scored) / 320 == pytest.approx(factors["average"])
    texture = [r for r in scored if r["texture"] == "1"]
    assert sum(int(r["correct"]) for r in texture) == factors["factors"]["texture"]["correct"]
    occluded = rows("occlusion")
    assert [sum(int(r[f"correct@{q:g}"]) for r in occluded) for q in occlusion["ratios"]] == occlusion["correct"]
    assert [r["file_name"] for r in occluded] == [r["file_name"] for r in val]  # the same images, in order
    conflict = rows("shape_bias")
    assert (sum(int(r["shape_decision"]) for r in conflict), len(conflict)) == (bias["shape_decisions"], 100)


def test_probes_read_the_pretrained_encoder_and_a_random_one_for_scratch(runs, tmp_path):
    import csv

    pre, ft = runs
    probes = ["eval.probes=[linear, knn]", "eval.probe_images=600", "eval.occlusion=false", "eval.cka=false"]
    assert main(["evaluate", str(ft), *probes, "data.shapesx.cue_conflict=100", "--out", str(tmp_path / "e")]) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    linear, knn = results["probes"]["linear"], results["probes"]["knn"]
    assert linear["encoder"] == knn["encoder"] == str(pre) and linear["train_images"] == 600
    assert linear["accuracy"]["images"] == 300
    assert linear["factors"]["images"] == 320 and knn["shape_bias"]["images"] == 100
    with (tmp_path / "e" / results["per_image"]["probe/linear/top1"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(int(r["correct"]) for r in rows) / 300 == pytest.approx(linear["accuracy"]["top1"])
    assert {"probe/knn/factors", "probe/knn/shape_bias", "probe/linear/factors"} <= set(results["per_image"])
    # the probes read the weights they are given: the finetuned backbone's features separate the classes
    args = [*probes, f"finetune.init={ft}", "eval.imagenet_x=false", "eval.shape_bias=false"]
    assert main(["evaluate", str(ft), *args, "--out", str(tmp_path / "f")]) == 0
    tuned = json.loads((tmp_path / "f" / "results.json").read_text())
    head = json.loads((ft / "results.json").read_text())["accuracy"]["top1"]
    assert tuned["probes"]["linear"]["accuracy"]["top1"] > max(0.3, head - 0.15)
    assert tuned["probes"]["knn"]["accuracy"]["top1"] > max(0.3, head - 0.15)
    # a scratch run: the probes read the random initialisation it started from
    scratch = tmp_path / "scratch"
    assert main(["finetune", *FINETUNE, "train.epochs=1", "--out", str(scratch)]) == 0
    assert main(["evaluate", str(scratch), *probes, "eval.probes=[linear]", "--out", str(tmp_path / "s")]) == 0
    random = json.loads((tmp_path / "s" / "results.json").read_text())["probes"]["linear"]
    assert random["encoder"] == "random init (train.seed=0)"


def test_cka_of_the_encoder_before_finetuning(runs, tmp_path):
    pre, ft = runs
    only = ["eval.imagenet_x=false", "eval.occlusion=false", "eval.shape_bias=false", "eval.reconstruction=false"]
    only += ["eval.cka_images=32"]
    assert main(["evaluate", str(pre), *only, "--out", str(tmp_path / "pre")]) == 0  # a pretraining run: its encoder
    encoder = json.loads((tmp_path / "pre" / "results.json").read_text())["cka"]
    assert main(["evaluate", str(ft), *only, "eval.cka_encoder=true", "--out", str(tmp_path / "ft")]) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["cka_encoder"] == encoder  # the finetuned run's encoder before finetuning is the pretraining's
    assert results["cka"] != encoder and (tmp_path / "ft" / "cka_encoder.png").is_file()


def test_interactions_and_feature_frequency_from_evaluate(runs, tmp_path):
    import csv

    _, ft = runs
    only = ["eval.imagenet_x=false", "eval.occlusion=false", "eval.shape_bias=false", "eval.cka=false"]
    analyses = [
        "eval.interactions=true",
        "eval.interaction_images=12",
        "eval.interaction_grid=3",
        "eval.frequency=true",
    ]
    assert main(["evaluate", str(ft), *only, *analyses, "eval.frequency_images=16", "--out", str(tmp_path / "e")]) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    curve = results["interactions"]
    assert curve["candidates"] == 12 and 1 <= curve["images"] <= 12 and curve["grid"] == 3
    assert curve["orders"] == [int(7 * r) for r in curve["ratios"]] and sum(curve["normalised"]) == pytest.approx(13)
    with (tmp_path / "e" / results["per_image"]["interactions"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == curve["images"]
    assert sum(float(r["j@0.5"]) for r in rows) / len(rows) == pytest.approx(curve["strength"][6])
    profile = results["frequency"]
    assert profile["images"] == 16 and [layer["layer"] for layer in profile["layers"]][0] == "act1"
    assert all(layer["relative_log_amplitude"][0] == 0 for layer in profile["layers"])
    # at 32 px the last blocks' maps are under 8x8 and left out; the random init reads the same layers
    names = [layer["layer"] for layer in profile["layers"]]
    assert profile["image_size"] == 32 and profile["skipped"] and not set(profile["skipped"]) & set(names)
    assert all(min(layer["size"]) >= 8 for layer in profile["layers"])
    assert [layer["layer"] for layer in profile["random_init"]] == names
    assert profile["random_init"] != profile["layers"]  # finetuned from a pretraining run, not a random init

    assert main(["evaluate", str(ft), *only, "eval.frequency=true", "eval.frequency_images=4",
                 "eval.frequency_image_size=64", "--out", str(tmp_path / "f")]) == 0  # fmt: skip
    larger = json.loads((tmp_path / "f" / "results.json").read_text())["frequency"]
    assert larger["image_size"] == 64 and len(larger["skipped"]) < len(profile["skipped"])


def test_evaluate_refuses_what_it_cannot_evaluate(runs, tmp_path, capsys):
    assert main(["evaluate", "eval.cka=false"]) == 2
    assert "eval.run" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def imagenet_tree(tmp_path, indices=(1, 7, 42), val_per_class=12, train_per_class=16):
    """A tiny ImageNet-like tree: the wnids of ImageNet-1k ``indices``, random train images and val images under
    their real val file names."""
    import csv

    import numpy as np
    from PIL import Image

    from mixmask.evaluation import imagenet_x

    wnids = imagenet_x.imagenet_wnids()
    chosen = [wnids[i] for i in indices]
    with (imagenet_x.annotation_dir() / "filename_label.csv").open() as handle:
        val_names = {w: [] for w in chosen}
        for row in csv.DictReader(handle):
            wnid = wnids[int(row["label"])]
            if wnid in val_names and len(val_names[wnid]) < val_per_class:
                val_names[wnid].append(row["file_name"])
    rng = np.random.default_rng(0)
    train_names = {w: [f"{w}_{i}.JPEG" for i in range(train_per_class)] for w in chosen}
    for split, names_of in (("train", train_names), ("val", val_names)):
        for wnid, names in names_of.items():
            (tmp_path / "in" / split / wnid).mkdir(parents=True)
            for name in names:
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "in" / split / wnid / name, format="JPEG")
    return chosen, ["data.dataset=folder", f"data.root={tmp_path / 'in'}", "data.image_size=32", "data.num_workers=0"]


def test_evaluate_scores_imagenet_class_folders_with_imagenet_x(tmp_path, capsys):
    """Predictions are joined on file name and mapped to ImageNet-1k classes through the wnids; the factor table
    equals imagenet_x.evaluate on the saved predictions."""
    import csv

    from mixmask.evaluation import imagenet_x

    chosen, data = imagenet_tree(tmp_path)
    run = tmp_path / "ft"
    args = [*data, "model.backbone=resnet_tiny", "train.epochs=1", "train.batch_size=8"]
    assert main(["finetune", *args, "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "eval.cka=false", "eval.occlusion=false"]) == 0
    out = run / "evaluation"
    results = json.loads((out / "results.json").read_text())
    assert results["shape_bias"]["skipped"].startswith("shape bias needs the ShapesX cue-conflict split or")
    with (out / "val_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36 and {r["label_name"] for r in rows} == set(chosen)
    expected = imagenet_x.evaluate({r["file_name"]: int(r["prediction"]) for r in rows}, wnids=sorted(chosen))
    assert results["factors"] == json.loads(json.dumps(expected.to_dict()))
    assert results["factors"]["settings"]["classes"] == 3 and 0 < results["factors"]["images"] <= 36


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Constructing a DataFrame from a list of sequences")  # inside imagenet-x
def test_a_timm_model_on_a_few_hundred_val_images_scores_as_the_imagenet_x_package(tmp_path):
    """Done-when of the checkpoint evaluation: 300 val images of 30 classes under their real file names, a
    1000-class timm model through --model/--weights; the factor table in results.json equals the imagenet-x
    package's own computation on the written predictions."""
    import csv

    import imagenet_x as package
    import pandas as pd

    from mixmask.evaluation import imagenet_x

    chosen, data = imagenet_tree(tmp_path, indices=range(5, 990, 33), val_per_class=10, train_per_class=1)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "w.pth")
    only = ["eval.occlusion=false", "eval.cka=false", "eval.min_factor_images=1"]
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "resnet18", "--weights", str(tmp_path / "w.pth"), *data, *only,
                 "--out", str(out)]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    with (out / "val_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 300 and len(chosen) == 30
    to_1k = imagenet_x.wnid_indices(chosen)  # the tree's classes in folder order
    model = pd.DataFrame({"file_name": [r["file_name"] for r in rows],
                          "predicted_class": [to_1k[int(r["prediction"])] for r in rows]})  # fmt: skip
    annotations = package.load_annotations(which_factor="top")
    annotations = annotations[annotations["class"].isin(to_1k)]  # the subset's images, as ours reads them
    joined = package.augment_model_predictions(annotations, {"m": model})
    accuracies = package.compute_factor_accuracies(joined, package.FACTORS).loc["m"]
    factors = results["factors"]
    assert factors["images"] == len(joined) > 250
    for name in package.FACTORS:
        cell = factors["factors"][name]
        assert cell["count"] == int(joined[name].sum()), name
        if cell["count"]:
            assert cell["accuracy"] == pytest.approx(accuracies[name], abs=1e-12), name


def test_any_timm_classifier_evaluates_with_its_own_head(tmp_path, capsys):
    """A 1000-class timm model with its weights in a .pth under a DDP and an encoder prefix, read on the 3 wnids of
    the tree: its predictions are those classes' logits, and the factor table equals imagenet_x.evaluate on them."""
    import csv

    from mixmask.evaluation import imagenet_x
    from mixmask.evaluation.shape_bias import CueConflictFolder, category_scores
    from tests.evaluation.test_shape_bias import stimulus_names, write_stimuli

    chosen, data = imagenet_tree(tmp_path)
    write_stimuli(tmp_path / "stimuli", stimulus_names())
    data.append(f"eval.cue_conflict_root={tmp_path / 'stimuli'}")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1000)
    torch.save({"state_dict": {f"module.encoder.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", "resnet18", "--weights", str(tmp_path / "w.pth"), *data, "eval.cka_images=8"]
    assert main([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["run_task"] == "model" and results["accuracy"]["images"] == 36
    with (out / "val_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = imagenet_x.evaluate({r["file_name"]: int(r["prediction"]) for r in rows}, wnids=sorted(chosen))
    assert results["factors"] == json.loads(json.dumps(expected.to_dict()))
    assert {int(r["prediction"]) for r in rows} <= {0, 1, 2} and set(results["cka"]["stages"]) == {
        "0",
        "1",
        "2",
        "3",
        "4",
    }
    # the head's logits at the three wnids' ImageNet-1k indices decide each prediction
    from mixmask.data import build_dataset, eval_loader
    from mixmask.data.transforms import eval_transform_for

    cfg = load_config(None, data)
    val = build_dataset(cfg.data, "val", eval_transform_for(cfg.data))
    batch = next(iter(eval_loader(val, cfg.data, 36)))
    logits = model.eval()(batch.images)[:, imagenet_x.wnid_indices(list(val.classes))]
    assert [int(r["prediction"]) for r in rows] == logits.argmax(1).tolist()

    # shape bias by the 16-category protocol on the model's own 1000 logits, not the tree's 3 classes
    stimuli = CueConflictFolder(tmp_path / "stimuli", eval_transform_for(cfg.data))
    images = torch.stack([stimuli[i][0] for i in range(len(stimuli))])
    decisions = category_scores(model(images)).argmax(1)
    with (out / "cue_conflict_predictions.csv").open() as handle:
        conflict = list(csv.DictReader(handle))
    assert [int(r["prediction"]) for r in conflict] == decisions.tolist()
    shape = sum(int(r["shape_decision"]) for r in conflict)
    texture = sum(int(r["texture_decision"]) for r in conflict)
    assert results["shape_bias"]["images"] == 16 and shape + texture == sum(
        d in (i, (i + 1) % 16) for i, d in enumerate(decisions.tolist())
    )
    assert results["shape_bias"]["shape_bias"] == (shape / (shape + texture) if shape + texture else None)

    other = timm.create_model("resnet34", num_classes=1000).state_dict()
    torch.save(other, tmp_path / "other.pth")
    assert main(["evaluate", "--model", "resnet18", "--weights", str(tmp_path / "other.pth"), *data]) == 2
    assert "do not fit model 'resnet18'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "resnet18", *data]) == 2
    assert "--model and --weights go together" in capsys.readouterr().err
