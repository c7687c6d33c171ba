"""Scoring a model on tasks, and the paper's aggregates over the task scores.

`Evaluator.evaluate` runs each task's examples through a TextModel and yields one
`TaskResult` per task; `aggregate` turns task results into the paper's category scores.

Aggregates (each the unweighted mean of task headline metrics, the paper's convention):

- nl_reasoning: mean over the NL reasoning tasks scored (ARC-Easy, BoolQ, PIQA, SciQ,
  SIQA, QuAC, CB, COPA, StoryCloze, HellaSwag, WinoGrande; those with data);
- world_knowledge: mean over TriviaQA and NaturalQuestions-Open (exact match);
- code: mean pass@1 over HumanEval and MBPP;
- nl_average: mean over *all* NL tasks (NL reasoning and world knowledge together,
  each task weighted equally);
- total: mean of the category scores present (nl_reasoning, world_knowledge, code).

Beside each task's headline metric, continuous metrics that move where accuracy sits
at chance (docs/evaluation.md "Small-scale signal"; metrics.py defines them):

- every task: `bpb`, bits per byte of the gold continuation given the prompt
  (multiple choice: " " + the gold choice, or WinoGrande's continuation after the gold
  option; generation: " " + the first gold answer; code: the canonical solution);
- multiple choice: `prob_correct` and `margin` over the choices' likelihoods.

Category aggregates carry the mean of each continuous metric over their tasks that
have it (`extra["bpb"]` etc.), with an interval like the headline's.

Code: pass@1 is always that of the greedy completion (Chen et al. report pass@1 at low
temperature; greedy is its deterministic limit), so it does not depend on
`num_samples`; with num_samples = n > 1, n more completions are sampled at T=0.8,
top-p 0.95 for pass@k, k in (10, 100), k <= n.

`relative_change` is (value - baseline) / baseline per task and aggregate, the paper's
"relative improvement over the text-only baseline". Every interval is a seeded
percentile bootstrap over examples: per task directly (every metric's, in
`TaskResult.intervals`); for an aggregate, each replicate is the same mean over the
tasks' replicate means (tasks resampled independently).

`scoring_fingerprint(task)` names everything that decides a task's scores (its
registry entry, the converter's and the scoring code's source, the sampling
settings), so a stored result is reused only while it would be recomputed the same.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from proto import eval_pb2
from services.eval import (
    code_exec,
    converters,
    lm as lm_lib,
    metrics,
    scoring,
    tasks as tasks_lib,
)
from services.eval.lm import TextModel, cut_at_stop

AGGREGATE_PREFIX = "aggregate/"
NL_AVERAGE = tasks_lib.aggregate_name(eval_pb2.AGGREGATE_NL_AVERAGE)
TOTAL = tasks_lib.aggregate_name(eval_pb2.AGGREGATE_TOTAL)
AGGREGATES = tuple(
    tasks_lib.aggregate_name(v)
    for v in eval_pb2.Aggregate.values()
    if v != eval_pb2.AGGREGATE_UNSPECIFIED
)
PASS_AT_KS = (1, 10, 100)
SAMPLED_PASS_AT_KS = (10, 100)  # from num_samples sampled completions; pass@1 is greedy
SAMPLING_TEMPERATURE = 0.8  # pass@k with k > 1 (Chen et al. 2021 use 0.8 for pass@100)
SAMPLING_TOP_P = 0.95
# The continuous metrics aggregated over a category (metrics.py defines each).
CONTINUOUS = ("bpb", "prob_correct", "margin")
# Bumped when scoring changes in a way the fingerprinted source would not show.
SCORING_VERSION = 2


@dataclasses.dataclass
class TaskResult:
    """Score of one task (or aggregate) for one model."""

    task: str
    category: str
    metric: str
    value: float
    ci_low: float
    ci_high: float
    num_examples: int
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    # Per-example headline scores, for aggregate intervals and paired comparisons
    # (EvalResult.per_example).
    scores: list[float] = dataclasses.field(default_factory=list, repr=False)
    # Bootstrap 95% interval of every metric in `extra` that has per-example values
    # (the headline's is ci_low / ci_high).
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # Per-example values of the continuous metrics, for aggregate intervals and
    # paired comparisons (EvalResult.per_example).
    example_metrics: dict[str, list[float]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def is_aggregate(self) -> bool:
        return self.task.startswith(AGGREGATE_PREFIX)


def _result(
    task: tasks_lib.Task,
    per_metric: dict[str, list[float]],
    *,
    seed: int,
    resamples: int,
    extra: Optional[dict] = None,
) -> TaskResult:
    scores = per_metric[task.metric]
    lo, hi = metrics.bootstrap_interval(scores, seed=seed, resamples=resamples)
    out_extra = {
        name: float(np.mean(v)) if v else 0.0
        for name, v in per_metric.items()
        if name != task.metric
    }
    intervals = {
        name: metrics.bootstrap_interval(v, seed=seed, resamples=resamples)
        for name, v in per_metric.items()
        if name != task.metric and v
    }
    out_extra.update(extra or {})
    return TaskResult(
        task=task.name,
        category=task.category,
        metric=task.metric,
        value=float(np.mean(scores)) if scores else 0.0,
        ci_low=lo,
        ci_high=hi,
        num_examples=len(scores),
        extra=out_extra,
        scores=[float(s) for s in scores],
        intervals=intervals,
        example_metrics={
            name: [float(x) for x in per_metric[name]] for name in CONTINUOUS if name in per_metric
        },
    )


@functools.lru_cache(maxsize=None)
def scoring_fingerprint(task: tasks_lib.Task) -> str:
    """A digest of everything that decides the task's scores (see module docstring).

    The registry entry (kind, metric, token limits, stop strings, sources), the source
    of its reader and converter (the prompt format) with converters.FORMAT_VERSION,
    and the source of the scoring code (this module, metrics.py, lm.py: stop at EOS,
    tokenisation; scoring.py; code_exec.py) with SCORING_VERSION and the sampling
    settings.
    """
    entry = {
        "name": task.name,
        "category": task.category,
        "kind": task.kind,
        "metric": task.metric,
        "local_files": list(task.local_files),
        "hub": dataclasses.asdict(task.hub) if task.hub else None,
        "max_new_tokens": task.max_new_tokens,
        "stop": list(task.stop),
        "format": converters.FORMAT_VERSION,
        "scoring": SCORING_VERSION,
        "sampling": [SAMPLING_TEMPERATURE, SAMPLING_TOP_P, list(SAMPLED_PASS_AT_KS)],
    }
    h = hashlib.sha256(json.dumps(entry, sort_keys=True).encode())
    for code in (task.read_local, task.convert):
        h.update(inspect.getsource(code).encode())
    for module in (converters, metrics, lm_lib, scoring, code_exec):
        h.update(inspect.getsource(module).encode())
    h.update(inspect.getsource(inspect.getmodule(scoring_fingerprint)).encode())
    return h.hexdigest()[:20]


def mc_requests(example: dict) -> list[tuple[str, str]]:
    """One (context, continuation) request per choice of a multiple-choice example."""
    if example.get("contexts"):
        return [(ctx, " " + example["continuation"]) for ctx in example["contexts"]]
    return [(example["context"], " " + choice) for choice in example["choices"]]


def _mc_lengths(example: dict, unit: str) -> list[int]:
    # The text whose likelihood is compared: the choice, or for partial scoring the
    # shared continuation (so acc_norm == acc there).
    texts = (
        [example["continuation"]] * len(example["contexts"])
        if example.get("contexts")
        else example["choices"]
    )
    return [len(t.encode("utf-8")) if unit == "bytes" else len(t) for t in texts]


class Evaluator:
    """Scores TextModels on registry tasks read from `benchmarks_dir`."""

    def __init__(
        self,
        *,
        benchmarks_dir: str,
        cache_dir: str,
        code_runner: Optional[code_exec.CodeRunner] = None,
        bootstrap_resamples: int = 1000,
        source: str = "local",
    ):
        self.benchmarks_dir = benchmarks_dir
        self.cache_dir = cache_dir
        self.code_runner = code_runner or code_exec.CodeRunner()
        self.bootstrap_resamples = bootstrap_resamples
        self.source = source

    def examples(self, task: tasks_lib.Task, limit: int = 0) -> list[dict]:
        ds = tasks_lib.load_examples(
            task,
            benchmarks_dir=self.benchmarks_dir,
            cache_dir=self.cache_dir,
            limit=limit,
            source=self.source,
        )
        return ds.to_list()

    def evaluate(
        self,
        model: TextModel,
        task_list: Sequence[tasks_lib.Task],
        *,
        limit: int = 0,
        num_samples: int = 1,
        seed: int = 0,
        generation_limit: int = 0,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[TaskResult]:
        """One TaskResult per task, in order, as each finishes."""
        for task in task_list:
            if should_stop():
                return
            yield self.evaluate_task(
                model,
                task,
                limit=limit,
                num_samples=num_samples,
                seed=seed,
                generation_limit=generation_limit,
            )

    def evaluate_task(
        self,
        model: TextModel,
        task: tasks_lib.Task,
        *,
        limit: int = 0,
        num_samples: int = 1,
        seed: int = 0,
        generation_limit: int = 0,
    ) -> TaskResult:
        """The task's result on its first `limit` examples (0: all). A generation or
        code task generates for the first `generation_limit` of them only (0: all):
        its headline metric and the other generated ones cover those, its gold-answer
        BPB every example."""
        examples = self.examples(task, limit)
        generated = examples[:generation_limit] if generation_limit > 0 else examples
        if task.kind == tasks_lib.MULTIPLE_CHOICE:
            return self._multiple_choice(model, task, examples, seed)
        if task.kind == tasks_lib.GENERATION:
            return self._generation(model, task, examples, generated, seed)
        return self._code(model, task, examples, generated, num_samples, seed)

    def _multiple_choice(self, model, task, examples, seed) -> TaskResult:
        requests, spans = [], []
        for ex in examples:
            reqs = mc_requests(ex)
            spans.append((len(requests), len(requests) + len(reqs)))
            requests.extend(reqs)
        scored = model.loglikelihood(requests)
        per = {name: [] for name in ("acc", "acc_norm", "acc_norm_bytes", *CONTINUOUS)}
        for ex, (a, b) in zip(examples, spans):
            lps = [lp for lp, _ in scored[a:b]]
            gold = int(ex["gold"])
            per["acc"].append(float(metrics.choice_correct(lps, gold)))
            per["acc_norm"].append(
                float(metrics.choice_correct_norm(lps, _mc_lengths(ex, "chars"), gold))
            )
            per["acc_norm_bytes"].append(
                float(metrics.choice_correct_norm(lps, _mc_lengths(ex, "bytes"), gold))
            )
            per["bpb"].append(metrics.bits_per_byte(lps[gold], requests[a + gold][1]))
            per["prob_correct"].append(metrics.prob_correct(lps, gold))
            per["margin"].append(metrics.margin(lps, gold))
        return _result(task, per, seed=seed, resamples=self.bootstrap_resamples)

    @staticmethod
    def _gold_bpb(model, pairs: list[tuple[str, str]]) -> list[float]:
        """Bits per byte of each (prompt, gold continuation)."""
        scored = model.loglikelihood(pairs)
        return [metrics.bits_per_byte(lp, cont) for (lp, _), (_, cont) in zip(scored, pairs)]

    def _generation(self, model, task, examples, generated, seed) -> TaskResult:
        outputs = model.generate(
            [ex["prompt"] for ex in generated],
            max_new_tokens=task.max_new_tokens,
            stop=task.stop,
            temperature=0.0,
            seed=seed,
        )
        per = {"exact_match": [], "f1": []}
        for ex, out in zip(generated, outputs):
            prediction = cut_at_stop(out, task.stop).strip()
            per["exact_match"].append(metrics.exact_match(prediction, ex["answers"]))
            per["f1"].append(metrics.token_f1(prediction, ex["answers"]))
        # The first gold answer as the prompt's continuation (the generation form of
        # the gold-answer BPB); examples without an answer have none.
        with_gold = [ex for ex in examples if ex["answers"] and ex["answers"][0].strip()]
        per["bpb"] = self._gold_bpb(
            model, [(ex["prompt"], " " + ex["answers"][0].strip()) for ex in with_gold]
        )
        return _result(task, per, seed=seed, resamples=self.bootstrap_resamples)

    def _code(self, model, task, examples, generated, num_samples, seed) -> TaskResult:
        n = max(1, num_samples)
        self.code_runner.check()  # fail before generating, not after
        prompts = [ex["prompt"] for ex in generated]
        # pass@1 from the greedy completion, whatever num_samples is.
        greedy = model.generate(
            prompts, max_new_tokens=task.max_new_tokens, stop=task.stop, temperature=0.0, seed=seed
        )
        sampled: list[str] = []
        if n > 1:
            sampled = model.generate(
                [p for p in prompts for _ in range(n)],
                max_new_tokens=task.max_new_tokens,
                stop=task.stop,
                temperature=SAMPLING_TEMPERATURE,
                top_p=SAMPLING_TOP_P,
                seed=seed,
            )
        jobs = []
        for ex, completion in zip(generated, greedy):
            jobs.append((code_exec.program(ex, cut_at_stop(completion, task.stop)), ex["tests"]))
        for i, completion in enumerate(sampled):
            ex = generated[i // n]
            jobs.append((code_exec.program(ex, cut_at_stop(completion, task.stop)), ex["tests"]))
        passed = self.code_runner.passed(jobs)
        greedy_passed, sampled_passed = passed[: len(generated)], passed[len(generated) :]
        per: dict[str, list[float]] = {"pass@1": [float(p) for p in greedy_passed]}
        for k in SAMPLED_PASS_AT_KS:
            if k <= n and n > 1:
                per[f"pass@{k}"] = [
                    metrics.pass_at_k(n, sum(sampled_passed[j * n : (j + 1) * n]), k)
                    for j in range(len(generated))
                ]
        per["bpb"] = self._gold_bpb(
            model, [(ex["prompt"], ex["canonical_solution"]) for ex in examples]
        )
        return _result(
            task,
            per,
            seed=seed,
            resamples=self.bootstrap_resamples,
            extra={"num_samples": float(n)},
        )


# ---------------------------------------------------------------- aggregation


def aggregate(
    results: Iterable[TaskResult], *, seed: int = 0, resamples: int = 1000
) -> list[TaskResult]:
    """The paper's aggregates (see the module docstring) over per-task results."""
    # The paper's categories only (held-out BPB and the like stand apart).
    task_results = [r for r in results if not r.is_aggregate and r.category in tasks_lib.CATEGORIES]
    rng = np.random.default_rng(seed)
    replicates = {
        r.task: metrics.bootstrap_means(r.scores, rng=rng, resamples=resamples)
        if r.scores
        else np.full(resamples, r.value)
        for r in task_results
    }
    # Per task and continuous metric: (value, bootstrap replicates of the mean).
    continuous = {
        (r.task, name): (
            r.extra[name],
            metrics.bootstrap_means(values, rng=rng, resamples=resamples),
        )
        for r in task_results
        for name, values in sorted(r.example_metrics.items())
        if values and name in r.extra
    }

    def mean_of(parts: list[tuple[float, np.ndarray]]) -> tuple[float, float, float]:
        value = float(np.mean([v for v, _ in parts]))
        reps = np.mean([r for _, r in parts], axis=0)
        return value, float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))

    def make(
        name: str, members: list[TaskResult], parts: list[tuple[float, np.ndarray]], extra: dict
    ) -> TaskResult:
        value, lo, hi = mean_of(parts)
        intervals = {}
        for metric in CONTINUOUS:
            metric_parts = [
                continuous[(m.task, metric)] for m in members if (m.task, metric) in continuous
            ]
            if metric_parts:
                v, c_lo, c_hi = mean_of(metric_parts)
                extra = {**extra, metric: v}
                intervals[metric] = (c_lo, c_hi)
        return TaskResult(
            task=AGGREGATE_PREFIX + name,
            category=name,
            metric="mean",
            value=value,
            ci_low=lo,
            ci_high=hi,
            num_examples=sum(m.num_examples for m in members),
            extra=extra,
            intervals=intervals,
        )

    out, category_parts = [], {}
    for cat in tasks_lib.CATEGORIES:
        members = [r for r in task_results if r.category == cat]
        if not members:
            continue
        parts = [(r.value, replicates[r.task]) for r in members]
        agg = make(cat, members, parts, {r.task: r.value for r in members})
        out.append(agg)
        category_parts[cat] = (agg, (agg.value, np.mean([p for _, p in parts], axis=0)))
    nl = [r for r in task_results if r.category != tasks_lib.CODE]
    if nl:
        out.append(
            make(
                NL_AVERAGE,
                nl,
                [(r.value, replicates[r.task]) for r in nl],
                {r.task: r.value for r in nl},
            )
        )
    if category_parts:
        out.append(
            make(
                TOTAL,
                [],  # the mean of the category scores; continuous metrics are per category
                [p for _, p in category_parts.values()],
                {cat: a.value for cat, (a, _) in category_parts.items()},
            )
        )
        out[-1].num_examples = sum(r.num_examples for r in task_results)
    return out


def relative_change(
    results: Iterable[TaskResult], baseline: Iterable[TaskResult]
) -> dict[str, float]:
    """(value - baseline) / baseline per task or aggregate present in both (NaN if 0)."""
    base = {r.task: r.value for r in baseline}
    out = {}
    for r in results:
        if r.task in base:
            b = base[r.task]
            out[r.task] = (r.value - b) / b if b else math.nan
    return out
