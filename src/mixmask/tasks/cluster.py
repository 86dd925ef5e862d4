"""``mixmask sweep SWEEP.yaml --executor slurm|local``: every (variant, seed, stage) run as its own job, through
submitit (the optional extra ``mixmask[slurm]``).

The driver (the ``mixmask sweep`` process) submits a replicate's next stage when the stage before it has finished,
records each job's outcome in ``results.sqlite`` and stops when every replicate is done or has failed. It is the
only writer of the store: jobs write their run folders and return their ``results.json`` (SQLite's locks are not to
be trusted on the network file systems a cluster shares). Resources come from the sweep file's ``slurm`` section,
per stage where a stage says otherwise:

    slurm:
      partition: gpu
      gpus_per_node: 8
      timeout_min: 240
      stages: {pretrain: {nodes: 2}, evaluate: {gpus_per_node: 1, timeout_min: 60}}

A stage runs one task per GPU (``nodes`` x ``gpus_per_node``; without GPUs, the sweep's ``nproc`` tasks on one
node; evaluation always one): the tasks join one process group from submitit's job environment, given as the
variables torchrun sets. A job preempted or at its time limit is requeued by submitit (time-outs up to
``max_requeues`` times) and resumes from its run's newest checkpoint. ``--executor local`` runs the same jobs as
processes on this machine (submitit's local executor). Job logs: ``SWEEP_DIR/jobs``.

If the driver is stopped, jobs already submitted run on; cancel them (their names start with ``mixmask-<sweep>-``)
before running the sweep again, which resubmits every unfinished stage.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixmask.config import ConfigError, load_config, to_dict

TEXT_KEYS = ("partition", "account", "qos", "constraint")
COUNT_KEYS = ("nodes", "gpus_per_node", "cpus_per_task", "timeout_min", "max_requeues")
RESOURCE_KEYS = (*TEXT_KEYS, *COUNT_KEYS, "mem_gb", "additional", "setup")
POLL_SECONDS = 5.0


@dataclass
class Resources:
    """What one job of a stage asks for."""

    nodes: int = 1
    gpus_per_node: int = 0
    timeout_min: int = 240
    max_requeues: int = 3
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    additional: dict[str, Any] = field(default_factory=dict)  # more sbatch options, e.g. {exclusive: true}
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ...)

    def tasks_per_node(self, nproc: int) -> int:
        return self.gpus_per_node or nproc


def _checked(raw: Any, where: str) -> dict[str, Any]:
    from mixmask.tasks.sweep import _error

    if not isinstance(raw, dict):
        raise _error(where, f"got {raw!r}; expected a mapping of resources ({', '.join(RESOURCE_KEYS)})")
    for key, value in raw.items():
        field_name = f"{where}.{key}"
        if key not in RESOURCE_KEYS:
            raise _error(field_name, f"unknown; known keys: {', '.join(RESOURCE_KEYS)}, stages")
        if key in TEXT_KEYS and not (isinstance(value, str) and value):
            raise _error(field_name, f"got {value!r}; expected a name")
        least = 0 if key in ("gpus_per_node", "max_requeues") else 1
        if key in COUNT_KEYS and not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise _error(field_name, f"got {value!r}; expected an integer >= {least}")
        if key == "mem_gb" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise _error(field_name, f"got {value!r}; expected a positive number of GB")
        if key == "additional" and not isinstance(value, dict):
            raise _error(field_name, f"got {value!r}; expected a mapping of sbatch options")
        if key == "setup" and not (isinstance(value, list) and all(isinstance(line, str) for line in value)):
            raise _error(field_name, f"got {value!r}; expected a list of shell lines")
    return raw


def stage_resources(raw: Any) -> dict[str, Resources]:
    """The ``slurm`` section of a sweep file, checked, as each stage's resources (evaluation: one task, at most one
    GPU). A wrong key or value is a ConfigError naming it."""
    from mixmask.tasks.sweep import STAGES, _error

    raw = {} if raw is None else raw
    per_stage = (raw.get("stages") if isinstance(raw, dict) else None) or {}
    if not isinstance(per_stage, dict):
        raise _error("`slurm.stages`", f"got {per_stage!r}; expected a mapping from stage to its resources")
    common = _checked({k: v for k, v in raw.items() if k != "stages"} if isinstance(raw, dict) else raw, "`slurm`")
    for stage in per_stage:
        if stage not in STAGES:
            raise _error(f"`slurm.stages.{stage}`", f"unknown stage; expected some of {', '.join(STAGES)}")
    resources = {}
    for stage in STAGES:
        own = _checked(per_stage.get(stage) or {}, f"`slurm.stages.{stage}`")
        merged = Resources(**(common | own))
        if stage == "evaluate":
            merged.nodes, merged.gpus_per_node = 1, min(merged.gpus_per_node, 1)
        resources[stage] = merged
    return resources


def torchrun_environment(env: Any, job_id: str) -> dict[str, str]:
    """The variables torchrun would set, from a submitit ``JobEnvironment`` of a job with several tasks: the first
    node is the rendezvous host, the port comes from the job id (the same on every task, different between jobs)."""
    return {
        "RANK": str(env.global_rank),
        "LOCAL_RANK": str(env.local_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // env.num_nodes),
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": str(20_000 + int(re.sub(r"\D", "", job_id) or 0) % 20_000),  # job ids count up: no clash
    }


class StageJob:
    """One stage of one replicate, as a submitit job: picklable (the config travels as a mapping), resumable (a
    requeued job finds its checkpoints in ``run_dir``). Returns the run's ``results.json``."""

    def __init__(self, stage: str, config: dict, run_dir: str, weights: str | None = None):
        self.stage, self.config, self.run_dir, self.weights = stage, config, run_dir, weights

    def __call__(self) -> dict[str, Any]:
        import submitit

        from mixmask.tasks.sweep import run_stage

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            os.environ.update(torchrun_environment(env, str(env.job_id)))
        # a requeued job resumes from its checkpoints; the first task's results are the job's result
        cfg = load_config(None, base=self.config)
        return run_stage(self.stage, cfg, Path(self.run_dir), 1, self.weights, rank=env.global_rank)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on preemption or time-out: requeue the same job (it resumes from its checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def failure_line(error: Exception) -> str:
    """The exception line of a failed job (submitit's FailedJobError carries the job's whole traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return raised[-1] if raised else (lines[0] if lines else type(error).__name__)


def check_executor(kind: str) -> None:
    """One clear line, before anything runs, when ``kind`` cannot run here."""
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError(
            f"--executor {kind} runs jobs through submitit, which is not installed: pip install 'mixmask[slurm]'"
        )
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--executor slurm: SLURM's sbatch is not on this machine's PATH; run the sweep from a login node of the "
            "cluster (or --executor local to run its jobs here)"
        )


def make_executor(kind: str, folder: Path, resources: Resources, tasks_per_node: int, name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=kind, slurm_max_num_timeout=resources.max_requeues)
    slurm = {f"slurm_{key}": getattr(resources, key) for key in TEXT_KEYS if getattr(resources, key) is not None}
    executor.update_parameters(
        name=name,
        nodes=resources.nodes,
        tasks_per_node=tasks_per_node,
        gpus_per_node=resources.gpus_per_node,
        timeout_min=resources.timeout_min,
        cpus_per_task=resources.cpus_per_task,
        mem_gb=resources.mem_gb,
        **slurm,
        **({"slurm_additional_parameters": resources.additional} if resources.additional else {}),
        **({f"{kind}_setup": resources.setup} if resources.setup else {}),
    )
    return executor


def run_with_executor(sweep, variants, sweep_dir: Path, store, kind: str, jobs: int | None) -> int:
    """Every unfinished stage of every replicate of ``variants`` as jobs of submitit's ``kind`` executor, at most
    ``jobs`` at once (None: no limit). Returns the number of variants not finished."""
    from mixmask.tasks.sweep import _fresh_or_resume, replicate_config, run_dirs

    resources = stage_resources(sweep.slurm)
    queue = [(variant, seed) for variant in variants for seed in sweep.replicates(variant)]
    dirs = {variant.name: run_dirs(sweep, sweep_dir, variant) for variant in variants}
    running: dict[tuple[str, int], tuple[str, Any, float]] = {}  # (variant, seed) -> (stage, job, start)

    def next_stage(variant, seed) -> str | None:
        return next((s for s in variant.stages if store.run(variant.name, seed, s)["status"] != "done"), None)

    def submit(variant, seed) -> bool:
        stage = next_stage(variant, seed)
        if stage is None:
            return False
        run_dir = dirs[variant.name][seed, stage]
        cfg = replicate_config(sweep, variant, seed, stage, dirs[variant.name])
        if stage != "evaluate":
            _fresh_or_resume(run_dir)
        stage_needs = resources[stage]
        tasks = 1 if stage == "evaluate" else stage_needs.tasks_per_node(sweep.nproc)
        name = f"mixmask-{sweep.name}-{variant.name}-s{seed}-{stage}"
        store.start(variant.name, seed, stage)
        try:  # sbatch refusing a partition, an account, a time limit ...: recorded, the other replicates go on
            executor = make_executor(kind, sweep_dir / "jobs", stage_needs, tasks, name)
            job = executor.submit(StageJob(stage, to_dict(cfg), str(run_dir), variant.weights))
        except Exception as error:
            message = f"submission failed: {failure_line(error)}"
            store.fail(variant.name, seed, stage, message, 0.0)
            print(f"!! {variant.name} (seed {seed}): {stage} {message}", file=sys.stderr, flush=True)
            return False
        running[variant.name, seed] = (stage, job, time.perf_counter())
        print(f"== {variant.name} (seed {seed}): {stage} submitted as job {job.job_id} -> {run_dir}", flush=True)
        return True

    by_name = {variant.name: variant for variant in variants}
    while queue or running:
        while queue and (jobs is None or len(running) < jobs):
            variant, seed = queue.pop(0)
            submit(variant, seed)
        time.sleep(POLL_SECONDS if kind == "slurm" else 0.5)
        for (name, seed), (stage, job, start) in list(running.items()):
            if not job.done():
                continue
            del running[name, seed]
            try:
                results = job.results()[0]  # the first task's (every task of a multi-task job returns)
            except Exception as error:
                message = failure_line(error)
                store.fail(name, seed, stage, message, time.perf_counter() - start)
                print(f"!! {name} (seed {seed}): {stage} failed: {message} (log: {job.paths.stderr})", file=sys.stderr)
                continue
            store.finish(name, seed, stage, results, time.perf_counter() - start)
            print(f"== {name} (seed {seed}): {stage} done", flush=True)
            if next_stage(by_name[name], seed) is not None:
                queue.insert(0, (by_name[name], seed))  # the replicate's next stage goes first
    return sum(any(r["status"] != "done" for r in store.runs(v.name)) for v in variants)
