"""Harness.evaluate and the results cache: a stored score is reused only while nothing
that decides it has changed."""

import dataclasses

import pytest

from services.eval import tasks, testing
from services.eval.harness import Harness
from services.eval.results_db import ResultsDB

ROOT = tasks.default_benchmarks_dir()


@pytest.fixture
def harness(tmp_path):
    registry = testing.ModelRegistry()
    task = tasks.TASKS["triviaqa"]
    examples = tasks.load_examples(
        task, benchmarks_dir=ROOT, cache_dir=str(tmp_path / "cache"), limit=3
    ).to_list()
    oracle = testing.OracleModel({"generation": examples})
    registry.add("mem://oracle", oracle)
    h = Harness(
        benchmarks_dir=ROOT,
        results_db=ResultsDB(),
        cache_dir=str(tmp_path / "cache"),
        loader=registry.load,
        bootstrap_resamples=50,
    )
    return h, oracle


def _scores(h):
    return [s.result for s in h.evaluate("mem://oracle", task_names=["triviaqa"], limit=3)]


def test_a_stored_score_is_reused(harness):
    h, oracle = harness
    first = _scores(h)
    calls = oracle.calls
    assert _scores(h)[0] == first[0]
    assert oracle.calls == calls  # nothing scored again


@pytest.mark.parametrize(
    "change", [{"stop": ("\n",)}, {"max_new_tokens": 8}, {"metric": "f1"}], ids=str
)
def test_a_changed_task_is_scored_again(harness, monkeypatch, change):
    h, oracle = harness
    _scores(h)
    calls = oracle.calls
    changed = dataclasses.replace(tasks.TASKS["triviaqa"], **change)
    monkeypatch.setitem(tasks.TASKS, "triviaqa", changed)
    again = _scores(h)
    assert oracle.calls > calls  # the old score was not reused
    assert again[0].metric == changed.metric
