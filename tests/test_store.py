"""The results store: one SQLite transaction per change, so a killed writer leaves it as it was."""

import subprocess
import sys

import pytest

from mixmask.store import ResultsStore, StoreError


def test_store_survives_a_write_killed_mid_transaction(tmp_path):
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.add_variant("a", 0, {"x": 1}, {"pretrain": "runs/a/pretrain"})
    store.start("a", "pretrain")
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
    store.finish("a", "pretrain", {"loss": 0.5}, 1.0)  # and it is writable again
    assert store.run("a", "pretrain")["results"] == {"loss": 0.5}


def test_a_variant_recorded_by_an_older_release_resumes_but_a_changed_one_is_refused(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    old = {"configs": {"train": {"epochs": 2}}, "stages": ["pretrain"]}
    store.add_variant("a", 0, old, {"pretrain": "runs/a/pretrain"})
    newer = {"configs": {"train": {"epochs": 2, "keep_checkpoints": 2}}, "stages": ["pretrain"]}  # a field added since
    store.add_variant("a", 0, newer, {"pretrain": "runs/a/pretrain"})
    assert store.variants()[0]["spec"] == old  # the record stays as it was
    changed = {"configs": {"train": {"epochs": 3, "keep_checkpoints": 2}}, "stages": ["pretrain"]}
    with pytest.raises(StoreError, match="recorded with other settings"):
        store.add_variant("a", 0, changed, {"pretrain": "runs/a/pretrain"})
