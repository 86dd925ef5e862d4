import re
from pathlib import Path

import pytest
import torch
import yaml

from mixmask.config import (
    JOINT_EMBEDDING_METHODS,
    Config,
    ConfigError,
    apply_override,
    load_config,
    save_config,
    to_dict,
)
from mixmask.data import build_dataset
from mixmask.data.transforms import eval_transform_for
from mixmask.models.factory import build_pretrain_model
from mixmask.tasks.finetune import build_classifier
from mixmask.tasks.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def error_of(overrides, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_defaults_are_valid_and_typed():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 1e-3 and cfg.masking.strategies[0].patch_size == 32
    assert cfg.data.dataset == "shapesx"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-4\ntrain:\n  epochs: 3\n")  # PyYAML reads 1e-4 as a string: still a number
    cfg = load_config(path, ["train.epochs=5", "masking.strategies.0.ratio=0.8", "train.channels_last=false"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 5
    assert cfg.masking.strategies[0].ratio == 0.8
    assert cfg.train.channels_last is False


def test_list_of_strategies_from_override_gets_defaults():
    cfg = load_config(None, ["masking.strategies=[{patch_size: 4, ratio: 0.6}, {patch_size: 16, weight: 3}]"])
    first, second = cfg.masking.strategies
    assert (first.patch_size, first.ratio, first.stage) == (4, 0.6, "auto")
    assert (second.patch_size, second.ratio, second.weight) == (16, 0.6, 3.0)


def test_base_file_is_extended(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  batch_size: 8\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  batch_size: 16\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size) == (7, 16)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    assert "includes itself" in error_of([], tmp_path / "loop.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["masking.strategies=[{patch_size: 4}, {patch_size: 16, stage: 2}]", "optim.lr=3e-4"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == 3e-4
    assert not [p for p in path.parent.iterdir() if p.name != "config.yaml"]  # no temporary file left


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("optim.lrr=0.1", ["optim.lrr", "did you mean `lr`"]),
        ("trian.epochs=2", ["`trian`", "did you mean `train`"]),
        ("optim.lr=fast", ["optim.lr", "'fast'", "a number"]),
        ("optim.lr=-1", ["optim.lr", "-1", "positive"]),
        ("train.epochs=2.5", ["train.epochs", "2.5", "an integer"]),
        ("train.epochs=true", ["train.epochs", "True", "an integer"]),
        ("train.device=gpu", ["train.device", "'gpu'", "'auto', 'cpu', 'cuda'"]),
        ("masking.strategies.0.ratio=1.5", ["masking.strategies[0].ratio", "1.5", "(0, 1)"]),
        ("masking.strategies.0.stage=-1", ["masking.strategies[0].stage", "a stage >= 0"]),
        ("masking.strategies.0.patch_size=24", ["masking.strategies[0].patch_size", "24", "divisor of"]),
        ("masking.strategies.2.ratio=0.5", ["masking.strategies.2.ratio", "list of 1"]),
        ("masking.strategies=[]", ["masking.strategies", "at least one"]),
        ("optim.lr.x=1", ["`optim.lr` is a value"]),
        ("data.dataset=folder", ["data.root", "data.dataset=folder"]),
        ("data.dataset=imagenet", ["data.dataset", "'shapesx', 'folder'"]),
        ("data.pretrain_scale=[0.9, 0.2]", ["data.pretrain_scale", "0 < min <= max <= 1"]),
        ("optim.min_lr=0.1", ["optim.min_lr", "lr=0.001"]),
        ("data.num_workers=many", ["data.num_workers", "an integer or 'auto'"]),
        ("eval.occlusion_ratios=[0.5, 1.2]", ["eval.occlusion_ratios", "[0, 1)"]),
        ("noequals", ["key.sub=value"]),
        ("train.keep_checkpoints=0", ["train.keep_checkpoints", "got 0", "an integer >= 1"]),
        ("eval.cka_drop=tokens", ["eval.cka_drop", "'tokens'", "a CNN (resnet_tiny) has no tokens to drop"]),
    ],
)
def test_errors_name_field_value_and_accepted(override, fragments):
    message = error_of([override])
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_hog_targets_resolve_their_loss_and_refuse_what_does_not_fit():
    cfg = load_config(None, ["loss.target=hog", "masking.strategies=[{patch_size: 8}]"])
    assert (cfg.loss.spatial, cfg.loss.freq_weight, cfg.loss.hog_cell) == ("l2", 0.0, 2)  # 8 px at 224 -> 2 at 64
    assert load_config(None, ["data.image_size=224", "loss.target=hog"]).loss.hog_cell == 8
    assert load_config(None, ["loss.target=hog", "loss.hog_cell=4"]).loss.hog_cell == 4
    assert load_config(None).loss.target == "pixels"
    hog = ["loss.target=hog"]
    message = error_of([*hog, "data.image_size=224", "masking.strategies=[{patch_size: 32}, {patch_size: 4}]"])
    for fragment in ["masking.strategies[1].patch_size", "got 4", "a multiple of loss.hog_cell=8", "loss.target=hog"]:
        assert fragment in message, (fragment, message)
    assert "`loss.spatial`: got 'l1'; expected l2 or auto for loss.target=hog" in error_of([*hog, "loss.spatial=l1"])
    assert "`loss.freq_weight`: got 0.5; expected 0 or auto" in error_of([*hog, "loss.freq_weight=0.5"])
    assert "`loss.norm_pix`" in error_of([*hog, "model.method=mae", "model.backbone=vit_tiny_p8", "loss.norm_pix=true"])
    for method in ("mocov3", "cmae", "rmae"):
        message = error_of([*hog, f"model.method={method}"])
        assert "`loss.target`: got 'hog'" in message and "a2mim, simmim or mae" in message
    assert "`loss.hog_cell`: got 0" in error_of(["loss.hog_cell=0"])
    assert "`loss.target`" in error_of(["loss.target=hoog"])


def test_bad_files(tmp_path):
    assert "not found" in error_of([], tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert "mapping" in error_of([], tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    message = error_of([], tmp_path / "broken.yaml")
    assert "not valid YAML: line 2, column 1: expected ',' or ']'" in message and "\n" not in message
    assert "is a folder; expected a YAML file" in error_of([], tmp_path)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    assert "not a text file (not UTF-8)" in error_of([], tmp_path / "binary.yaml")
    (tmp_path / "unknown.yaml").write_text("model:\n  backbone: resnet18\n  depth: 3\n")
    assert "model.depth" in error_of([], tmp_path / "unknown.yaml")


def test_override_does_not_mutate_input():
    data = to_dict(Config())
    apply_override(data, "train.epochs=1")
    assert data["train"]["epochs"] == 20


SHIPPED = sorted([*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "src/mixmask/resources").glob("*.yaml")])
SWEEPS = [p for p in SHIPPED if "variants" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", [p for p in SHIPPED if p not in SWEEPS], ids=lambda p: p.name)
def test_every_shipped_config_builds_its_network(path):
    """A pretraining config builds its model with the resolved masking pairing (a patch no stage can mask exactly,
    an unknown backbone or a MAE rule fails here), a finetuning config builds its classifier and runs it; a ShapesX
    config also gives a val image of its size. On the meta device: shapes and rules, no weights."""
    cfg = load_config(path, ["data.root=/data"] if "root:" not in path.read_text() else [])
    size = cfg.data.image_size
    assert path.parent.name in ("pretrain", "finetune"), "a new kind of config: say here what it must build"
    with torch.device("meta"):
        if path.parent.name == "pretrain":
            model, masker = build_pretrain_model(cfg)
            assert (masker is None) == (cfg.model.method in JOINT_EMBEDDING_METHODS)  # the methods without a mask
            assert model.two_views == (cfg.model.method in (*JOINT_EMBEDDING_METHODS, "cmae"))
        else:
            classifier, _ = build_classifier(cfg, num_classes=10)
            assert classifier(torch.zeros(2, 3, size, size)).shape == (2, 10)
    if cfg.data.dataset == "shapesx":
        image, _, _ = build_dataset(cfg.data, "val", eval_transform_for(cfg.data))[0]
        assert image.shape == (3, size, size)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_loads(path):
    """A study file loads as a sweep: every override key exists, every stage config validates, every pretraining
    model builds with its masking pairing (on the meta device), and pretrain and finetune agree on the network."""
    with torch.device("meta"):
        sweep = load_sweep(path)
    assert sweep.variants and all(list(v.configs) == v.stages for v in sweep.variants)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.dino.local_scale=[0.5, 0.2]", "model.dino.local_scale"),
        ("model.simclr.proj_layers=1", "model.simclr.proj_layers"),
        ("model.byol.momentum=1.5", "model.byol.momentum"),
        ("model.simsiam.pred_dim=0", "model.simsiam.pred_dim"),
        ("optim.weight_decay_end=-1", "optim.weight_decay_end"),
    ],
)
def test_joint_embedding_fields_are_checked(override, field):
    with pytest.raises(ConfigError, match=re.escape(f"`{field}`")):
        load_config(None, ["model.method=dino", override])


def test_joint_embedding_methods_refuse_input_augmentations():
    for method in ("simclr", "byol", "simsiam", "dino"):
        with pytest.raises(ConfigError, match=f"data.input_augment.*model.method={method}"):
            load_config(None, [f"model.method={method}", "data.input_augment=[color_jitter]"])
