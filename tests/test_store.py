"""The results store: one SQLite transaction per change, so a killed writer leaves it as it was."""

import subprocess
import sys

from mixmask.store import ResultsStore


def test_store_survives_a_write_killed_mid_transaction(tmp_path):
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.add_variant("a", 0, {"x": 1}, {"pretrain": "runs/a/pretrain"})
    store.start("a", "pretrain")
    store.close()
    script = f"""
import os
from mixmask.store import ResultsStore
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
