"""Metrics on hand-computed cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from services.eval import metrics


def test_accuracy_picks_the_most_likely_choice():
    logprobs = [[-1.0, -2.0], [-3.0, -0.5, -4.0], [-2.0, -2.0]]
    golds = [0, 1, 1]  # the tie goes to the first choice, so the third is wrong
    assert metrics.accuracy(logprobs, golds) == pytest.approx(2 / 3)


def test_acc_norm_divides_by_characters():
    # Choice 0: -6 over 2 chars = -3/char; choice 1: -8 over 8 chars = -1/char.
    logprobs, choices = [[-6.0, -8.0]], [["ab", "abcdefgh"]]
    assert metrics.accuracy(logprobs, [1]) == 0.0
    assert metrics.acc_norm(logprobs, choices, [1]) == 1.0


def test_acc_norm_bytes_differs_from_chars_on_multibyte_text():
    # "éé" is 2 characters but 4 bytes. Per char: -7/2 = -3.5 < -3.0, choice 1 wins;
    # per byte: -7/4 = -1.75 > -3.0, choice 0 wins.
    logprobs, choices = [[-7.0, -3.0]], [["éé", "x"]]
    assert metrics.acc_norm(logprobs, choices, [1], unit="chars") == 1.0
    assert metrics.acc_norm(logprobs, choices, [0], unit="bytes") == 1.0


def test_normalize_answer_as_squad():
    assert metrics.normalize_answer("  The Quick, brown FOX!  ") == "quick brown fox"
    assert metrics.normalize_answer("An apple a day") == "apple day"
    assert metrics.normalize_answer("theatre") == "theatre"  # articles only as words


def test_exact_match_takes_any_alias():
    assert metrics.exact_match("the Sunset Blvd.", ["Sunset Blvd", "Sunset Boulevard"]) == 1.0
    assert metrics.exact_match("Sunset", ["Sunset Blvd"]) == 0.0
    assert metrics.exact_match("", ["x"]) == 0.0


def test_token_f1():
    # pred "new york city", gold "york city": overlap 2, P = 2/3, R = 1.
    assert metrics.token_f1("New York City", ["York City"]) == pytest.approx(0.8)
    assert metrics.token_f1("Paris", ["London", "Paris"]) == 1.0
    assert metrics.token_f1("", ["London"]) == 0.0


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 3, 1, 0.3),
        (10, 3, 10, 1.0),
        (5, 2, 2, 1 - (3 * 2) / (5 * 4)),  # 1 - C(3,2)/C(5,2) = 0.7
        (200, 0, 100, 0.0),
    ],
)
def test_pass_at_k_known_values(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
    )
)
def test_pass_at_k_equals_the_combinatorial_formula(nck):
    n, c, k = nck
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-9)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k:"):
        metrics.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        metrics.pass_at_k(3, 4, 1)


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    scores = (rng.random(400) < 0.3).astype(float)
    lo, hi = metrics.bootstrap_interval(scores, seed=1)
    assert lo < scores.mean() < hi
    # Binomial standard error ~0.023: the 95% interval is about +-0.045.
    assert 0.06 < hi - lo < 0.12
    assert metrics.bootstrap_interval(scores, seed=1) == (lo, hi)
    assert metrics.bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert metrics.bootstrap_interval([]) == (0.0, 0.0)


def test_pairwise_outcome_needs_both_orders_to_agree():
    assert metrics.pairwise_outcome("A", "A") == metrics.WIN
    assert metrics.pairwise_outcome("B", "B") == metrics.LOSS
    # A position-biased judge (always the first shown) cancels out to a tie.
    assert metrics.pairwise_outcome("A", "B") == metrics.TIE
    assert metrics.pairwise_outcome("tie", "A") == metrics.TIE
    with pytest.raises(ValueError):
        metrics.pairwise_outcome("first", "A")


def test_win_rate_counts_ties_half():
    outcomes = [metrics.WIN, metrics.WIN, metrics.LOSS, metrics.TIE]
    assert metrics.win_rate(outcomes) == pytest.approx(2.5 / 4)
    assert metrics.win_rate([metrics.TIE] * 3) == 0.5
