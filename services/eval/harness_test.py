"""Harness.evaluate and the results cache: a stored score is reused only while nothing
that decides it has changed."""

import dataclasses

import pytest

from libs import errors
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


def test_a_generation_limit_is_its_own_setting(harness):
    """A result generated for fewer examples is not reused for a full one, nor the other
    way round; a limit at or above the examples scored is the full setting."""
    h, oracle = harness

    def run(generation_limit):
        before = oracle.calls
        out = list(
            h.evaluate(
                "mem://oracle", task_names=["triviaqa"], limit=3, generation_limit=generation_limit
            )
        )
        return out[0].result, oracle.calls > before

    full, scored = run(0)
    assert scored and full.num_examples == 3
    cut, scored = run(1)
    assert scored and cut.num_examples == 1
    assert cut.extra["bpb"] == full.extra["bpb"]
    assert run(3) == (full, False)  # reused: the same setting as no limit
    assert run(1) == (cut, False)


def test_a_negative_generation_limit_is_refused(harness):
    h, _ = harness
    with pytest.raises(errors.InvalidArgument, match="generation_limit"):
        h.evaluate("mem://oracle", task_names=["triviaqa"], generation_limit=-1)
