"""Sweeps through submitit (``--executor``): resources from the sweep file, the local executor end to end, a killed
job requeued and resumed, the torchrun variables of a multi-task job."""

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mixmask.cli import main
from mixmask.config import ConfigError, to_dict
from mixmask.store import ResultsStore
from mixmask.tasks.cluster import StageJob, make_executor, stage_resources, torchrun_environment
from mixmask.tasks.sweep import load_sweep, replicate_config, run_dirs, run_sweep
from tests.tasks.test_sweep import tiny_sweep

submitit = pytest.importorskip("submitit")


def test_resources_per_stage_and_evaluation_on_one_task():
    resources = stage_resources(
        {
            "partition": "gpu",
            "gpus_per_node": 8,
            "timeout_min": 240,
            "additional": {"exclusive": True},
            "stages": {"pretrain": {"nodes": 2, "timeout_min": 600}, "evaluate": {"timeout_min": 30}},
        }
    )
    pretrain, finetune, evaluate = (resources[s] for s in ("pretrain", "finetune", "evaluate"))
    assert (pretrain.nodes, pretrain.gpus_per_node, pretrain.timeout_min, pretrain.partition) == (2, 8, 600, "gpu")
    assert (finetune.nodes, finetune.timeout_min, finetune.additional) == (1, 240, {"exclusive": True})
    assert (evaluate.nodes, evaluate.gpus_per_node, evaluate.timeout_min) == (1, 1, 30)
    assert pretrain.tasks_per_node(nproc=1) == 8 and stage_resources(None)["pretrain"].tasks_per_node(nproc=2) == 2


@pytest.mark.parametrize(
    "slurm, message",
    [
        ({"partiton": "gpu"}, r"`slurm`\.partiton: unknown"),
        ({"nodes": 0}, r"`slurm`\.nodes: got 0; expected an integer >= 1"),
        ({"stages": {"pretrain": {"gpus_per_node": "eight"}}}, r"`slurm.stages.pretrain`\.gpus_per_node: got 'eight'"),
        ({"stages": {"train": {}}}, r"`slurm.stages.train`: unknown stage"),
        ({"stages": ["pretrain"]}, r"`slurm.stages`: got \['pretrain'\]; expected a mapping"),
        ("gpu", r"`slurm`: got 'gpu'; expected a mapping of resources"),
        ({"setup": "module load cuda"}, r"`slurm`\.setup: got 'module load cuda'; expected a list"),
    ],
)
def test_bad_resources_fail_when_the_sweep_loads(slurm, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(data=tiny_sweep(slurm=slurm))


def test_slurm_without_sbatch_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--executor", "slurm"]) == 2
    assert "sbatch is not on this machine's PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_torchrun_variables_of_a_multi_task_job():
    env = SimpleNamespace(global_rank=5, local_rank=1, num_tasks=8, num_nodes=2, hostnames=["node3", "node4"])
    variables = torchrun_environment(env, "123456")
    assert {k: v for k, v in variables.items() if k != "MASTER_PORT"} == {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node3",
    }
    assert 20_000 <= int(variables["MASTER_PORT"]) < 40_000
    assert torchrun_environment(env, "123457")["MASTER_PORT"] != variables["MASTER_PORT"]


@pytest.mark.slow
def test_local_executor_runs_a_two_variant_sweep_recorded_by_the_driver(tmp_path, capsys):
    """Two variants run through; a third, a damaged checkpoint, fails in its job and is recorded with its error."""
    import yaml

    data = tiny_sweep()
    data["common"] = [*data["common"], "train.epochs=1"]
    (tmp_path / "damaged.pth").write_bytes(b"not a checkpoint")
    data["variants"].append({"name": "damaged", "model": "resnet_tiny", "weights": "damaged.pth"})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--executor", "local", "--jobs", "2"]) == 1
    printed = capsys.readouterr()
    runs = {(r["variant"], r["stage"]): r for r in ResultsStore(out / "results.sqlite").runs()}
    damaged = runs.pop(("damaged", "evaluate"))
    assert len(runs) == 5 and all(r["status"] == "done" for r in runs.values())
    for run in runs.values():  # what the driver recorded is what each job's run folder holds
        assert run["results"] == json.loads((out / run["run_dir"] / "results.json").read_text())
    assert damaged["status"] == "failed" and "damaged.pth" in damaged["error"] and "\n" not in damaged["error"]
    assert (
        "p4 (seed 0): pretrain submitted as job" in printed.out and "damaged (seed 0): evaluate failed" in printed.err
    )
    assert len(list((out / "jobs").glob("*_0_log.out"))) == 6  # one job per stage, its log kept


def child_processes(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the job's process through /proc")
def test_a_killed_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    data = tiny_sweep()
    data["common"] = [*data["common"], "train.epochs=8"]
    sweep = load_sweep(data=data)
    variant = sweep.variants[0]
    dirs = run_dirs(sweep, tmp_path, variant)
    cfg = replicate_config(sweep, variant, 0, "pretrain", dirs)
    run_dir = dirs[0, "pretrain"]
    executor = make_executor("local", tmp_path / "jobs", stage_resources(None)["pretrain"], 1, "requeue-test")
    job = executor.submit(StageJob("pretrain", to_dict(cfg), str(run_dir), None))
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoints/step-*/state.json")):  # the first whole checkpoint
        assert time.time() < deadline and job.state == "RUNNING", job.stderr()
        time.sleep(0.1)
    (task,) = child_processes(job._process.pid)
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before a time limit or on preemption
    results = job.result()
    log = job.stdout()
    assert "Requeued job" in (job.stderr() or "") + log
    assert "resuming from" in log
    assert results["steps"] == 32 and results == json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_a_two_task_job_trains_as_one_process_group(tmp_path):
    """nproc 2 on the CPU: two tasks of one local job join through the torchrun variables and share the epoch."""
    data = tiny_sweep(nproc=2, variants=[{"name": "p4", "stages": ["pretrain"]}])
    out = tmp_path / "out"
    assert run_sweep(load_sweep(data=data), out, executor="local") == 0
    (run,) = ResultsStore(out / "results.sqlite").runs()
    assert run["status"] == "done" and run["results"]["steps"] == 2 * 2  # 128 images / (2 x 32) a step, 2 epochs
    assert len(list((out / "jobs").glob("*_1_log.out"))) == 1  # the second task's log


def test_a_refused_submission_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    from mixmask.tasks import cluster

    class Refusing:
        def submit(self, job):
            raise RuntimeError("sbatch: error: invalid partition specified: gpux")

    monkeypatch.setattr(cluster, "make_executor", lambda *args: Refusing())
    out = tmp_path / "out"
    assert run_sweep(load_sweep(data=tiny_sweep()), out, executor="local") == 2
    runs = {(r["variant"], r["stage"]): r for r in ResultsStore(out / "results.sqlite").runs()}
    assert runs["p4", "pretrain"]["status"] == runs["scratch", "finetune"]["status"] == "failed"
    assert runs["p4", "pretrain"]["error"] == "submission failed: sbatch: error: invalid partition specified: gpux"
    assert "p4 (seed 0): pretrain submission failed" in capsys.readouterr().err
