"""Agreement with lm-evaluation-harness: our scoring and lm-eval's, on the same model and
the same examples.

For each task, `agree` runs our evaluator (our converters' prompts, our accuracy) and
lm-eval's own task (its config and metrics, through lm_eval_harness.py, offline on the
same local rows), both over the same TextModel, and compares them example by example:

- the requests: every (context, continuation) lm-eval scores must be one we score, in
  the same order of choices (a differing prompt or choice shows up here first);
- the log-likelihoods of each choice: `max_abs_loglik_diff`;
- accuracy (and acc_norm where lm-eval reports it): `acc_ours` vs `acc_lm_eval`.

`TaskAgreement.agrees(tol)` is what the test asserts (log-likelihoods within `tol`,
identical accuracy); agreement_main.py prints it for a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Sequence

from services.eval import evaluator as evaluator_lib, lm_eval_harness, tasks as tasks_lib


@dataclasses.dataclass
class TaskAgreement:
    task: str
    num_examples: int
    max_abs_loglik_diff: float
    acc_ours: float
    acc_lm_eval: float
    acc_norm_ours: float | None = None
    acc_norm_lm_eval: float | None = None
    # Examples whose requests (prompt or choices) differ between the two, by index.
    mismatched_requests: list[int] = dataclasses.field(default_factory=list)

    def agrees(self, tol: float = 1e-4) -> bool:
        return (
            not self.mismatched_requests
            and self.max_abs_loglik_diff <= tol
            and self.acc_ours == self.acc_lm_eval
            and self.acc_norm_ours == self.acc_norm_lm_eval
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class _Recording:
    """A TextModel that remembers every log-likelihood request and its answer."""

    def __init__(self, model):
        self.model = model
        self.scored: list[tuple[tuple[str, str], float]] = []

    def loglikelihood(self, requests):
        out = self.model.loglikelihood(requests)
        self.scored += [(tuple(r), lp) for r, (lp, _) in zip(requests, out)]
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)


def _ours(model, task: tasks_lib.Task, ev: evaluator_lib.Evaluator, limit: int):
    recorder = _Recording(model)
    result = ev.evaluate_task(recorder, task, limit=limit)
    per_example, at = [], 0
    for ex in ev.examples(task, limit):
        n = len(evaluator_lib.mc_requests(ex))
        per_example.append(recorder.scored[at : at + n])
        at += n
    values = {result.metric: result.value, **result.extra}
    return per_example, values


def agree(
    model,
    task_names: Sequence[str],
    *,
    limit: int,
    benchmarks_dir: str,
    cache_dir: str,
    work_dir: str | None = None,
) -> list[TaskAgreement]:
    """One TaskAgreement per task, on the first `limit` examples of each."""
    from lm_eval import evaluator as lm_eval_evaluator
    from lm_eval.tasks import TaskManager

    if limit <= 0:
        raise ValueError(f"limit: must be positive, got {limit}")
    for name in task_names:
        if name not in lm_eval_harness.LM_EVAL_TASKS:
            raise ValueError(
                f"tasks: {name!r} has no lm-eval counterpart; "
                f"known: {sorted(lm_eval_harness.LM_EVAL_TASKS)}"
            )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work_dir = work_dir or tempfile.mkdtemp(prefix="lm_eval_tasks_")
    lm_eval_names = lm_eval_harness.write_local_tasks(
        work_dir, benchmarks_dir=benchmarks_dir, task_names=task_names
    )
    output = lm_eval_evaluator.simple_evaluate(
        model=lm_eval_harness.HarnessLM(model),
        tasks=lm_eval_names,
        limit=limit,
        task_manager=TaskManager(include_path=work_dir, include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    ev = evaluator_lib.Evaluator(
        benchmarks_dir=benchmarks_dir, cache_dir=cache_dir, bootstrap_resamples=10
    )
    out = []
    for name, lm_eval_name in zip(task_names, lm_eval_names):
        ours, values = _ours(model, tasks_lib.TASKS[name], ev, limit)
        samples = sorted(output["samples"][lm_eval_name], key=lambda s: s["doc_id"])
        metrics = output["results"][lm_eval_name]
        diff, mismatched = 0.0, []
        for i, sample in enumerate(samples):
            theirs = [
                (tuple(map(str, a)), float(r[0]))
                for a, r in zip(sample["arguments"], sample["filtered_resps"])
            ]
            mine = ours[i] if i < len(ours) else []
            if [r for r, _ in theirs] != [r for r, _ in mine]:
                mismatched.append(i)
                continue
            diff = max([diff] + [abs(a - b) for (_, a), (_, b) in zip(theirs, mine)])
        if len(samples) != len(ours):
            mismatched.extend(range(min(len(samples), len(ours)), max(len(samples), len(ours))))
        has_norm = "acc_norm,none" in metrics
        out.append(
            TaskAgreement(
                task=name,
                num_examples=len(samples),
                max_abs_loglik_diff=diff if not mismatched else math.inf,
                acc_ours=float(values["acc"]),
                acc_lm_eval=float(metrics["acc,none"]),
                acc_norm_ours=float(values["acc_norm"]) if has_norm else None,
                acc_norm_lm_eval=float(metrics["acc_norm,none"]) if has_norm else None,
                mismatched_requests=mismatched,
            )
        )
    return out
