"""The packed, bucketed scorer equals the one-pair-at-a-time reference."""

import numpy as np
import pytest

from libs.model import decode
from services.eval import scoring, testing


@pytest.fixture(scope="module")
def model():
    return testing.tiny_model(vocab_size=300, max_seq_len=128)


def _pairs(seed: int, n: int, vocab: int = 300):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        ctx = rng.integers(0, vocab, size=int(rng.integers(1, 90))).tolist()
        cont = rng.integers(0, vocab, size=int(rng.integers(1, 20))).tolist()
        pairs.append((ctx, cont))
    # Longer than the window (the context's start is dropped), and a one-token context.
    pairs.append((rng.integers(0, vocab, size=200).tolist(), [5, 6, 7]))
    pairs.append(([3], [4]))
    return pairs


@pytest.fixture(scope="module")
def reference(model):
    pairs = _pairs(0, 30)
    return pairs, scoring.score_each(model, pairs)


@pytest.mark.parametrize("tokens_per_call", [128, 512, 8192])
def test_packed_scoring_equals_one_pair_at_a_time(model, reference, tokens_per_call):
    pairs, want = reference
    got = scoring.score_packed(model, pairs, tokens_per_call=tokens_per_call)
    assert len(got) == len(pairs)
    for (lp, n, greedy), (want_lp, want_n, want_greedy) in zip(got, want):
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert (n, greedy) == (want_n, want_greedy)


def test_logits_in_chunks_score_as_all_at_once(model, reference):
    """Every call's positions padded to a multiple of 64 and scored 64 at a time."""
    pairs, want = reference
    got = scoring.score_packed(model, pairs, tokens_per_call=512, chunk=64)
    for (lp, n, greedy), (want_lp, want_n, want_greedy) in zip(got, want):
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert (n, greedy) == (want_n, want_greedy)


def test_a_chunk_holds_about_as_many_logits_whatever_the_vocabulary():
    assert scoring.positions_per_chunk(256_000) == 2048
    assert scoring.positions_per_chunk(300) == 1 << 20
    assert scoring.positions_per_chunk(2**40) == 64
    assert scoring.positions_bucket(100, 2048) == 128
    assert scoring.positions_bucket(5000, 2048) == 6144


def test_packed_scoring_equals_libs_model_scoring(model):
    pairs = _pairs(1, 25)
    ours = scoring.score_packed(model, pairs)
    theirs = decode.score_continuations(model, [c for c, _ in pairs], [x for _, x in pairs])
    for (lp, n, greedy), (want_lp, want_n, want_greedy) in zip(ours, theirs):
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert (n, greedy) == (want_n, want_greedy)


def test_a_greedy_continuation_is_reported_greedy(model):
    ctx = [10, 11, 12]
    cont = decode.generate(model, [ctx], max_new_tokens=5)[0]
    assert scoring.score_packed(model, [(ctx, cont), (ctx, [(cont[0] + 1) % 300])])[0][2]


def test_bad_pairs_name_the_pair(model):
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        scoring.score_packed(model, [([1], [2]), ([], [3])])
    with pytest.raises(ValueError, match=r"pairs\[0\].*vocabulary"):
        scoring.score_packed(model, [([1], [300])])
    assert scoring.score_packed(model, []) == []
