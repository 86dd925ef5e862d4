"""The results store: one SQLite transaction per change, so a killed writer leaves it as it was."""

import subprocess
import sys

import pytest

from mixmask.store import ResultsStore, StoreError


def test_store_survives_a_write_killed_mid_transaction(tmp_path):
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.add_variant("a", 0, {"x": 1}, {(0, "pretrain"): "runs/a/pretrain"})
    store.start("a", 0, "pretrain")
    store.close()
    script = f"""
import os
import pytest

from mixmask.store import ResultsStore, StoreError
store = ResultsStore({str(path)!r})
store.connection.execute("BEGIN IMMEDIATE")
store.connection.execute("UPDATE runs SET status = 'done', results = '{{\\"half\\": 1}}'")
store.connection.execute("INSERT INTO variants (name, position, spec) VALUES ('b', 1, '{{}}')")
os._exit(1)  # killed before COMMIT
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == 1
    store = ResultsStore(path)
    assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [v["name"] for v in store.variants()] == ["a"]
    (run,) = store.runs()
    assert run["status"] == "running" and run["results"] is None and run["attempts"] == 1
    store.finish("a", 0, "pretrain", {"loss": 0.5}, 1.0)  # and it is writable again
    assert store.run("a", 0, "pretrain")["results"] == {"loss": 0.5}


def test_a_variant_recorded_by_an_older_release_resumes_but_a_changed_one_is_refused(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    old = {"configs": {"train": {"epochs": 2}}, "stages": ["pretrain"]}
    store.add_variant("a", 0, old, {(0, "pretrain"): "runs/a/pretrain"})
    newer = {"configs": {"train": {"epochs": 2, "keep_checkpoints": 2}}, "stages": ["pretrain"]}  # a field added since
    store.add_variant("a", 0, newer, {(0, "pretrain"): "runs/a/pretrain"})
    assert store.variants()[0]["spec"] == old  # the record stays as it was
    changed = {"configs": {"train": {"epochs": 3, "keep_checkpoints": 2}}, "stages": ["pretrain"]}
    with pytest.raises(StoreError, match="recorded with other settings"):
        store.add_variant("a", 0, changed, {(0, "pretrain"): "runs/a/pretrain"})


def test_a_store_from_before_replicate_seeds_gets_each_runs_seed_from_its_config(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "results.sqlite"
    old = sqlite3.connect(path)  # the 0.1.0 schema: runs keyed by variant and stage
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE variants (name TEXT PRIMARY KEY, position INTEGER NOT NULL, spec TEXT NOT NULL);
        CREATE TABLE runs (variant TEXT NOT NULL REFERENCES variants(name), stage TEXT NOT NULL, status TEXT NOT NULL,
            run_dir TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, seconds REAL,
            error TEXT, results TEXT, PRIMARY KEY (variant, stage));
        """
    )
    spec = {"stages": ["pretrain", "finetune"], "configs": {"pretrain": {"train": {"seed": 7}}, "finetune": {}}}
    old.execute("INSERT INTO variants VALUES ('a', 0, ?)", (json.dumps(spec),))
    old.execute("INSERT INTO runs VALUES ('a', 'pretrain', 'done', 'runs/a/pretrain', 1, 1.0, 2.0, 1.0, NULL, '{}')")
    old.execute(
        "INSERT INTO runs VALUES ('a', 'finetune', 'pending', 'runs/a/finetune', 0, NULL, NULL, NULL, NULL, NULL)"
    )
    old.commit()
    old.close()
    store = ResultsStore(path)
    runs = {(r["seed"], r["stage"]): r for r in store.runs()}
    assert set(runs) == {(7, "pretrain"), (0, "finetune")}  # no seed recorded: the config default, 0
    assert runs[7, "pretrain"]["status"] == "done" and runs[7, "pretrain"]["results"] == {}
    store.start("a", 0, "finetune")
    assert ResultsStore(path).run("a", 0, "finetune")["status"] == "running"  # reopened: no second migration
