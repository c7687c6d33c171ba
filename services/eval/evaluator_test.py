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
    assert set(by_name["copa"].extra) == {
        "acc_norm",
        "acc_norm_bytes",
        "bpb",
        "prob_correct",
        "margin",
    }
    assert set(by_name["triviaqa"].extra) == {"f1", "bpb"}
    assert set(by_name["humaneval"].extra) == {"num_samples", "bpb"}
    for r in results:
        # A random model spends several bits on every byte of the gold text.
        assert r.extra["bpb"] > 1.0
        lo, hi = r.intervals["bpb"]
        assert lo <= r.extra["bpb"] <= hi
    assert 0.0 < by_name["copa"].extra["prob_correct"] < 1.0
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


class ScoresByChoice:
    """A TextModel whose log-likelihood of a continuation is fixed per continuation."""

    def __init__(self, logprobs: dict[str, float]):
        self.logprobs = logprobs

    def loglikelihood(self, requests):
        return [(self.logprobs[cont], False) for _, cont in requests]


def test_continuous_metrics_of_multiple_choice(ev, monkeypatch):
    examples = [
        {"id": "0", "context": "Q:", "choices": ["yes", "no"], "gold": 0},
        {"id": "1", "context": "Q:", "choices": ["yes", "no"], "gold": 1},
    ]
    monkeypatch.setattr(ev, "examples", lambda task, limit=0: examples)
    model = ScoresByChoice({" yes": math.log(0.3), " no": math.log(0.1)})
    r = ev.evaluate_task(model, tasks.TASKS["boolq"])
    assert r.value == 0.5  # acc: "yes" wins both
    # Normalised over the choices: p(yes) = 0.75, p(no) = 0.25.
    assert r.extra["prob_correct"] == pytest.approx((0.75 + 0.25) / 2)
    assert r.extra["margin"] == pytest.approx((0.5 - 0.5) / 2)
    # Bits per byte of the gold continuation, " yes" (4 bytes) and " no" (3 bytes).
    want = (-math.log(0.3) / 4 + -math.log(0.1) / 3) / 2 / math.log(2)
    assert r.extra["bpb"] == pytest.approx(want)
    assert r.example_metrics["margin"] == pytest.approx([0.5, -0.5])
    lo, hi = r.intervals["margin"]
    assert lo == pytest.approx(-0.5) and hi == pytest.approx(0.5)


def test_aggregates_carry_the_continuous_metrics_with_intervals():
    a = TaskResult(
        "arc_easy",
        "nl_reasoning",
        "acc",
        0.5,
        0,
        1,
        4,
        extra={"bpb": 2.0, "prob_correct": 0.4},
        scores=[1, 0, 1, 0],
        example_metrics={"bpb": [1.0, 3.0, 1.0, 3.0], "prob_correct": [0.4] * 4},
    )
    b = TaskResult(
        "copa",
        "nl_reasoning",
        "acc",
        0.5,
        0,
        1,
        2,
        extra={"bpb": 1.0},
        scores=[1, 0],
        example_metrics={"bpb": [1.0, 1.0]},
    )
    h = TaskResult(
        "humaneval",
        "code",
        "pass@1",
        0.0,
        0,
        0,
        2,
        extra={"bpb": 0.5},
        scores=[0, 0],
        example_metrics={"bpb": [0.5, 0.5]},
    )
    aggs = {x.task.split("/")[1]: x for x in evaluator.aggregate([a, b, h], seed=1)}
    nl = aggs["nl_reasoning"]
    assert nl.extra["bpb"] == pytest.approx(1.5)
    assert nl.extra["prob_correct"] == pytest.approx(0.4)  # the tasks that have it
    lo, hi = nl.intervals["bpb"]
    assert 1.0 <= lo < 1.5 < hi <= 2.0
    assert aggs["code"].extra["bpb"] == pytest.approx(0.5)
    assert aggs["nl_average"].extra["bpb"] == pytest.approx(1.5)
    assert "bpb" not in aggs["total"].extra  # a mean over categories of scores only


def test_the_scoring_fingerprint_covers_what_changes_a_score():
    import dataclasses

    task = tasks.TASKS["triviaqa"]
    base = evaluator.scoring_fingerprint(task)
    assert evaluator.scoring_fingerprint(task) == base
    for change in (
        {"stop": ("\n",)},
        {"max_new_tokens": 16},
        {"metric": "f1"},
        {"convert": tasks.converters.convert_nq_open},
    ):
        assert evaluator.scoring_fingerprint(dataclasses.replace(task, **change)) != base, change
    assert evaluator.scoring_fingerprint(tasks.TASKS["nq_open"]) != base


@pytest.mark.parametrize("task_name", ["triviaqa", "humaneval"])
def test_a_generation_limit_generates_for_the_first_examples_only(ev, task_name):
    """generation_limit k: the generated metrics are the full run's first k per-example
    scores, and the gold-answer BPB is the full run's, over every example."""
    lm = testing.tiny_language_model()
    task = tasks.TASKS[task_name]
    full = ev.evaluate_task(lm, task, limit=6, seed=1)
    cut = ev.evaluate_task(lm, task, limit=6, seed=1, generation_limit=2)
    assert full.num_examples == 6 and cut.num_examples == 2
    assert cut.scores == full.scores[:2]
    assert cut.example_metrics["bpb"] == full.example_metrics["bpb"]
    assert len(cut.example_metrics["bpb"]) == 6
    assert cut.extra["bpb"] == full.extra["bpb"]
    # At or above the examples scored, it is no limit.
    assert ev.evaluate_task(lm, task, limit=6, seed=1, generation_limit=6).scores == full.scores
