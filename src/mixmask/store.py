"""The results store of a sweep: one SQLite file in the sweep folder with the variants, every stage run of every
variant and replicate seed (status, run folder, time, error) and its final metrics (the run's ``results.json``).

Every change is one SQLite transaction, so a crash or a kill mid-write leaves the store as it was before that change
(SQLite's journal rolls the half-written transaction back on the next open). Several processes may write at once
(``--jobs N``): writers wait for each other up to ``timeout`` seconds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

STATUSES = ("pending", "running", "done", "failed")

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS runs (
    variant TEXT NOT NULL REFERENCES variants(name),
    seed INTEGER NOT NULL,                -- the replicate: train.seed of each of its stages
    stage TEXT NOT NULL,                  -- pretrain | finetune | evaluate
    status TEXT NOT NULL,                 -- pending | running | done | failed
    run_dir TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,                         -- unix time of the last start
    finished REAL,
    seconds REAL,                         -- wall time of the last attempt that finished
    error TEXT,
    results TEXT,                         -- JSON: the run's results.json when done
    PRIMARY KEY (variant, seed, stage)
)"""
TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS variants (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL                    -- JSON: stages and the resolved config of each stage
)""",
    RUNS_TABLE,
)
RUN_COLUMNS = "variant, seed, stage, status, run_dir, attempts, started, finished, seconds, error, results"


class StoreError(ValueError):
    """A results store that cannot be used: not a SQLite file, or recorded with other settings."""


class ResultsStore:
    """``ResultsStore(sweep_dir / "results.sqlite")``; every method commits (or rolls back) before it returns."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA foreign_keys = ON")
            with self.transaction():
                self._add_seed_column()
                for table in TABLES:
                    self.connection.execute(table)
        except sqlite3.DatabaseError as error:  # another file in its place, a damaged one, no permission
            raise StoreError(f"{self.path} is not a usable mixmask results store ({error})") from None

    def transaction(self):
        return _Transaction(self.connection)

    def _add_seed_column(self) -> None:
        """A store from before replicate seeds (runs keyed by variant and stage) gets each run's seed from its
        variant's recorded config (``train.seed``), inside the opening transaction."""
        columns = [r["name"] for r in self.connection.execute("PRAGMA table_info(runs)")]
        if not columns or "seed" in columns:
            return
        specs = {r["name"]: json.loads(r["spec"]) for r in self.connection.execute("SELECT name, spec FROM variants")}
        self.connection.execute("ALTER TABLE runs RENAME TO runs_before_seeds")
        self.connection.execute(RUNS_TABLE)
        for row in self.connection.execute("SELECT * FROM runs_before_seeds").fetchall():
            configs = specs.get(row["variant"], {}).get("configs") or {}
            seed = ((configs.get(row["stage"]) or {}).get("train") or {}).get("seed", 0)
            values = [row[c] if c != "seed" else seed for c in RUN_COLUMNS.split(", ")]
            self.connection.execute(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 11)})", values)
        self.connection.execute("DROP TABLE runs_before_seeds")

    def close(self) -> None:
        self.connection.close()

    # --------------------------------------------------------------------------------------------- writing

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            for key, value in values.items():
                self.connection.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )

    def add_variant(self, name: str, position: int, spec: dict, run_dirs: dict[tuple[int, str], str]) -> None:
        """Register a variant and its stage runs (``{(seed, stage): run folder}``) as pending; an existing variant
        keeps its runs' state (and gains the runs of seeds added since), but a
        changed spec is refused (the sweep file changed under a finished run). Config fields that a newer mixmask
        added since the variant was recorded do not count as a change, so a study resumes after an upgrade."""
        with self.transaction():
            row = self.connection.execute("SELECT spec FROM variants WHERE name = ?", (name,)).fetchone()
            text = json.dumps(spec, sort_keys=True)
            if row is not None and row["spec"] != json.dumps(_known_to(json.loads(row["spec"]), spec), sort_keys=True):
                raise StoreError(
                    f"variant {name!r} in {self.path} was recorded with other settings; use a new sweep folder "
                    "or a new variant name (recorded: " + row["spec"] + ")"
                )
            self.connection.execute(
                "INSERT INTO variants (name, position, spec) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                (name, position, text),
            )
            for (seed, stage), run_dir in run_dirs.items():
                self.connection.execute(
                    "INSERT OR IGNORE INTO runs (variant, seed, stage, status, run_dir) VALUES (?, ?, ?, 'pending', ?)",
                    (name, seed, stage, run_dir),
                )

    def start(self, variant: str, seed: int, stage: str) -> None:
        self._update(
            variant, seed, stage, "status = 'running', attempts = attempts + 1, started = ?, error = NULL", time.time()
        )

    def finish(self, variant: str, seed: int, stage: str, results: dict, seconds: float) -> None:
        self._update(
            variant,
            seed,
            stage,
            "status = 'done', finished = ?, seconds = ?, results = ?",
            time.time(),
            seconds,
            json.dumps(results),
        )

    def fail(self, variant: str, seed: int, stage: str, error: str, seconds: float) -> None:
        self._update(
            variant, seed, stage, "status = 'failed', finished = ?, seconds = ?, error = ?", time.time(), seconds, error
        )

    def _update(self, variant: str, seed: int, stage: str, assignments: str, *values: Any) -> None:
        with self.transaction():
            cursor = self.connection.execute(
                f"UPDATE runs SET {assignments} WHERE variant = ? AND seed = ? AND stage = ?",
                (*values, variant, seed, stage),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"no run {variant}/seed {seed}/{stage} in {self.path}")

    # --------------------------------------------------------------------------------------------- reading

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.connection.execute("SELECT key, value FROM meta")}

    def variants(self) -> list[dict[str, Any]]:
        """In sweep order: ``{"name", "position", "spec"}``."""
        rows = self.connection.execute("SELECT name, position, spec FROM variants ORDER BY position")
        return [{"name": r["name"], "position": r["position"], "spec": json.loads(r["spec"])} for r in rows]

    def runs(self, variant: str | None = None) -> list[dict[str, Any]]:
        """Every stage run (of one variant), in sweep order, then by seed; ``results`` parsed (None until done)."""
        query = (
            "SELECT runs.* FROM runs JOIN variants ON variants.name = runs.variant"
            + (" WHERE runs.variant = ?" if variant else "")
            + " ORDER BY variants.position, runs.seed,"
            + " CASE stage WHEN 'pretrain' THEN 0 WHEN 'finetune' THEN 1 ELSE 2 END"
        )
        rows = self.connection.execute(query, (variant,) if variant else ())
        return [dict(r) | {"results": json.loads(r["results"]) if r["results"] else None} for r in rows]

    def run(self, variant: str, seed: int, stage: str) -> dict[str, Any] | None:
        return next((r for r in self.runs(variant) if r["seed"] == seed and r["stage"] == stage), None)


def _known_to(recorded: Any, new: Any) -> Any:
    """``new`` without the mapping keys that ``recorded`` lacks, at every depth (fields added by a newer release)."""
    if isinstance(recorded, dict) and isinstance(new, dict):
        return {key: _known_to(recorded[key], value) for key, value in new.items() if key in recorded}
    return new


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception: all of a change or none of it."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self):
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, kind, error, traceback) -> None:
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")
