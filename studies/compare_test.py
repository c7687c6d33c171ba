"""Paired bootstrap comparisons: the vectorised replicates equal a plain loop, the
point estimate is the eval service's category score, pairing removes shared item
noise, and a planted effect is resolved while a null one is not."""

import math

import numpy as np
import pytest

from studies import compare


def _record(tasks: dict[str, tuple[str, str, list[float], dict]]) -> dict:
    """An evaluation record: task -> (category, metric, headline values, other metrics)."""
    results = []
    for task, (category, metric, values, others) in tasks.items():
        per_example = {metric: {"values": values}}
        per_example.update({k: {"values": v} for k, v in others.items()})
        results.append(
            {
                "task": task,
                "category": category,
                "metric": metric,
                "value": float(np.mean(values)),
                "per_example": per_example,
            }
        )
    results.append({"task": "aggregate/nl_reasoning", "category": "nl_reasoning", "value": 0})
    return {"results": results}


def _loop_value(units, seed_idx, item_idx):
    """The metric of one bootstrap replicate, written as loops."""
    per_unit = []
    for u, items in zip(units, item_idx):
        num = den = 0.0
        for s in seed_idx:
            for i in items:
                num += u.values[s, i]
                den += 1.0 if u.denominator is None else u.denominator[i]
        per_unit.append(num / den)
    return float(np.mean(per_unit))


def test_replicates_equal_the_loop_reference():
    rng = np.random.default_rng(0)
    units = [
        compare.Unit("a", rng.normal(size=(3, 5))),
        compare.Unit("b", rng.normal(size=(3, 7)), denominator=rng.uniform(1, 9, size=7)),
    ]
    for _ in range(20):
        seed_idx = rng.integers(0, 3, size=3)
        item_idx = [rng.integers(0, u.values.shape[1], size=u.values.shape[1]) for u in units]
        seed_w = np.bincount(seed_idx, minlength=3)[None, :] / 3
        item_w = [
            np.bincount(i, minlength=u.values.shape[1])[None, :] for u, i in zip(units, item_idx)
        ]
        got = compare._value(units, seed_w, item_w)[0]
        assert got == pytest.approx(_loop_value(units, seed_idx, item_idx), rel=1e-12)


def test_units_point_estimate_is_the_category_score_averaged_over_seeds():
    seeds = [
        _record(
            {
                "copa": ("nl_reasoning", "acc", [1, 0, 1, 1], {"bpb": [2.0, 3.0, 4.0, 5.0]}),
                "piqa": ("nl_reasoning", "acc", [0, 0, 1], {"bpb": [1.0, 1.0, 4.0]}),
                "triviaqa": ("world_knowledge", "exact_match", [0, 1], {}),
            }
        ),
        _record(
            {
                "copa": ("nl_reasoning", "acc", [0, 0, 1, 1], {"bpb": [2.0, 2.0, 2.0, 2.0]}),
                "piqa": ("nl_reasoning", "acc", [1, 1, 1], {"bpb": [3.0, 1.0, 2.0]}),
                "triviaqa": ("world_knowledge", "exact_match", [0, 0], {}),
            }
        ),
    ]
    acc = compare.estimate(compare.units(seeds, "nl_reasoning"))
    # Category score per seed = mean of task means; then the mean over seeds.
    per_seed = [(3 / 4 + 1 / 3) / 2, (2 / 4 + 1) / 2]
    assert acc.value == pytest.approx(np.mean(per_seed))
    assert acc.low <= acc.value <= acc.high and (acc.seeds, acc.items) == (2, 7)
    bpb = compare.estimate(compare.units(seeds, "nl_reasoning", "bpb"))
    assert bpb.value == pytest.approx(np.mean([(3.5 + 2.0) / 2, (2.0 + 2.0) / 2]))
    nl_avg = compare.units(seeds, "nl_average")
    assert [u.name for u in nl_avg] == ["copa", "piqa", "triviaqa"]


def test_heldout_units_are_bits_over_bytes():
    record = {
        "results": [
            {
                "task": "heldout_bpb",
                "category": "heldout",
                "metric": "bpb",
                "per_example": {
                    "code/nll": {"values": [10.0, 30.0]},
                    "code/bytes": {"values": [5.0, 15.0]},
                },
            }
        ]
    }
    (unit,) = compare.units([record], "heldout", "code")
    e = compare.estimate([unit])
    assert e.value == pytest.approx(40.0 / 20.0 / math.log(2))


def test_pairing_cancels_item_noise_that_both_arms_share():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(scale=3.0, size=200)  # large, shared by both arms
    a = [compare.Unit("t", difficulty + 0.3 + rng.normal(scale=0.1, size=(3, 200)))]
    b = [compare.Unit("t", difficulty + rng.normal(scale=0.1, size=(3, 200)))]
    effect = compare.paired(a, b)
    assert effect.value == pytest.approx(0.3, abs=0.05)
    assert effect.resolved and effect.sign == 1
    alone_a, alone_b = compare.estimate(a), compare.estimate(b)
    assert effect.high - effect.low < 0.2 * (
        (alone_a.high - alone_a.low) + (alone_b.high - alone_b.low)
    )


def test_a_null_effect_is_not_resolved_and_seed_noise_widens_the_interval():
    rng = np.random.default_rng(2)
    a = [compare.Unit("t", rng.normal(size=(3, 100)))]
    b = [compare.Unit("t", rng.normal(size=(3, 100)))]
    null = compare.paired(a, b)
    assert not null.resolved and null.sign == 0
    # The same items, but each seed of A shifted by its own offset: the seeds disagree.
    offsets = np.array([[-1.0], [0.0], [1.0]])
    shaky = [compare.Unit("t", b[0].values + 0.2 + offsets)]
    steady = [compare.Unit("t", b[0].values + 0.2)]
    wide, narrow = compare.paired(shaky, b), compare.paired(steady, b)
    assert wide.value == pytest.approx(narrow.value)
    assert narrow.resolved and not wide.resolved


def test_mismatched_arms_are_refused():
    a = [compare.Unit("copa", np.zeros((2, 4)))]
    with pytest.raises(ValueError, match="same tasks"):
        compare.paired(a, [compare.Unit("piqa", np.zeros((2, 4)))])
    with pytest.raises(ValueError, match="copa"):
        compare.paired(a, [compare.Unit("copa", np.zeros((2, 5)))])
    assert compare.estimate([]) is None


# ---------------------------------------------------------------- calibration on simulated studies

SEEDS, ITEMS = 3, 100
SEED_SD = (0.0, 0.1, 0.3, 1.0, 3.0)  # seed-to-item noise ratio
ITEM_SD = (0.0, 1.0)  # arm-by-item interaction (shared by every seed), to item noise


def _simulated(rng, effect: float, seed_sd: float, item_sd: float, tasks: int = 1):
    """One simulated paired study: [S, n] differences per task, d = effect + seed + item + noise."""
    seed = rng.normal(size=(SEEDS, 1)) * seed_sd  # one seed effect for every task
    return [
        compare.Unit(
            f"t{t}",
            effect
            + seed
            + rng.normal(size=(1, ITEMS // tasks)) * item_sd
            + rng.normal(size=(SEEDS, ITEMS // tasks)),
        )
        for t in range(tasks)
    ]


def _rate(
    method: str, effect: float, seed_sd: float, item_sd: float, studies: int, tasks: int = 1
) -> float:
    rng = np.random.default_rng(hash((effect, seed_sd, item_sd, tasks)) % 2**32)
    kwargs = {"resamples": 400} if method == "bootstrap" else {}
    calls = sum(
        compare.estimate(
            _simulated(rng, effect, seed_sd, item_sd, tasks), method=method, **kwargs
        ).resolved
        for _ in range(studies)
    )
    return calls / studies


def test_the_interval_keeps_its_false_positive_rate_with_three_seeds():
    """On null data (no effect), 3 seeds and 100 items, across seed-to-item noise ratios
    and with or without an arm-by-item interaction, the interval calls at most 6% of
    comparisons resolved; the percentile bootstrap it replaces does not."""
    table = {}
    for item_sd in ITEM_SD:
        for seed_sd in SEED_SD:
            table[(seed_sd, item_sd)] = _rate("interval", 0.0, seed_sd, item_sd, studies=2000)
    table_two_tasks = {s: _rate("interval", 0.0, s, 1.0, studies=1000, tasks=2) for s in (0.3, 1.0)}
    boot = {s: _rate("bootstrap", 0.0, s, 0.0, studies=300) for s in (0.3, 1.0)}
    print("\nfalse-positive rate, 3 seeds x 100 items (seed SD / item SD across, interaction down)")
    for item_sd in ITEM_SD:
        print(
            f"  interaction {item_sd}: "
            + "  ".join(f"{s}: {table[(s, item_sd)]:.3f}" for s in SEED_SD)
        )
    print(f"  two tasks, interaction 1: {table_two_tasks}")
    print(f"  percentile bootstrap, no interaction: {boot}")
    assert max(table.values()) <= 0.06, table
    assert max(table_two_tasks.values()) <= 0.06, table_two_tasks
    assert boot[1.0] > 0.15  # the simulation sees a miscalibrated interval


def test_the_interval_has_power_where_the_seeds_allow_it():
    """Power on the same grid: a planted effect of 1 item SD is found nearly always when
    seed noise is small, 0.3 item SD about three times in four; power falls as seed
    noise grows, which three seeds cannot average away."""
    power = {s: _rate("interval", 0.3, s, 0.0, studies=500) for s in SEED_SD}
    large = {s: _rate("interval", 1.0, s, 0.0, studies=500) for s in SEED_SD}
    print(f"\npower, effect 0.3 item SD: {power}\npower, effect 1.0 item SD: {large}")
    assert power[0.0] > 0.6 and large[0.1] > 0.95 and large[0.3] > 0.7
    assert power[3.0] < power[0.3] < power[0.1] < power[0.0]
    assert all(large[s] >= power[s] for s in SEED_SD)


def test_the_interval_equals_the_t_interval_when_items_are_independent_noise():
    """With one task and no item effects the variance reduces to the seeds' own:
    the interval is nearly the textbook t-interval over per-seed means."""
    rng = np.random.default_rng(3)
    (unit,) = _simulated(rng, 0.2, 1.0, 0.0)
    got = compare.interval([unit])
    means = unit.values.mean(axis=1)
    half = 4.302652729911275 * means.std(ddof=1) / math.sqrt(SEEDS)  # t(0.975, 2)
    assert got.value == pytest.approx(means.mean())
    assert got.high - got.value == pytest.approx(half, rel=0.35)


def test_a_ratio_metric_is_linearised_so_equal_ratios_add_no_item_variance():
    den = np.array([10.0, 200.0, 35.0, 4.0])
    same = compare.Unit("code", np.array([den * 0.8, den * 0.9]), denominator=den)
    got = compare.interval([same])
    assert got.value == pytest.approx(0.85)
    assert got.high - got.low == pytest.approx(
        2 * 12.706204736 * (0.1 / math.sqrt(2)) / math.sqrt(2), rel=1e-6
    )
    noisy = compare.Unit("code", np.array([den * [0.7, 0.9, 0.8, 1.0]] * 2), denominator=den)
    assert compare.interval([noisy]).value == pytest.approx((noisy.values[0].sum()) / den.sum())
    assert compare.interval([noisy]).high > compare.interval([noisy]).value
