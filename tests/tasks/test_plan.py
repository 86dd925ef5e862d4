"""The dry-run plan: every stage with its work, estimated from the tasks' own steps timed here."""

import pytest
import yaml

from mixmask.cli import main
from mixmask.store import ResultsStore
from mixmask.tasks import plan as plan_module
from mixmask.tasks.plan import format_plan, plan
from mixmask.tasks.sweep import load_sweep
from tests.tasks.test_sweep import tiny_sweep


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith(("p4 ", "scratch "))]
    assert len(lines) == 5
    assert lines[0].split()[:3] == ["p4", "pretrain", "8"]  # 128 images / 32 per batch x 2 epochs
    assert "total" in text and not (tmp_path / "out").exists()


def test_each_kind_of_stage_is_timed_once_with_the_tasks_own_code(tmp_path, monkeypatch):
    calls = []
    for name in ("_training_probe", "_evaluate_probe"):
        real = getattr(plan_module, name)
        monkeypatch.setattr(plan_module, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    rows = plan(load_sweep(data=tiny_sweep()))
    # pretraining; finetuning and its validation pass (p4's and scratch's differ only in their initial weights, so
    # they are timed once); the evaluate stage (the same for both variants)
    assert calls == ["_training_probe", "_training_probe", "_evaluate_probe", "_evaluate_probe"]
    by_stage = {(r.variant, r.stage): r for r in rows}
    pretrain, finetune, evaluate = (by_stage[("p4", s)] for s in ("pretrain", "finetune", "evaluate"))
    assert pretrain.steps == finetune.steps == 8 and pretrain.images == 0
    assert finetune.images == 48  # the validation pass after training
    # accuracy 48 + factors 34 + occlusion 48 x 2 ratios + CKA 32 x (1 + 1 ratio) + shape bias 20
    assert evaluate.images == 48 + 34 + 96 + 64 + 20
    assert all(r.seconds > 0 and r.status == "to run" for r in rows)
    assert by_stage[("scratch", "evaluate")].seconds == evaluate.seconds


def test_the_probes_of_an_evaluate_stage_are_timed_too():
    """The demo probes every encoder: the plan runs the evaluate task's own probes on the features it will compute
    (the training images, then the validation, test and cue-conflict splits)."""
    evaluate = {"eval": {"cka_images": 32, "occlusion_ratios": [0.0, 0.5], "probes": ["linear", "knn"]}}
    rows = plan(load_sweep(data=tiny_sweep(evaluate=evaluate, variants=[{"name": "p4"}])))
    row = next(r for r in rows if r.stage == "evaluate")
    assert row.images == 48 + 34 + 96 + 64 + 20 + (128 + 48 + 34 + 20) and row.seconds > 0


def test_the_analyses_of_an_evaluate_stage_are_timed_too():
    """Interactions are costed per image a classifier may get right (all candidates, an upper bound); the frequency
    measure and the encoder's CKA are run on the probe like the rest."""
    analyses = {"interactions": True, "interaction_images": 8, "frequency": True, "frequency_images": 8}
    evaluate = {"eval": {"cka_images": 32, "occlusion_ratios": [0.0, 0.5], "cka_encoder": True, **analyses}}
    cfg = load_sweep(data=tiny_sweep(evaluate=evaluate, variants=[{"name": "p4"}])).variants[0].configs["evaluate"]
    costs = plan_module._evaluate_probe(cfg)
    assert costs["interactions"][1] > 0 and costs["frequency"][0] > 0 and sum(costs["cka_encoder"]) > 0
    counts = plan_module._evaluation_images(cfg)
    assert (counts["interactions"], counts["cka_encoder"]) == (8, counts["cka"]) and "frequency" not in counts


def test_done_stages_cost_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "_training_probe", lambda *a: {"per_step": 1.0, "fixed": 0.0, "train_images": 128})
    monkeypatch.setattr(plan_module, "_evaluate_probe", lambda *a: {"accuracy": (0.5, 0.01)})  # fixed, per image
    sweep = load_sweep(data=tiny_sweep(variants=[{"name": "scratch", "stages": ["finetune", "evaluate"]}]))
    store = ResultsStore(tmp_path / "results.sqlite")
    store.add_variant("scratch", 0, sweep.variants[0].spec(), {(0, "finetune"): "f", (0, "evaluate"): "e"})
    store.start("scratch", 0, "finetune")
    store.finish("scratch", 0, "finetune", {}, 1.0)
    store.close()
    rows = plan(sweep, tmp_path)
    assert [(r.stage, r.status) for r in rows] == [("finetune", "done"), ("evaluate", "to run")]
    assert rows[0].seconds == 0 and rows[1].seconds == pytest.approx(0.5 + 48 * 0.01)  # the accuracy pass, 48 images
    assert "0:00:00" in format_plan(rows).splitlines()[1]


@pytest.mark.parametrize("load, warned", [(0.2, False), (3.6, True)])
def test_the_plan_warns_when_other_work_used_the_cpu_as_timing_began(monkeypatch, load, warned):
    rows = [plan_module.PlanRow("p4", "pretrain", 10, 0, "to run", 60.0)]
    monkeypatch.setattr(plan_module, "plan", lambda sweep, sweep_dir=None: rows)
    monkeypatch.setattr(plan_module.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(plan_module.os, "sched_getaffinity", lambda pid: {0, 1})
    text = plan_module.plan_text(None)
    assert text.startswith(format_plan(rows)) and ("estimates are too long" in text) == warned
    assert ("1-minute load 3.6 on 2 cores" in text) == warned
