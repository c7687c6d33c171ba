"""Evaluation end to end: an oracle scores 1.0 everywhere, a random tiny model near chance,
and the paper's aggregates on hand-computed numbers."""

import math

import pytest

from services.eval import code_exec, evaluator, tasks, testing
from services.eval.evaluator import TaskResult

ROOT = tasks.default_benchmarks_dir()


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    return evaluator.Evaluator(
        benchmarks_dir=ROOT,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        code_runner=code_exec.CodeRunner(),
        bootstrap_resamples=200,
    )


def test_an_oracle_scores_one_on_every_task(ev):
    task_list, _ = tasks.resolve("tiny", benchmarks_dir=ROOT)
    limit = 6
    by_kind = {}
    for task in task_list:
        by_kind.setdefault(task.kind, []).extend(ev.examples(task, limit))
    oracle = testing.OracleModel(by_kind)
    results = list(ev.evaluate(oracle, task_list, limit=limit))
    assert [r.task for r in results] == [t.name for t in task_list]
    for r in results:
        assert r.value == 1.0, r
        assert r.num_examples == limit
        assert (r.ci_low, r.ci_high) == (1.0, 1.0)
    for agg in evaluator.aggregate(results):
        assert agg.value == 1.0


def test_a_random_tiny_model_gives_well_formed_results(ev):
    lm = testing.tiny_language_model()
    task_list, limit = tasks.resolve("smoke", benchmarks_dir=ROOT)
    results = list(ev.evaluate(lm, task_list, limit=limit, seed=3))
    assert [r.task for r in results] == ["copa", "winogrande", "triviaqa", "humaneval"]
    for r in results:
        assert r.num_examples == limit
        assert 0.0 <= r.ci_low <= r.value <= r.ci_high <= 1.0
        assert r.metric == tasks.TASKS[r.task].metric
    by_name = {r.task: r for r in results}
    assert set(by_name["copa"].extra) == {"acc_norm", "acc_norm_bytes"}
    assert set(by_name["triviaqa"].extra) == {"f1"}
    # A random 2-layer model writes no working code and knows no trivia.
    assert by_name["humaneval"].value == 0.0
    assert by_name["triviaqa"].value == 0.0
    aggs = evaluator.aggregate(results, seed=3)
    assert [a.task for a in aggs] == ["aggregate/" + n for n in evaluator.AGGREGATES]


def _r(task, category, value, n=4):
    scores = [value] * n
    return TaskResult(
        task=task,
        category=category,
        metric="acc",
        value=value,
        ci_low=value,
        ci_high=value,
        num_examples=n,
        scores=scores,
    )


def test_aggregates_follow_the_paper():
    results = [
        _r("arc_easy", "nl_reasoning", 0.6),
        _r("boolq", "nl_reasoning", 0.4),
        _r("piqa", "nl_reasoning", 0.8),
        _r("triviaqa", "world_knowledge", 0.1),
        _r("nq_open", "world_knowledge", 0.3),
        _r("humaneval", "code", 0.05),
        _r("mbpp", "code", 0.15),
    ]
    aggs = {a.task.split("/")[1]: a for a in evaluator.aggregate(results)}
    assert aggs["nl_reasoning"].value == pytest.approx(0.6)
    assert aggs["world_knowledge"].value == pytest.approx(0.2)
    assert aggs["code"].value == pytest.approx(0.1)
    # NL average: every NL task weighted equally (5 tasks), not the mean of categories.
    assert aggs["nl_average"].value == pytest.approx((0.6 + 0.4 + 0.8 + 0.1 + 0.3) / 5)
    # Total: mean of the three category scores.
    assert aggs["total"].value == pytest.approx((0.6 + 0.2 + 0.1) / 3)
    assert aggs["nl_reasoning"].num_examples == 12
    assert aggs["nl_reasoning"].extra == {"arc_easy": 0.6, "boolq": 0.4, "piqa": 0.8}
    # Constant per-example scores: every bootstrap replicate equals the value.
    for a in aggs.values():
        assert a.ci_low == pytest.approx(a.value) and a.ci_high == pytest.approx(a.value)


def test_aggregate_intervals_cover_the_value_and_are_seeded():
    a = TaskResult("arc_easy", "nl_reasoning", "acc", 0.5, 0, 1, 8, scores=[1, 0] * 4)
    b = TaskResult("copa", "nl_reasoning", "acc", 0.25, 0, 1, 8, scores=[1, 0, 0, 0] * 2)
    first = evaluator.aggregate([a, b], seed=7)
    second = evaluator.aggregate([a, b], seed=7)
    assert [(x.ci_low, x.ci_high) for x in first] == [(x.ci_low, x.ci_high) for x in second]
    nl = first[0]
    assert nl.value == pytest.approx(0.375)
    assert nl.ci_low < nl.value < nl.ci_high


def test_relative_change_against_a_baseline():
    ours = [
        _r("arc_easy", "nl_reasoning", 0.6),
        _r("humaneval", "code", 0.12),
        _r("copa", "nl_reasoning", 0.5),
    ]
    base = [_r("arc_easy", "nl_reasoning", 0.5), _r("humaneval", "code", 0.0)]
    change = evaluator.relative_change(ours, base)
    assert change["arc_easy"] == pytest.approx(0.2)
    assert math.isnan(change["humaneval"])
    assert "copa" not in change
