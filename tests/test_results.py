"""The typed run records: labels decided in one place, JSON round trips, clear refusals, old run folders."""

import json
from pathlib import Path

import pytest

from mixmask.config import load_config
from mixmask.engine.run_dir import new_run_dir
from mixmask.models.factory import build_pretrain_model, describe
from mixmask.results import (
    EvaluateResults,
    Factors,
    Method,
    RecordError,
    RunInfo,
    Skipped,
    Strategy,
    read_results,
    read_run_info,
    results_from_json,
)

ROOT = Path(__file__).resolve().parents[1]
P8 = (Strategy("random", 8, 0.75, 0),)


def test_labels_name_the_method_and_a_vit_backbone():
    assert Method("a2mim", "resnet50", P8, token=True).label() == "patch 8 / 0.75 @ stage 0"
    assert Method("simmim", "resnet50", P8, token=True).label() == "SimMIM: patch 8 / 0.75 @ stage 0"
    no_stage = (Strategy("random", 8, 0.75, None),)
    assert Method("mae", "vit_tiny_p8", no_stage).label() == "MAE [vit_tiny_p8]: patch 8 / 0.75"
    assert Method("a2mim", "resnet50", no_stage).label() == "A2MIM, no token: patch 8 / 0.75"
    assert Method("a2mim", "vit_tiny_p8", P8, token=True).label() == "A2MIM [vit_tiny_p8]: patch 8 / 0.75 @ stage 0"
    mixed = (Strategy("random", 4, 0.6, 1), Strategy("blockwise", 16, 0.4, 3))
    assert Method("a2mim", "resnet50", mixed, token=True).label() == "mixed: patch 4 / 0.6 | blockwise patch 16 / 0.4"
    per_sample = Method("a2mim", "resnet50", mixed, "per_sample", token=True).label()
    assert per_sample.startswith("mixed per sample: ")
    assert Method("mocov3", "resnet50", two_views=True).label() == "MoCo v3: two views, no mask"
    assert Method("a2mim", "resnet50", P8, token=True, target="hog").label() == "A2MIM, HOG: patch 8 / 0.75 @ stage 0"
    maskfeat = Method("simmim", "vit_small_patch16_224", P8, token=True, target="hog").label()
    assert maskfeat == "SimMIM, HOG [vit_small_patch16_224]: patch 8 / 0.75 @ stage 0"
    assert Method("supervised", "resnet50").label() == "none (scratch)"
    assert Method("supervised", "vit_tiny_p8").label() == "none (scratch, vit_tiny_p8)"
    assert Method("supervised", "resnet50", init="/w/r50.pth").label() == "none (init: r50.pth)"


def test_a_pretraining_config_is_described_with_its_resolved_stages():
    cfg = load_config(None, ["masking.strategies=[{patch_size: 4, ratio: 0.6}, {patch_size: 16, ratio: 0.4}]"])
    method = describe(cfg, *build_pretrain_model(cfg))
    assert [(s.patch_size, s.stage) for s in method.strategies] == [(4, 1), (16, 3)]  # resnet_tiny: auto stages
    assert method.token and not method.two_views and method.label() == "mixed: patch 4 / 0.6 | patch 16 / 0.4"
    assert method.target == "pixels"
    cfg = load_config(ROOT / "configs/pretrain/maskfeat_tiny_shapesx.yaml")
    method = describe(cfg, *build_pretrain_model(cfg))
    assert method.target == "hog" and method.label() == "SimMIM, HOG: blockwise patch 8 / 0.4 @ stage 0"
    written_before = {k: v for k, v in method.to_json().items() if k != "target"}  # run.json before HOG targets
    assert Method.from_json(written_before).target == "pixels"


def test_run_info_round_trips_and_refuses_what_it_does_not_know(tmp_path):
    info = RunInfo("pretrain", "0.1.0", "2026-12-01 12:00:00", 3, Method("a2mim", "resnet50", P8, token=True))
    assert RunInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    with pytest.raises(RecordError, match="unknown RunInfo field"):
        RunInfo.from_json(info.to_json() | {"colour": "blue"})
    with pytest.raises(RecordError, match="Strategy"):
        RunInfo.from_json(info.to_json() | {"method": {"name": "a2mim", "backbone": "r", "strategies": [{"x": 1}]}})


def test_a_new_run_folder_records_the_method_and_an_old_one_still_loads(tmp_path):
    cfg = load_config(None, ["train.seed=7"])
    method = describe(cfg, *build_pretrain_model(cfg))
    run = new_run_dir(cfg, "pretrain", tmp_path / "new", method)
    info = read_run_info(run)
    assert info.task == "pretrain" and info.seed == 7 and info.method == method
    old = tmp_path / "old"  # run.json as mixmask 0.1.0 wrote it
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"task": "finetune", "mixmask": "0.1.0", "created": "2026-11-01"}))
    assert read_run_info(old).method is None
    (old / "run.json").write_text("{not json")
    with pytest.raises(RecordError, match="is damaged"):
        read_run_info(old)
    (old / "run.json").write_text(json.dumps({"mixmask": "0.1.0"}))
    with pytest.raises(RecordError, match="RunInfo field\\(s\\) missing: task, created"):
        read_run_info(old)


# an evaluation's results.json as this release writes it (a ShapesX demo run, two factors and one stage kept)
EVALUATION = {
    "run": "runs/p4/finetune",
    "run_task": "finetune",
    "settings": {"topk": [1, 5], "min_factor_images": 30},
    "data": {"dataset": "shapesx", "root": "", "image_size": 64},
    "seconds": {"load": 0.07, "accuracy": 0.9},
    "accuracy": {"top1": 0.83, "top5": 0.928, "images": 500, "split": "val"},
    "unreadable_images": [],
    "factors": {
        "average": 0.636,
        "worst_factor": "style",
        "images": 1280,
        "thin": ["style"],
        "settings": {"source": "shapesx", "which_factor": "top", "filter_prototypes": True, "min_count": 30},
        "factors": {
            "pose": {"accuracy": 0.9375, "error_ratio": 0.17, "count": 80, "correct": 75, "ci95": [0.86, 0.97],
                     "thin": False},
            "style": {"accuracy": 0.4, "error_ratio": 1.6, "count": 20, "correct": 8, "ci95": [0.22, 0.61],
                      "thin": True},
        },
    },  # fmt: skip
    "occlusion": {"ratios": [0.0, 0.5], "accuracy": [0.83, 0.268], "correct": [415, 134], "images": 500,
                  "patch_size": 5, "fill": "zero", "seed": 0},  # fmt: skip
    "cka": {"ratios": [0.5], "stages": {"0": [0.95]}, "images": 300, "patch_size": 5, "fill": "zero",
            "debiased": False, "seed": 0},  # fmt: skip
    "shape_bias": {"skipped": "shape bias needs the ShapesX cue-conflict split"},
    "reconstruction": [{"strategy": 0, "patch_size": 4, "ratio": 0.6, "stage": 1, "psnr_masked": 16.9,
                        "figure": "reconstructions/p4_r0.6_s1.png", "images": "reconstructions/p4_r0.6_s1.safetensors"}],
    "reconstruction_run": "runs/p4/pretrain",
    "per_image": {"top1": "val_predictions.csv", "factors": "factor_images.csv", "probe/knn/top1": "probe_knn_val.csv"},
    "probes": {
        "knn": {"kind": "knn", "encoder": "runs/p4/pretrain", "train_images": 3000, "settings": {"k": 20},
                "accuracy": {"top1": 0.61, "top5": 0.9, "images": 500, "split": "val"},
                "shape_bias": {"skipped": "shape bias needs the ShapesX cue-conflict split"}},
    },
    "task": "evaluate",
}  # fmt: skip


def test_metric_records_read_what_evaluation_writes_and_write_it_back_unchanged():
    record = results_from_json(EVALUATION)
    assert isinstance(record, EvaluateResults) and record.accuracy.top1 == 0.83 and record.accuracy.images == 500
    assert isinstance(record.factors, Factors) and record.factors.min_count == 30
    assert record.factors.factors["style"].thin and record.factors.factors["pose"].ci95 == (0.86, 0.97)
    assert record.occlusion.accuracy_at(0.5) == 0.268 and record.occlusion.accuracy_at(0.3) is None
    assert record.shape_bias == Skipped("shape bias needs the ShapesX cue-conflict split")
    assert record.reconstruction[0].stage == 1
    assert record.probes["knn"].accuracy.top1 == 0.61 and record.probes["knn"].factors is None
    assert json.loads(json.dumps(record.to_json())) == EVALUATION
    not_measured = {k: v for k, v in EVALUATION.items() if k not in ("cka", "occlusion", "reconstruction")}
    assert results_from_json(not_measured).cka is None and "cka" not in results_from_json(not_measured).to_json()


def test_a_results_file_that_is_not_what_it_says_fails_in_one_line(tmp_path):
    with pytest.raises(RecordError, match="unknown OcclusionCurve field\\(s\\) colour"):
        results_from_json(EVALUATION | {"occlusion": EVALUATION["occlusion"] | {"colour": "red"}})
    with pytest.raises(RecordError, match="factors.pose: FactorCell field\\(s\\) missing: correct"):
        bad = {k: v for k, v in EVALUATION["factors"]["factors"]["pose"].items() if k != "correct"}
        results_from_json(EVALUATION | {"factors": EVALUATION["factors"] | {"factors": {"pose": bad}}})
    with pytest.raises(RecordError, match="task pretrain, finetune or evaluate, got 'train'"):
        results_from_json({"task": "train"})
    with pytest.raises(FileNotFoundError, match="has no results.json"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"task": "eval')
    with pytest.raises(RecordError, match="is damaged"):
        read_results(tmp_path)
    old = {"task": "pretrain", "method": "a2mim", "steps": 4, "epochs": 1, "final_loss": {"loss": 0.1}}
    (tmp_path / "results.json").write_text(json.dumps(old))  # as 0.1.0 wrote it: no timings, no reconstructions
    assert read_results(tmp_path).seconds == {} and read_results(tmp_path).reconstruction == []
