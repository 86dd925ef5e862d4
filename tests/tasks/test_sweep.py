"""Sweeps: expansion and validation before anything runs, the results store, restart after a killed variant."""

import json
from pathlib import Path

import pytest
import torch

from mixmask.cli import main
from mixmask.config import ConfigError, load_config
from mixmask.engine.checkpoint import latest_intact_checkpoint
from mixmask.models.classifier import Classifier
from mixmask.store import ResultsStore
from mixmask.tasks import sweep as sweep_module
from mixmask.tasks.sweep import gpu_slots, load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[2]


def tiny_sweep(**changes) -> dict:
    sweep = {
        "name": "tiny",
        "pretrain": {"optim": {"warmup_epochs": 0.5}},
        "finetune": {"optim": {"warmup_epochs": 0.5}},
        "evaluate": {"eval": {"cka_images": 32, "occlusion_ratios": [0.0, 0.5]}},
        "common": [
            "data.image_size=32",
            "data.num_workers=0",
            "data.shapesx={train: 128, val: 48, test: 34, cue_conflict: 20}",
            "train.batch_size=32",
            "train.epochs=2",
            "train.log_every_steps=2",
            "train.checkpoint_every_steps=2",
        ],
        "variants": [
            {"name": "p4", "pretrain": ["masking.strategies=[{patch_size: 4, ratio: 0.6}]"]},
            {"name": "scratch", "stages": ["finetune", "evaluate"]},
        ],
    }
    return sweep | changes


def test_expansion_builds_every_stage_config():
    sweep = load_sweep(data=tiny_sweep())
    p4, scratch = sweep.variants
    assert p4.stages == ["pretrain", "finetune", "evaluate"] and scratch.stages == ["finetune", "evaluate"]
    assert p4.configs["pretrain"].masking.strategies[0].patch_size == 4
    assert p4.configs["finetune"].data.image_size == 32 and p4.configs["evaluate"].eval.cka_images == 32
    assert scratch.configs["evaluate"].train.epochs == 2  # the evaluated run's config is the base


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"name": "bad", "pretrain": ["optim.lr=-1"]}, "variant 'bad', pretrain: config field `optim.lr`"),
        (
            {"name": "pair", "pretrain": ["masking.strategies=[{patch_size: 8, stage: 3}]"]},
            "variant 'pair', pretrain: config field `masking.strategies[0]`",
        ),
        ({"name": "order", "stages": ["evaluate", "finetune"]}, "variant 'order', `stages`"),
        ({"name": "x y"}, "variant 1"),
        ({"name": "p4"}, "used twice"),
        ({"name": "typo", "finetun": []}, "key `finetun`"),
        (
            {"name": "vit", "pretrain": ["model.backbone=vit_tiny_p8", "masking.strategies=[{patch_size: 8}]"]},
            "variant 'vit', finetune: model.backbone='resnet_tiny' but the variant pretrains "
            "model.backbone='vit_tiny_p8'",
        ),
        ({"name": "nofile", "pretrain": "missing.yaml"}, "config file not found"),
        ({"name": "few", "finetune": ["data.subset=8"]}, "variant 'few', finetune: config field `data.subset`"),
    ],
)
def test_a_bad_variant_fails_before_anything_runs(tmp_path, variant, message):
    data = tiny_sweep()
    data["variants"] = [data["variants"][0], variant]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_sweep(data=data)


def test_cli_bad_sweep_fails_with_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\nvariants: [{name: a, pretrain: [model.backbone=nonsense_net]}]\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "variant 'a', pretrain" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_runs_records_and_restarts_after_a_killed_variant(tmp_path, monkeypatch, capsys):
    sweep = load_sweep(data=tiny_sweep())
    out = tmp_path / "sweep"

    # kill the first variant's finetuning after its checkpoint at step 2 (4 steps per run)
    calls = {"n": 0}
    forward = Classifier.forward

    def killed(self, images):
        calls["n"] += 1
        if calls["n"] == 3 and self.training:
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(Classifier, "forward", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out)
    monkeypatch.setattr(Classifier, "forward", forward)
    store = ResultsStore(out / "results.sqlite")
    states = {(r["variant"], r["stage"]): r["status"] for r in store.runs()}
    assert states == {
        ("p4", "pretrain"): "done",
        ("p4", "finetune"): "running",
        ("p4", "evaluate"): "pending",
        ("scratch", "finetune"): "pending",
        ("scratch", "evaluate"): "pending",
    }
    pretrain_weights = (latest_intact_checkpoint(out / "runs/p4/pretrain") / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()

    torch.manual_seed(123)  # as if in a new process
    assert run_sweep(load_sweep(data=tiny_sweep()), out) == 0
    printed = capsys.readouterr().out
    assert "== p4: pretrain" not in printed  # finished work is not redone
    assert "resuming from" in printed and "epoch 0, step 2" in printed
    assert (
        latest_intact_checkpoint(out / "runs/p4/pretrain") / "model.safetensors"
    ).stat().st_mtime_ns == pretrain_weights
    runs = {(r["variant"], r["stage"]): r for r in store.runs()}
    assert all(r["status"] == "done" for r in runs.values())
    assert runs[("p4", "pretrain")]["attempts"] == 1 and runs[("p4", "finetune")]["attempts"] == 2
    for run in runs.values():
        assert run["results"] == json.loads((out / run["run_dir"] / "results.json").read_text())
    assert runs[("p4", "finetune")]["results"]["init"]["from"] == str(out / "runs/p4/pretrain")
    assert runs[("scratch", "finetune")]["results"]["init"]["from"] == "scratch"
    assert runs[("p4", "evaluate")]["results"]["reconstruction"][0]["patch_size"] == 4
    assert store.meta()["name"] == "tiny" and "variants" in store.meta()["sweep_text"]

    # a changed variant under the same folder is refused rather than mixed into old results
    changed = tiny_sweep()
    changed["variants"][0]["pretrain"] = ["masking.strategies=[{patch_size: 8, ratio: 0.6}]"]
    with pytest.raises(ValueError, match="recorded with other settings"):
        run_sweep(load_sweep(data=changed), out)


@pytest.mark.slow
def test_parallel_jobs_run_variants_in_their_own_processes(tmp_path, capsys):
    import yaml

    data = tiny_sweep()
    data["common"] = [*data["common"], "train.epochs=1"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2"]) == 0
    store = ResultsStore(out / "results.sqlite")
    assert all(r["status"] == "done" for r in store.runs()) and len(store.runs()) == 5
    assert "run folder" in (out / "runs/scratch/log.txt").read_text()


@pytest.mark.parametrize(
    "path, variants, expected",
    [
        pytest.param(ROOT / "configs/study/mix_and_mask_in100.yaml", 10, {4: 1, 32: 3, 56: 2}, marks=pytest.mark.slow),
        (ROOT / "configs/study/mix_and_mask_shapesx.yaml", 10, {4: 1, 8: 2, 16: 3}),
        (ROOT / "src/mixmask/resources/demo_shapesx.yaml", 4, {4: 1, 16: 3}),
    ],
    ids=lambda p: getattr(p, "name", str(p)),
)
def test_shipped_studies_load_and_the_stage_follows_the_patch(path, variants, expected):
    sweep = load_sweep(path)
    assert len(sweep.variants) == variants and sweep.variants[-1].stages == ["finetune", "evaluate"]
    from mixmask.models.factory import build_pretrain_model

    stages = {}
    for variant in sweep.variants[:-1]:
        _, masker = build_pretrain_model(variant.configs["pretrain"])
        if masker is None:  # the MoCo v3 baseline row
            assert variant.name == "mocov3" and variant.configs["pretrain"].model.method == "mocov3"
            continue
        stages |= {spec.patch_size: stage for spec, stage in zip(masker.specs, masker.stages, strict=True)}
    assert {p: s for p, s in stages.items() if p in expected} == expected


def test_a_variant_may_name_its_own_base_config_for_a_stage():
    data = tiny_sweep()
    own = str(ROOT / "configs/pretrain/simmim_tiny_shapesx.yaml")
    data["variants"] = [{"name": "simmim", "pretrain": own}, *data["variants"]]
    simmim, p4, _ = load_sweep(data=data).variants
    assert simmim.configs["pretrain"].model.method == "simmim" and simmim.overrides["pretrain"] == []
    assert simmim.configs["pretrain"].data.image_size == 32  # `common` still applies on top
    assert p4.configs["pretrain"].model.method == "a2mim"


@pytest.mark.parametrize(
    "name, methods",
    [
        ("a2mim_ablation_shapesx.yaml", {"a2mim": 8, "simmim": 1}),
        pytest.param("a2mim_ablation_r50_in100.yaml", {"a2mim": 8, "simmim": 1}, marks=pytest.mark.slow),
        ("baselines_shapesx.yaml", {"a2mim": 2, "simmim": 1, "mocov3": 1, "mae": 1}),
    ],
)
def test_shipped_method_studies_load(name, methods):
    sweep = load_sweep(ROOT / "configs/study" / name)
    counted: dict[str, int] = {}
    for variant in sweep.variants:
        if "pretrain" in variant.stages:
            method = variant.configs["pretrain"].model.method
            counted[method] = counted.get(method, 0) + 1
    assert counted == methods
    if name.startswith("a2mim_ablation"):
        by_name = {v.name: v.configs["pretrain"] for v in sweep.variants}
        assert [by_name[f"stage{k}"].masking.strategies[0].stage for k in range(4)] == [0, 1, 2, 3]
        spa, unweighted, freq = by_name["spa"], by_name["spa+freq_unweighted"], by_name["spa+freq"]
        assert {spa.model.token_mode, unweighted.model.token_mode, freq.model.token_mode} == {"none"}
        assert (spa.loss.freq_weight, unweighted.loss.freq_focal, freq.loss.freq_focal) == (0.0, False, True)
        assert unweighted.loss.freq_weight == freq.loss.freq_weight == by_name["stage3"].loss.freq_weight == 0.5


def test_seeds_must_be_distinct_integers():
    for bad in ([], [0, 0], [1.5], "0,1", [-1], [True]):
        with pytest.raises(ConfigError, match="sweep `seeds`: got .* expected a list of distinct integers"):
            load_sweep(data=tiny_sweep(seeds=bad))
    sweep = load_sweep(data=tiny_sweep(seeds=[3, 1]))
    assert sweep.replicates(sweep.variants[0]) == [3, 1]
    assert load_sweep(data=tiny_sweep()).replicates(sweep.variants[0]) == [0]  # the configs' own train.seed
    expected = r"expected the name of one of the variants, or a list of them \(one per backbone\): p4"
    for bad, named in (("p8", "p8"), (["scratch", "p8"], "p8"), ({"a": 1}, "{'a': 1}")):
        with pytest.raises(ConfigError, match=f"sweep `reference`: got '?{named}'?; {expected}"):
            load_sweep(data=tiny_sweep(reference=bad))
    assert load_sweep(data=tiny_sweep(reference="scratch")).reference == "scratch"
    with pytest.raises(ConfigError, match="sweep `reference`: scratch and p4 are both resnet_tiny; name one reference"):
        load_sweep(data=tiny_sweep(reference=["scratch", "p4"]))
    vit = {"name": "scratch_vit", "stages": ["finetune", "evaluate"], "finetune": ["model.backbone=vit_tiny_p8"]}
    variants = [*tiny_sweep()["variants"], vit]
    named = ["scratch", "scratch_vit"]
    assert load_sweep(data=tiny_sweep(variants=variants, reference=named)).reference == named


def test_seeds_run_every_variant_once_per_seed_resume_and_grow(tmp_path, monkeypatch, capsys):
    data = tiny_sweep(seeds=[0, 1], variants=[{"name": "scratch", "stages": ["finetune", "evaluate"]}])
    out = tmp_path / "sweep"
    calls = {"n": 0}
    forward = Classifier.forward

    def killed(self, images):  # seed 0 finetunes 8 steps and evaluates; die in seed 1's third training step
        calls["n"] += self.training
        if calls["n"] == 11 and self.training:
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(Classifier, "forward", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(data=data), out)
    monkeypatch.setattr(Classifier, "forward", forward)
    store = ResultsStore(out / "results.sqlite")
    states = {(r["seed"], r["stage"]): r["status"] for r in store.runs()}
    assert states == {(0, "finetune"): "done", (0, "evaluate"): "done", (1, "finetune"): "running",
                      (1, "evaluate"): "pending"}  # fmt: skip
    capsys.readouterr()

    assert run_sweep(load_sweep(data=data), out) == 0
    printed = capsys.readouterr().out
    assert "== scratch (seed 0)" not in printed and "== scratch (seed 1): finetune" in printed
    assert "resuming from" in printed
    runs = {(r["seed"], r["stage"]): r for r in store.runs()}
    for seed in (0, 1):
        folder = out / "runs" / "scratch" / f"seed{seed}"
        assert runs[seed, "finetune"]["run_dir"] == f"runs/scratch/seed{seed}/finetune"
        assert json.loads((folder / "finetune" / "run.json").read_text())["seed"] == seed
        assert json.loads((folder / "evaluate" / "results.json").read_text())["run"] == str(folder / "finetune")
    weights = [latest_intact_checkpoint(out / f"runs/scratch/seed{k}/finetune") / "model.safetensors" for k in (0, 1)]
    assert weights[0].read_bytes() != weights[1].read_bytes()  # replicates differ by their training seed

    # a seed added to the file later runs on its own; the finished ones stay
    assert run_sweep(load_sweep(data=data | {"seeds": [0, 1, 2]}), out) == 0
    printed = capsys.readouterr().out
    assert "(seed 2): finetune" in printed and "(seed 0)" not in printed and "(seed 1)" not in printed
    assert sorted({r["seed"] for r in store.runs()}) == [0, 1, 2]

    from mixmask.report import collect, tables

    [row] = tables.table1(collect.collect_variants(out))
    top1 = [r["results"]["accuracy"]["top1"] for r in store.runs() if r["stage"] == "evaluate"]
    assert row["seeds"] == 3 and row["note"] == "3 seeds"
    assert row["cells"]["val_top1"].accuracy == pytest.approx(sum(top1) / 3)
    assert row["sd"]["val_top1"] == pytest.approx(float(torch.tensor(top1).std()), abs=1e-7)


def test_a_checkpoint_variant_is_evaluated_beside_trained_ones(tmp_path):
    from safetensors.torch import save_file

    from mixmask.report import collect, tables

    torch.manual_seed(0)
    save_file(Classifier("resnet_tiny", 10, image_size=32).timm_model.state_dict(), tmp_path / "w.safetensors")
    data = tiny_sweep(variants=[
        {"name": "scratch", "stages": ["finetune", "evaluate"]},
        {"name": "published", "model": "resnet_tiny", "weights": str(tmp_path / "w.safetensors")},
    ])  # fmt: skip
    sweep = load_sweep(data=data)
    assert (
        sweep.variants[1].stages == ["evaluate"]
        and sweep.variants[1].configs["evaluate"].model.backbone == "resnet_tiny"
    )
    assert run_sweep(sweep, tmp_path / "s") == 0
    results = json.loads((tmp_path / "s" / "runs" / "published" / "evaluate" / "results.json").read_text())
    assert results["run_task"] == "model" and results["accuracy"]["images"] == 48
    rows = {r["variant"]: r for r in tables.summary(collect.collect_variants(tmp_path / "s"))}
    assert rows["published"]["masking"] == "checkpoint: w.safetensors [resnet_tiny]"
    for bad in (
        {"name": "x", "model": "resnet_tiny"},
        {"name": "x", "model": "r", "weights": "w", "stages": ["finetune"]},
    ):
        with pytest.raises(ConfigError, match="a checkpoint variant needs `model`"):
            load_sweep(data=tiny_sweep(variants=[bad]))


def test_each_job_gets_its_own_gpus_and_too_many_is_one_clear_line():
    gpus = ["3", "5", "6", "7"]
    assert gpu_slots(gpus, jobs=2, nproc=2) == ["3,5", "6,7"]
    assert gpu_slots(gpus, jobs=4, nproc=1) == ["3", "5", "6", "7"]
    assert gpu_slots([], jobs=3, nproc=2) == [None, None, None]  # no GPU: the jobs share the CPU
    with pytest.raises(
        ConfigError, match=r"--jobs 3 x nproc 2 needs 6 GPUs, but 4 are visible \(3,5,6,7\); use --jobs 2"
    ):
        gpu_slots(gpus, jobs=3, nproc=2)


def test_parallel_jobs_start_with_their_gpu_slice_and_reuse_a_freed_one(tmp_path, monkeypatch):
    """Three variants, two jobs of one GPU each: the third starts on the GPU the first one freed."""
    started = []

    class Finished:
        returncode = 0

        def __init__(self, command, stdout, stderr, env):
            started.append((command[command.index("--variant") + 1], env["CUDA_VISIBLE_DEVICES"]))

        def poll(self):
            return 0

    variants = [*tiny_sweep()["variants"], {"name": "scratch2", "stages": ["finetune", "evaluate"]}]
    sweep = load_sweep(data=tiny_sweep(variants=variants))
    store = sweep_module.open_store(sweep, tmp_path)
    monkeypatch.setattr(sweep_module, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(sweep_module.subprocess, "Popen", Finished)
    monkeypatch.setattr(sweep_module.time, "sleep", lambda seconds: None)
    try:
        assert sweep_module._run_parallel(sweep, sweep.variants, tmp_path, 2, store) == 0
    finally:
        store.close()
    assert started == [("p4", "0"), ("scratch", "1"), ("scratch2", "0")]


def test_multi_process_stages_rendezvous_on_a_free_port(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, check):
        commands.append(command)
        raise RuntimeError("stop here")

    monkeypatch.setattr(sweep_module.subprocess, "run", fake_run)
    cfg = load_config(ROOT / "configs/pretrain/a2mim_tiny_shapesx.yaml")
    with pytest.raises(RuntimeError, match="stop here"):
        sweep_module.run_stage("pretrain", cfg, tmp_path / "run", nproc=2)
    assert commands[0][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
