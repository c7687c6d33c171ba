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

`relative_change` is (value - baseline) / baseline per task and aggregate, the paper's
"relative improvement over the text-only baseline". Every interval is a seeded
percentile bootstrap over examples: per task directly; for an aggregate, each
replicate is the same mean over the tasks' replicate means (tasks resampled
independently).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from services.eval import code_exec, metrics, tasks as tasks_lib
from services.eval.lm import TextModel, cut_at_stop

AGGREGATE_PREFIX = "aggregate/"
AGGREGATES = ("nl_reasoning", "world_knowledge", "code", "nl_average", "total")
PASS_AT_KS = (1, 10, 100)
SAMPLING_TEMPERATURE = 0.8  # pass@k with k > 1 (Chen et al. 2021 use 0.8 for pass@100)
SAMPLING_TOP_P = 0.95


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
    # Per-example headline scores, for aggregate intervals (not sent over the wire).
    scores: list[float] = dataclasses.field(default_factory=list, repr=False)

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
    )


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
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[TaskResult]:
        """One TaskResult per task, in order, as each finishes."""
        for task in task_list:
            if should_stop():
                return
            yield self.evaluate_task(model, task, limit=limit, num_samples=num_samples, seed=seed)

    def evaluate_task(
        self,
        model: TextModel,
        task: tasks_lib.Task,
        *,
        limit: int = 0,
        num_samples: int = 1,
        seed: int = 0,
    ) -> TaskResult:
        examples = self.examples(task, limit)
        if task.kind == tasks_lib.MULTIPLE_CHOICE:
            return self._multiple_choice(model, task, examples, seed)
        if task.kind == tasks_lib.GENERATION:
            return self._generation(model, task, examples, seed)
        return self._code(model, task, examples, num_samples, seed)

    def _multiple_choice(self, model, task, examples, seed) -> TaskResult:
        requests, spans = [], []
        for ex in examples:
            reqs = mc_requests(ex)
            spans.append((len(requests), len(requests) + len(reqs)))
            requests.extend(reqs)
        scored = model.loglikelihood(requests)
        per = {"acc": [], "acc_norm": [], "acc_norm_bytes": []}
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
        return _result(task, per, seed=seed, resamples=self.bootstrap_resamples)

    def _generation(self, model, task, examples, seed) -> TaskResult:
        outputs = model.generate(
            [ex["prompt"] for ex in examples],
            max_new_tokens=task.max_new_tokens,
            stop=task.stop,
            temperature=0.0,
            seed=seed,
        )
        per = {"exact_match": [], "f1": []}
        for ex, out in zip(examples, outputs):
            prediction = cut_at_stop(out, task.stop).strip()
            per["exact_match"].append(metrics.exact_match(prediction, ex["answers"]))
            per["f1"].append(metrics.token_f1(prediction, ex["answers"]))
        return _result(task, per, seed=seed, resamples=self.bootstrap_resamples)

    def _code(self, model, task, examples, num_samples, seed) -> TaskResult:
        n = max(1, num_samples)
        self.code_runner.check()  # fail before generating, not after
        prompts = [ex["prompt"] for ex in examples for _ in range(n)]
        sample = n > 1
        completions = model.generate(
            prompts,
            max_new_tokens=task.max_new_tokens,
            stop=task.stop,
            temperature=SAMPLING_TEMPERATURE if sample else 0.0,
            top_p=SAMPLING_TOP_P if sample else 1.0,
            seed=seed,
        )
        jobs = []
        for i, completion in enumerate(completions):
            ex = examples[i // n]
            jobs.append((code_exec.program(ex, cut_at_stop(completion, task.stop)), ex["tests"]))
        passed = self.code_runner.passed(jobs)
        per: dict[str, list[float]] = {f"pass@{k}": [] for k in PASS_AT_KS if k <= n}
        for j in range(len(examples)):
            c = sum(passed[j * n : (j + 1) * n])
            for k in PASS_AT_KS:
                if k <= n:
                    per[f"pass@{k}"].append(metrics.pass_at_k(n, c, k))
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
    task_results = [r for r in results if not r.is_aggregate]
    rng = np.random.default_rng(seed)
    replicates = {
        r.task: metrics.bootstrap_means(r.scores, rng=rng, resamples=resamples)
        if r.scores
        else np.full(resamples, r.value)
        for r in task_results
    }

    def make(
        name: str, members: list[TaskResult], parts: list[tuple[float, np.ndarray]], extra: dict
    ) -> TaskResult:
        value = float(np.mean([v for v, _ in parts]))
        reps = np.mean([r for _, r in parts], axis=0)
        return TaskResult(
            task=AGGREGATE_PREFIX + name,
            category=name,
            metric="mean",
            value=value,
            ci_low=float(np.quantile(reps, 0.025)),
            ci_high=float(np.quantile(reps, 0.975)),
            num_examples=sum(m.num_examples for m in members),
            extra=extra,
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
                "nl_average",
                nl,
                [(r.value, replicates[r.task]) for r in nl],
                {r.task: r.value for r in nl},
            )
        )
    if category_parts:
        members = [r for r in task_results]
        out.append(
            make(
                "total",
                members,
                [p for _, p in category_parts.values()],
                {cat: a.value for cat, (a, _) in category_parts.items()},
            )
        )
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
