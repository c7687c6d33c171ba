"""The results database (SQLite): every task score of every checkpoint, with lineage.

Tables:
    checkpoints  uri -> step and lineage (JSON), as the checkpoint reported them;
    results      (uri, task, settings) -> the TaskResult (per-example headline scores
                 and continuous metrics kept so aggregates and their intervals can be
                 recomputed; every metric's interval); `settings` is the canonical
                 JSON of what else decides the score (limit, samples, seed, source and
                 the task's scoring fingerprint), so a cached score is reused only
                 when it would be recomputed identically;
    followed     (run_id, settings, uri) -> what FollowRun did with a checkpoint
                 ("done" or "missing"), so a restarted service neither repeats nor skips.

One connection guarded by a lock: the service's threads share it; SQLite's WAL mode
lets another process (a notebook, the CLI) read while the service writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Optional

from services.eval.evaluator import TaskResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    uri TEXT PRIMARY KEY,
    step INTEGER,
    lineage TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    uri TEXT NOT NULL,
    task TEXT NOT NULL,
    settings TEXT NOT NULL,
    category TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    ci_low REAL NOT NULL,
    ci_high REAL NOT NULL,
    num_examples INTEGER NOT NULL,
    extra TEXT NOT NULL,
    scores TEXT NOT NULL,
    created REAL NOT NULL,
    intervals TEXT NOT NULL DEFAULT '{}',
    example_metrics TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (uri, task, settings)
);
CREATE TABLE IF NOT EXISTS followed (
    run_id TEXT NOT NULL,
    settings TEXT NOT NULL,
    uri TEXT NOT NULL,
    step INTEGER,
    sequence INTEGER,
    status TEXT NOT NULL,
    finished REAL NOT NULL,
    PRIMARY KEY (run_id, settings, uri)
);
"""


def settings_key(**settings) -> str:
    """Canonical JSON of the settings that decide a score."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


class ResultsDB:
    def __init__(self, path: str = ":memory:"):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            if path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            # Databases written before the continuous metrics lack their columns.
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}
            for column in ("intervals", "example_metrics"):
                if column not in columns:
                    self._conn.execute(
                        f"ALTER TABLE results ADD COLUMN {column} TEXT NOT NULL DEFAULT '{{}}'"
                    )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------ checkpoints

    def record_checkpoint(self, uri: str, step: int, lineage: dict) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO checkpoints (uri, step, lineage, added) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(uri) DO UPDATE SET step = excluded.step, lineage = excluded.lineage",
                (uri, step, json.dumps(lineage, sort_keys=True), time.time()),
            )

    def checkpoint(self, uri: str) -> Optional[tuple[int, dict]]:
        with self._lock:
            row = self._conn.execute(
                "SELECT step, lineage FROM checkpoints WHERE uri = ?", (uri,)
            ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    # ------------------------------------------------------------ results

    def put_result(self, uri: str, settings: str, result: TaskResult) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO results (uri, task, settings, category, metric, value, "
                "ci_low, ci_high, num_examples, extra, scores, created, intervals, "
                "example_metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uri,
                    result.task,
                    settings,
                    result.category,
                    result.metric,
                    result.value,
                    result.ci_low,
                    result.ci_high,
                    result.num_examples,
                    json.dumps(result.extra, sort_keys=True),
                    json.dumps(result.scores),
                    time.time(),
                    json.dumps({k: list(v) for k, v in result.intervals.items()}, sort_keys=True),
                    json.dumps(result.example_metrics, sort_keys=True),
                ),
            )

    def get_result(self, uri: str, task: str, settings: str) -> Optional[TaskResult]:
        with self._lock:
            row = self._conn.execute(
                "SELECT task, category, metric, value, ci_low, ci_high, num_examples, extra, "
                "scores, intervals, example_metrics FROM results "
                "WHERE uri = ? AND task = ? AND settings = ?",
                (uri, task, settings),
            ).fetchone()
        return None if row is None else _to_result(row)

    def results(self, uri: str) -> list[tuple[str, TaskResult]]:
        """(settings, result) of every stored result of a checkpoint, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT settings, task, category, metric, value, ci_low, ci_high, "
                "num_examples, extra, scores, intervals, example_metrics FROM results "
                "WHERE uri = ? ORDER BY created",
                (uri,),
            ).fetchall()
        return [(row[0], _to_result(row[1:])) for row in rows]

    # ------------------------------------------------------------ FollowRun

    def mark_followed(
        self, run_id: str, settings: str, uri: str, *, step: int, sequence: int, status: str
    ) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO followed VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, settings, uri, step, sequence, status, time.time()),
            )

    def followed_status(self, run_id: str, settings: str, uri: str) -> Optional[str]:
        with self._lock:
            row = self._conn.execute(
                "SELECT status FROM followed WHERE run_id = ? AND settings = ? AND uri = ?",
                (run_id, settings, uri),
            ).fetchone()
        return None if row is None else row[0]

    def followed(self, run_id: str) -> list[tuple[str, int, str]]:
        """(uri, step, status) of a run's followed checkpoints, in step order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT uri, step, status FROM followed WHERE run_id = ? ORDER BY step, uri",
                (run_id,),
            ).fetchall()
        return [tuple(r) for r in rows]


def _to_result(row) -> TaskResult:
    task, category, metric, value, lo, hi, n, extra, scores, intervals, example_metrics = row
    return TaskResult(
        task=task,
        category=category,
        metric=metric,
        value=value,
        ci_low=lo,
        ci_high=hi,
        num_examples=n,
        extra=json.loads(extra),
        scores=json.loads(scores),
        intervals={k: tuple(v) for k, v in json.loads(intervals).items()},
        example_metrics=json.loads(example_metrics),
    )
