"""Paired comparisons of two arms over seeds and eval items, with intervals calibrated
for few seeds.

A study trains every phase once per seed (Study.seeds) and scores every checkpoint on
the same eval items, so arm A and arm B pair twice over: replicate s of A and of B
share a seed (initialisation and data order), and item i of a task is the same
question for both. The effect of A against B on a category metric is

    mean over the category's tasks t of  sum_{s,i} (a[s,t,i] - b[s,t,i]) / (S * n_t),

the difference of the two arms' means over seeds of the eval service's category
score (the unweighted mean of task means). For a ratio metric, held-out bits per
byte of one source, a task is one source, its items are documents, and its value is
sum of bits / sum of bytes over documents.

The 95% interval (`interval`, the default) treats seeds and items as random
effects: a value is d[s,t,i] = mu + u_s + v_ti + e_sti, so the effect's variance is

    Var = var_s(D_s) / S  +  sum_t (MS_item_t - MS_err_t) / (S n_t T^2)

where D_s is seed s's category value (it carries the seed effect u_s, shared by
every task, and the seed-by-item noise), MS_item_t and MS_err_t are task t's item
and residual mean squares of a two-way layout, and T the number of tasks. The
interval is mean +- t_{0.975, S-1} sqrt(Var): seeds are the unit of replication, so
with 3 seeds t is 4.3 and the interval is as wide as three seeds warrant (Satterthwaite's
degrees of freedom, which trust the many items, were measured to call up to 7% of null
comparisons resolved when seed and item effects mix). A percentile bootstrap over seeds and items (`bootstrap`)
cannot be: drawing 3 seeds with replacement spans about [smallest, largest] seed,
and on null data it calls a quarter of comparisons resolved when seed and item
noise are alike (compare_test measures both on a grid). With one seed, seed noise
is not estimable and the interval covers items only.
`Effect.resolved` is whether the interval excludes zero.

The inputs are the study state's evaluation records (EvalResult dicts with
`per_example`, studies/runner.py); nothing here talks to a service.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats

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


def _seeds(units: Sequence[Unit]) -> int:
    """The units' common number of seeds."""
    seeds = units[0].values.shape[0]
    if any(u.values.shape[0] != seeds for u in units):
        raise ValueError("units: every unit needs the same seeds")
    return seeds


def _contributions(u: Unit) -> np.ndarray:
    """[S, n] per-item contributions whose item mean is the unit's value per seed. A
    ratio metric's R = sum num / sum den is linearised (the delta method): item i
    contributes R + (num_i - R den_i) n / sum den, so documents of equal ratio add no
    item variance, however their lengths differ."""
    if u.denominator is None:
        return u.values
    total = u.denominator.sum()
    ratio = u.values.sum(axis=1, keepdims=True) / total  # [S, 1]
    return ratio + (u.values - ratio * u.denominator) * (u.values.shape[1] / total)


def interval(units: Sequence[Unit], *, confidence: float = 0.95) -> Effect | None:
    """The mean over units with its seeds-and-items random-effects t-interval (see the
    module docstring); None without units."""
    if not units:
        return None
    seeds = _seeds(units)
    c = [_contributions(u) for u in units]
    per_seed = np.mean([x.mean(axis=1) for x in c], axis=0)  # D_s, [S]
    point = float(per_seed.mean())
    tasks = len(c)
    items = sum(u.values.shape[1] for u in units)
    seed_part = float(per_seed.var(ddof=1)) / seeds if seeds > 1 else 0.0
    item_part = 0.0
    for x in c:
        n = x.shape[1]
        if n < 2:
            continue
        item_means = x.mean(axis=0)
        ms_item = seeds * float(item_means.var(ddof=1))
        ms_err = 0.0
        if seeds > 1:  # seed-by-item noise, already in the seed part
            resid = x - x.mean(axis=1, keepdims=True) - item_means + x.mean()
            ms_err = float((resid**2).sum()) / ((seeds - 1) * (n - 1))
        item_part += (ms_item - ms_err) / (seeds * n * tasks**2)
    variance = seed_part + max(item_part, 0.0)
    if variance <= 0:
        return Effect(point, point, point, seeds, items)
    # Seeds are the unit of replication: their degrees of freedom set the t quantile.
    df = seeds - 1 if seeds > 1 else max(min(x.shape[1] for x in c) - 1, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(variance)
    return Effect(point, point - half, point + half, seeds, items)


def estimate(
    units: Sequence[Unit],
    *,
    method: str = "interval",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Effect | None:
    """The mean over units (a difference when the units hold differences) with its 95%
    interval: `method` "interval" (the calibrated t-interval, the default) or
    "bootstrap" (percentile, seeds and items resampled together); None without units."""
    if method == "interval":
        return interval(units)
    if method != "bootstrap":
        raise ValueError(f"method: expected 'interval' or 'bootstrap', got {method!r}")
    return bootstrap(units, resamples=resamples, seed=seed)


def bootstrap(units: Sequence[Unit], *, resamples: int = RESAMPLES, seed: int = 0) -> Effect | None:
    """The mean over units with a percentile bootstrap over seeds and items together
    (each replicate draws S seeds and, per task, n_t items with replacement, the same
    draws for both arms of a paired difference); None without units."""
    if not units:
        return None
    seeds = _seeds(units)
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
    a: Sequence[Unit], b: Sequence[Unit], *, method: str = "interval", seed: int = 0
) -> Effect | None:
    """The effect of A against B (A minus B) with its paired interval."""
    return estimate(difference(a, b), method=method, seed=seed)


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
