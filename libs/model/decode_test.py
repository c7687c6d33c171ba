"""Tests for decode.py: cached generation equals full forwards; stops; sampling; scoring."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from libs.model import decode, model
from libs.model.presets import get_preset

CFG = dataclasses.replace(get_preset("tiny"), vocab_size=256, max_seq_len=64)
PROMPTS = [[5, 17, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [99]]


@pytest.fixture(scope="module")
def net():
    return model.Transformer(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def greedy(net):
    return decode.generate(net, PROMPTS, max_new_tokens=12)


@nnx.jit
def _forward(net, tokens_bt):
    return net(tokens_bt)


def _reference_greedy(net, prompt, n):
    # A fixed-length buffer keeps one compilation; causality makes the right fill inert.
    seq = list(prompt)
    for _ in range(n):
        logits = _forward(net, jnp.array([seq + [0] * (32 - len(seq))]))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt) :]


def test_greedy_equals_argmax_of_full_forwards(net, greedy):
    assert [len(g) for g in greedy] == [12, 12, 12]
    for prompt, out in zip(PROMPTS, greedy):
        assert out == _reference_greedy(net, prompt, 12)


def test_batching_does_not_change_a_row(net, greedy):
    assert decode.generate(net, [PROMPTS[1]], max_new_tokens=12) == [greedy[1]]


def test_stop_sequence_ends_only_its_row_and_is_stripped(net, greedy):
    stop = greedy[0][4:6]
    out = decode.generate(net, PROMPTS, max_new_tokens=12, stop_sequences=[stop, [255, 254]])
    first = next(i for i in range(len(greedy[0]) - 1) if greedy[0][i : i + 2] == stop)
    assert out[0] == greedy[0][:first]
    for row in (1, 2):
        if not any(greedy[row][i : i + 2] == stop for i in range(11)):
            assert out[row] == greedy[row]


def test_max_new_tokens(net, greedy):
    assert decode.generate(net, PROMPTS, max_new_tokens=0) == [[], [], []]
    assert decode.generate(net, PROMPTS, max_new_tokens=5) == [g[:5] for g in greedy]


def test_sampling_is_reproducible_and_tiny_top_p_is_greedy(net, greedy):
    kwargs = dict(max_new_tokens=12, temperature=1.0, rng=jax.random.key(3))
    a = decode.generate(net, PROMPTS, **kwargs)
    assert a == decode.generate(net, PROMPTS, **kwargs)
    assert a != greedy
    assert decode.generate(net, PROMPTS, top_p=1e-6, **kwargs) == greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits_bv = jnp.log(jnp.array([[0.1, 0.6, 0.3]] * 2000))
    keys = jax.random.key(0)
    picked = decode._choose(logits_bv, keys, 1.0, 0.8, sample=True, nucleus=True)
    assert set(np.asarray(picked).tolist()) == {1, 2}  # 0.6 + 0.3 reaches 0.8; 0.1 is cut
    picked = decode._choose(logits_bv, keys, 1.0, 0.5, sample=True, nucleus=True)
    assert set(np.asarray(picked).tolist()) == {1}


def test_generate_rejects_bad_requests(net):
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode.generate(net, [[1] * 60], max_new_tokens=10)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        decode.generate(net, [[1], []], max_new_tokens=1)
    with pytest.raises(ValueError, match="prompts"):
        decode.generate(net, [[CFG.vocab_size]], max_new_tokens=1)
    with pytest.raises(ValueError, match="stop_sequences"):
        decode.generate(net, [[1]], max_new_tokens=1, stop_sequences=[[]])


def test_score_continuations_matches_manual_log_softmax(net, greedy):
    contexts = [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    continuations = [[3, 4], [200], greedy[2][:4]]
    scores = decode.score_continuations(net, contexts, continuations, batch_size=2)
    for ctx, cont, (logprob, n, is_greedy) in zip(contexts, continuations, scores):
        seq = ctx + cont
        logp = np.asarray(jax.nn.log_softmax(_forward(net, jnp.array([seq[:-1]]))[0]))
        expected = sum(logp[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont))
        assert n == len(cont)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert is_greedy == all(
            int(np.argmax(logp[len(ctx) - 1 + i])) == tok for i, tok in enumerate(cont)
        )
    assert scores[2][2]  # the greedy continuation is greedy


def test_score_continuations_truncates_long_contexts_from_the_left(net):
    long_ctx = list(range(1, 100))
    ((logprob, n, _),) = decode.score_continuations(net, [long_ctx], [[7, 8]])
    ((expected, _, _),) = decode.score_continuations(
        net, [long_ctx[-(CFG.max_seq_len - 1) :]], [[7, 8]]
    )
    assert n == 2 and logprob == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="continuations"):
        decode.score_continuations(net, [[1]], [[1] * 65])
