"""The typed run records: labels decided in one place, JSON round trips, clear refusals, old run folders."""

import json

import pytest

from mixmask.config import load_config
from mixmask.engine.run_dir import new_run_dir
from mixmask.models.factory import build_pretrain_model, describe
from mixmask.results import Method, RecordError, RunInfo, Strategy, read_run_info

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
    assert Method("supervised", "resnet50").label() == "none (scratch)"
    assert Method("supervised", "vit_tiny_p8").label() == "none (scratch, vit_tiny_p8)"
    assert Method("supervised", "resnet50", init="/w/r50.pth").label() == "none (init: r50.pth)"


def test_a_pretraining_config_is_described_with_its_resolved_stages():
    cfg = load_config(None, ["masking.strategies=[{patch_size: 4, ratio: 0.6}, {patch_size: 16, ratio: 0.4}]"])
    method = describe(cfg, *build_pretrain_model(cfg))
    assert [(s.patch_size, s.stage) for s in method.strategies] == [(4, 1), (16, 3)]  # resnet_tiny: auto stages
    assert method.token and not method.two_views and method.label() == "mixed: patch 4 / 0.6 | patch 16 / 0.4"


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
