"""The verdict rule: the primary metric decides, under Holm's correction across a
study's claims; an interval that crosses zero is never a finding."""

import math

import numpy as np
import pytest
from scipy import stats

from studies import compare, findings
from studies.compare import Effect


def _gain(low, high):
    return Effect((low + high) / 2, low, high, seeds=3, items=100)


def _diff(t: float, items: int = 10) -> list[compare.Unit]:
    """Signed differences over 3 seeds whose interval has t-statistic `t` (2 degrees
    of freedom): the seeds differ by 1, the items not at all."""
    mean = t / math.sqrt(3)
    per_seed = np.array([mean - 1, mean, mean + 1])
    return [compare.Unit("task", np.repeat(per_seed[:, None], items, axis=1))]


def _p(t: float) -> float:
    return 2 * stats.t.sf(abs(t), 2)


# ---------------------------------------------------------------- the verdict


@pytest.mark.parametrize(
    "sign, secondary, verdict",
    [
        (1, (), findings.REPRODUCED),
        (1, (_gain(-1, 1), _gain(0.1, 0.3)), findings.REPRODUCED),
        (-1, (_gain(-1, 1),), findings.CONTRADICTED),
        (0, (), findings.UNRESOLVED),
        # A resolved secondary metric decides nothing on its own...
        (0, (_gain(0.1, 0.3),), findings.UNRESOLVED),
        (None, (_gain(0.1, 0.3),), findings.PENDING),
        # ...and is named when it lies against a decided primary.
        (1, (_gain(-0.3, -0.1), None), f"{findings.REPRODUCED}; {findings.DISAGREES}"),
        (-1, (_gain(0.1, 0.3),), f"{findings.CONTRADICTED}; {findings.DISAGREES}"),
    ],
)
def test_verdicts(sign, secondary, verdict):
    assert findings.verdict(sign, secondary) == verdict


def test_claim_tests_sign_their_interval():
    assert findings.claim_test(_diff(10))(0.95) == 1
    assert findings.claim_test(_diff(-10))(0.95) == -1
    assert findings.claim_test(_diff(1))(0.95) == 0
    # t = 5 (p = 0.038) is resolved at 95% and not at 97.5%.
    assert findings.claim_test(_diff(5))(0.95) == 1
    assert findings.claim_test(_diff(5))(0.975) == 0
    assert findings.gain(None, 0.95) is None


# ---------------------------------------------------------------- Holm


def test_holm_changes_a_verdict_an_unadjusted_interval_would_give():
    # Alone, t = 5 is reproduced; two such claims in one family are not.
    alone = findings.holm([findings.claim_test(_diff(5))])
    assert alone == [findings.Decision(1, 0.95)]
    pair = findings.holm([findings.claim_test(_diff(5)), findings.claim_test(_diff(5))])
    assert [d.sign for d in pair] == [0, 0]
    assert [d.confidence for d in pair] == [pytest.approx(0.975)] * 2
    assert findings.verdict(pair[0].sign) == findings.UNRESOLVED


def test_holm_steps_down_where_bonferroni_would_stop():
    # The strong claim is decided at 1 - 0.05/2; the weak one then at 95%.
    decisions = findings.holm([findings.claim_test(_diff(5)), findings.claim_test(_diff(100))])
    assert decisions[1] == findings.Decision(1, pytest.approx(0.975))
    assert decisions[0] == findings.Decision(1, pytest.approx(0.95))


def test_a_claim_not_evaluated_yet_holds_its_share_of_alpha():
    decisions = findings.holm([findings.claim_test(_diff(5)), None])
    assert decisions[0].sign == 0 and decisions[1].sign is None
    assert decisions[0].confidence == pytest.approx(0.975)


@pytest.mark.parametrize("seed", range(5))
def test_holm_by_confidence_levels_is_holm_on_p_values(seed):
    rng = np.random.default_rng(seed)
    ts = rng.choice([-1, 1], size=8) * rng.uniform(0, 40, size=8)
    decisions = findings.holm([findings.claim_test(_diff(t)) for t in ts])
    # The textbook procedure: sort the p-values, reject while p(i) <= alpha/(m-i+1).
    order = np.argsort([_p(t) for t in ts])
    rejected = set()
    for rank, i in enumerate(order):
        if _p(ts[i]) > findings.ALPHA / (len(ts) - rank):
            break
        rejected.add(i)
    assert {i for i, d in enumerate(decisions) if d.sign} == rejected
    for i in rejected:
        assert decisions[i].sign == np.sign(ts[i])


# ---------------------------------------------------------------- the optimum


@pytest.mark.parametrize(
    "ts, sign",
    [
        ((10, 12, 30), 1),  # above every other share: reproduced
        ((10, 1, 30), 0),  # one comparison crosses zero: not resolved
        ((10, -1, 30), 0),
        ((10, -30, 30), -1),  # another share beats it at the Bonferroni level
        # Below zero at 95% (p = 0.038) but not at 1 - 0.05/3: not a contradiction.
        ((10, -5, 30), 0),
    ],
)
def test_an_optimum_must_beat_every_other_share(ts, sign):
    assert findings.optimum_test([_diff(t) for t in ts])(0.95) == sign


def test_an_optimum_is_one_claim_of_the_family():
    optimum = findings.optimum_test([_diff(5), _diff(6)])  # each resolved at 95%
    assert optimum(0.95) == 1
    alone = findings.holm([optimum])
    assert alone[0].sign == 1
    with_another = findings.holm([optimum, findings.claim_test(_diff(1))])
    assert with_another[0].sign == 0  # at 97.5% t = 5 crosses zero


# ---------------------------------------------------------------- null comparisons


def test_null_rate_counts_resolved_comparisons_k_of_n():
    effects = [_gain(0.1, 0.3), _gain(-1, 1), None, _gain(-0.3, -0.2), _gain(-0.1, 0.1)]
    assert findings.null_rate(effects) == (2, 4)
    assert findings.null_rate([None]) == (0, 0)


def test_twins_on_the_same_mixture_are_called_resolved_about_5_percent_of_the_time():
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(400):
        # Two arms with the same mean: seed effects, item effects and noise.
        items = rng.normal(size=100)

        def arm():
            return items + rng.normal(size=(3, 1)) * 0.3 + rng.normal(size=(3, 100))

        gains.append(compare.paired([compare.Unit("t", arm())], [compare.Unit("t", arm())]))
    k, n = findings.null_rate(gains)
    assert n == 400 and 0.01 <= k / n <= 0.09


# ---------------------------------------------------------------- the claims


def test_every_claim_names_a_scored_category_and_its_arms():
    for claim in findings.CLAIMS:
        assert claim.category in findings.CATEGORIES and claim.finding and claim.paper
        if isinstance(claim, findings.Claim):
            assert claim.a != claim.b
    # Each of the paper's findings the tiny study's arms can test is there.
    assert len({c.finding for c in findings.CLAIMS}) == 7
    optimum = [c for c in findings.CLAIMS if isinstance(c, findings.Optimum)]
    assert [(c.best, c.category) for c in optimum] == [("code25", "nl_reasoning")]
