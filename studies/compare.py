"""Paired comparisons of two arms over seeds and eval items, with bootstrap intervals.

A study trains every phase once per seed (Study.seeds) and scores every checkpoint on
the same eval items, so arm A and arm B pair twice over: replicate s of A and of B
share a seed (initialisation and data order), and item i of a task is the same
question for both. The effect of A against B on a category metric is

    mean over the category's tasks t of  sum_{s,i} (a[s,t,i] - b[s,t,i]) / (S * n_t),

the difference of the two arms' means over seeds of the eval service's category
score (the unweighted mean of task means). For a ratio metric, held-out bits per
byte of one source, a task is one source, its items are documents, and its value is
sum of bits / sum of bytes over documents.

The 95% interval is a percentile bootstrap that resamples seeds and items together:
each replicate draws S of the seeds with replacement (the same for both arms) and,
for every task, n_t of its items with replacement (the same for both arms), and
recomputes the effect; sampling both levels is what lets an interval cover seed
noise and item noise at once (a nested bootstrap, as in DataDecide's use of seeds).
`Effect.resolved` is whether the interval excludes zero.

The inputs are the study state's evaluation records (EvalResult dicts with
`per_example`, studies/runner.py); nothing here talks to a service.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

RESAMPLES = 2000
# Categories made of other categories' tasks (the eval service's aggregates).
CATEGORY_TASKS = {"nl_average": ("nl_reasoning", "world_knowledge")}
HEADLINE = "headline"  # a task's own metric (accuracy, exact match, F1, pass@1)
HELDOUT_TASK = "heldout_bpb"  # services/eval's per-source held-out bits per byte
AGGREGATE_PREFIX = "aggregate/"  # EvalResult.task of a category aggregate (proto/eval.proto)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One task's per-example values of one arm: [seeds, items], and for a ratio
    metric the per-item denominators (held-out bytes), the same for every seed."""

    name: str
    values: np.ndarray  # [S, n]
    denominator: np.ndarray | None = None  # [n]


@dataclasses.dataclass(frozen=True)
class Effect:
    """A mean (or a paired difference) with its bootstrap 95% interval."""

    value: float
    low: float
    high: float
    seeds: int
    items: int

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes zero."""
        return self.low > 0 or self.high < 0

    @property
    def sign(self) -> int:
        """+1 or -1 when resolved, else 0."""
        return 0 if not self.resolved else (1 if self.value > 0 else -1)


def _value(units: Sequence[Unit], seed_w: np.ndarray, item_w: list[np.ndarray]) -> np.ndarray:
    """The metric under seed weights [R, S] and per-unit item weights [R, n]: [R]."""
    per_unit = []
    for u, w in zip(units, item_w):
        by_item = seed_w @ u.values  # [R, n]
        den = u.denominator if u.denominator is not None else np.ones(u.values.shape[1])
        per_unit.append((by_item * w).sum(axis=1) / (w @ den))
    return np.mean(per_unit, axis=0)


def estimate(units: Sequence[Unit], *, resamples: int = RESAMPLES, seed: int = 0) -> Effect | None:
    """The mean over units (a difference when the units hold differences), with a
    bootstrap over seeds and items together; None without units."""
    if not units:
        return None
    seeds = units[0].values.shape[0]
    if any(u.values.shape[0] != seeds for u in units):
        raise ValueError("units: every unit needs the same seeds")
    point = float(
        _value(
            units, np.full((1, seeds), 1 / seeds), [np.ones((1, u.values.shape[1])) for u in units]
        )[0]
    )
    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples) / seeds
    item_w = [
        rng.multinomial(
            u.values.shape[1], np.full(u.values.shape[1], 1 / u.values.shape[1]), size=resamples
        ).astype(float)
        for u in units
    ]
    reps = _value(units, seed_w, item_w)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return Effect(point, float(lo), float(hi), seeds, sum(u.values.shape[1] for u in units))


def difference(a: Sequence[Unit], b: Sequence[Unit]) -> list[Unit]:
    """Paired units a - b: the same tasks, seeds and items on both sides."""
    by_name = {u.name: u for u in b}
    if {u.name for u in a} != set(by_name):
        raise ValueError(
            f"units: A has {sorted(u.name for u in a)}, B has {sorted(by_name)}; "
            "a paired comparison needs the same tasks"
        )
    out = []
    for u in a:
        v = by_name[u.name]
        if u.values.shape != v.values.shape:
            raise ValueError(f"{u.name}: A has {u.values.shape} values, B {v.values.shape}")
        out.append(Unit(u.name, u.values - v.values, u.denominator))
    return out


def paired(
    a: Sequence[Unit], b: Sequence[Unit], *, resamples: int = RESAMPLES, seed: int = 0
) -> Effect | None:
    """The effect of A against B (A minus B) with its paired interval."""
    return estimate(difference(a, b), resamples=resamples, seed=seed)


# ---------------------------------------------------------------- from evaluation records


def _values(result: dict, name: str) -> list[float] | None:
    entry = result.get("per_example", {}).get(name)
    if entry is None:
        return None
    return [float(x) for x in entry.get("values", [])]  # proto3 JSON omits an empty list


def units(evaluations: Sequence[dict], category: str, metric: str = HEADLINE) -> list[Unit]:
    """One arm's units of a category metric, replicate by replicate.

    `evaluations`: the state's evaluation records of the arm's replicates, in seed
    order. `metric`: HEADLINE or a continuous metric of the tasks ("bpb",
    "prob_correct", "margin"); category "heldout" with metric = a source name gives
    that source's held-out bits per byte. Only tasks every replicate scored count.
    """
    per_seed: list[dict[str, tuple[list[float], list[float] | None]]] = []
    for record in evaluations:
        found = {}
        for r in record["results"]:
            if r["task"].startswith(AGGREGATE_PREFIX):
                continue
            if category == "heldout":
                if r["task"] != HELDOUT_TASK:
                    continue
                nll, nbytes = _values(r, f"{metric}/nll"), _values(r, f"{metric}/bytes")
                if nll:
                    found[metric] = ([x / math.log(2) for x in nll], nbytes)
                continue
            if r.get("category") not in CATEGORY_TASKS.get(category, (category,)):
                continue
            values = _values(r, r.get("metric", "") if metric == HEADLINE else metric)
            if values:
                found[r["task"]] = (values, None)
        per_seed.append(found)
    if not per_seed:
        return []
    names = sorted(set.intersection(*(set(f) for f in per_seed)))
    out = []
    for name in names:
        rows = [f[name][0] for f in per_seed]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{name}: replicates scored different numbers of items")
        den = per_seed[0][name][1]
        out.append(
            Unit(name, np.asarray(rows, float), None if den is None else np.asarray(den, float))
        )
    return out
