"""The results database: round trips, settings keys, FollowRun bookkeeping, persistence."""

from services.eval.evaluator import TaskResult
from services.eval.results_db import ResultsDB, settings_key


def _result(task="copa", value=0.5):
    return TaskResult(
        task=task,
        category="nl_reasoning",
        metric="acc",
        value=value,
        ci_low=0.25,
        ci_high=0.75,
        num_examples=4,
        extra={"acc_norm": 0.5, "bpb": 1.5},
        scores=[1.0, 0.0, 1.0, 0.0],
        intervals={"acc_norm": (0.0, 1.0), "bpb": (1.25, 1.75)},
        example_metrics={"bpb": [1.0, 2.0, 1.5, 1.5]},
    )


def test_settings_key_is_canonical():
    assert settings_key(limit=4, seed=1) == settings_key(seed=1, limit=4)
    assert settings_key(limit=4, seed=1) != settings_key(limit=4, seed=2)


def test_results_round_trip_and_persist(tmp_path):
    path = str(tmp_path / "sub" / "results.sqlite")
    db = ResultsDB(path)
    db.record_checkpoint("ck://1", 10, {"run_id": "r", "tokens_per_source": {"code": 5}})
    key = settings_key(limit=4)
    db.put_result("ck://1", key, _result())
    db.put_result("ck://1", key, _result(value=0.75))  # replaces
    db.close()

    db = ResultsDB(path)
    assert db.checkpoint("ck://1") == (10, {"run_id": "r", "tokens_per_source": {"code": 5}})
    got = db.get_result("ck://1", "copa", key)
    assert got == _result(value=0.75)
    assert db.get_result("ck://1", "copa", settings_key(limit=5)) is None
    assert [(s, r.task) for s, r in db.results("ck://1")] == [(key, "copa")]
    assert db.checkpoint("ck://2") is None


def test_a_database_from_before_the_continuous_metrics_is_upgraded(tmp_path):
    import sqlite3

    path = str(tmp_path / "old.sqlite")
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE results (uri TEXT NOT NULL, task TEXT NOT NULL, settings TEXT NOT NULL,"
        " category TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,"
        " ci_low REAL NOT NULL, ci_high REAL NOT NULL, num_examples INTEGER NOT NULL,"
        " extra TEXT NOT NULL, scores TEXT NOT NULL, created REAL NOT NULL,"
        " PRIMARY KEY (uri, task, settings));"
        "INSERT INTO results VALUES ('ck://1', 'copa', 's', 'nl_reasoning', 'acc', 0.5,"
        " 0.25, 0.75, 4, '{}', '[1, 0, 1, 0]', 0);"
    )
    conn.commit()
    conn.close()
    db = ResultsDB(path)
    old = db.get_result("ck://1", "copa", "s")
    assert old.value == 0.5 and old.intervals == {} and old.example_metrics == {}
    db.put_result("ck://1", "s2", _result())
    assert db.get_result("ck://1", "copa", "s2") == _result()


def test_followed_bookkeeping():
    db = ResultsDB()
    assert db.followed_status("r", "s", "ck://1") is None
    db.mark_followed("r", "s", "ck://2", step=2, sequence=5, status="missing")
    db.mark_followed("r", "s", "ck://1", step=1, sequence=3, status="done")
    assert db.followed_status("r", "s", "ck://1") == "done"
    assert db.followed_status("r", "other settings", "ck://1") is None
    assert db.followed("r") == [("ck://1", 1, "done"), ("ck://2", 2, "missing")]
