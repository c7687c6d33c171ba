"""Tests for model.py: shapes, causality, document isolation, KV cache, loss, remat."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.model import model
from libs.model.presets import get_preset

CFG = dataclasses.replace(get_preset("tiny"), vocab_size=512, max_seq_len=64)


@pytest.fixture(scope="module")
def net():
    return model.Transformer(CFG, rngs=nnx.Rngs(0))


@nnx.jit
def forward(net, tokens_bt, segment_ids_bt=None):
    return net(tokens_bt, segment_ids_bt=segment_ids_bt)


def _tokens(shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size, jnp.int32)


def test_shapes_and_float32_logits(net):
    assert forward(net, _tokens((3, 16))).shape == (3, 16, CFG.vocab_size)
    bf16 = model.Transformer(dataclasses.replace(CFG, dtype="bfloat16"), rngs=nnx.Rngs(0))
    logits = forward(bf16, _tokens((2, 8)))
    assert logits.dtype == jnp.float32
    assert bf16.embed_vd[...].dtype == jnp.float32  # params stay float32
    # bf16 compute stays close to f32 compute on the same weights.
    np.testing.assert_allclose(logits, forward(net, _tokens((2, 8))), atol=0.1)


def test_untied_model_has_its_own_output_projection():
    untied = dataclasses.replace(CFG, tie_embeddings=False)
    assert model.param_count(untied) == model.param_count(CFG) + CFG.vocab_size * CFG.d_model
    out = forward(model.Transformer(untied, rngs=nnx.Rngs(0)), _tokens((1, 8)))
    assert out.shape == (1, 8, CFG.vocab_size)


def test_causal(net):
    tokens = _tokens((2, 24))
    changed = tokens.at[:, 15].set((tokens[:, 15] + 1) % CFG.vocab_size)
    a, b = forward(net, tokens), forward(net, changed)
    np.testing.assert_array_equal(a[:, :15], b[:, :15])
    assert not np.allclose(a[:, 15:], b[:, 15:])


def test_no_attention_across_documents(net):
    # One packed row: document A (10 tokens), document B (14), padding (8).
    segment_ids = jnp.array([[1] * 10 + [2] * 14 + [0] * 8])
    tokens = _tokens((1, 32))
    other_a = tokens.at[:, :10].set(_tokens((1, 10), seed=1))
    a, b = forward(net, tokens, segment_ids), forward(net, other_a, segment_ids)
    np.testing.assert_allclose(a[:, 10:24], b[:, 10:24], atol=1e-6)
    assert not np.allclose(a[:, :10], b[:, :10])
    # B's positions restart, so packed B scores exactly like B alone.
    alone = forward(net, tokens[:, 10:24])
    np.testing.assert_allclose(a[:, 10:24], alone, atol=1e-5)


def test_rotary_positions_are_relative(net):
    tokens = _tokens((1, 8))
    at = nnx.jit(lambda net, positions_bt: net(tokens, positions_bt=positions_bt))
    plain = at(net, jnp.arange(8)[None])
    np.testing.assert_allclose(at(net, jnp.arange(8)[None] + 5), plain, atol=1e-4)
    assert not np.allclose(at(net, jnp.zeros((1, 8), jnp.int32)), plain, atol=1e-3)


@pytest.mark.parametrize("unrolled", [False, True])
def test_cached_decoding_matches_full_forward(net, unrolled):
    tokens = _tokens((2, 20))
    full = forward(net, tokens)
    cache = model.KVCache.init(CFG, 2, 32, per_layer=unrolled)

    @nnx.jit
    def step(net, t, cache, start):
        layers = net.unstack_layers() if unrolled else None
        return net.forward(t, cache=cache, start=start, layers=layers)

    logits, cache = step(net, tokens[:, :12], cache, 0)
    chunks = [logits]
    for i in range(12, 20):
        logits, cache = step(net, tokens[:, i : i + 1], cache, i)
        chunks.append(logits)
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), full, atol=1e-4)


def test_cross_entropy_matches_manual():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    loss, per_token = model.cross_entropy(logits, targets, mask)
    manual = -np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(per_token, manual * np.asarray(mask), rtol=1e-5)
    np.testing.assert_allclose(loss, (manual * np.asarray(mask)).sum() / 8, rtol=1e-5)
    unmasked, _ = model.cross_entropy(logits, targets)
    np.testing.assert_allclose(unmasked, manual.mean(), rtol=1e-5)


def _loss_and_grads(cfg, tokens):
    net = model.Transformer(cfg, rngs=nnx.Rngs(0))

    @nnx.jit
    def f(net):
        return nnx.value_and_grad(
            lambda net: model.cross_entropy(net(tokens[:, :-1]), tokens[:, 1:])[0]
        )(net)

    return f(net)


def test_remat_changes_nothing_but_memory():
    tokens = _tokens((2, 17))
    loss, grads = _loss_and_grads(CFG, tokens)
    for policy in ("full", "save_dots"):
        loss_r, grads_r = _loss_and_grads(dataclasses.replace(CFG, remat=policy), tokens)
        np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads_r)


def _masked_loss_and_grads(cfg, tokens, segment_ids, mask, chunked):
    net = model.Transformer(cfg, rngs=nnx.Rngs(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss(net):
        if chunked:
            per_token = net.token_losses(inputs, targets, segment_ids_bt=segment_ids)
        else:
            per_token = model.token_losses(net(inputs, segment_ids_bt=segment_ids), targets)
        return (per_token * mask).sum() / mask.sum(), per_token

    (value, per_token), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(net)
    return value, per_token, grads


@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_chunked_loss_equals_full_logits_loss(chunk):
    """Per-token losses (hence per-source losses) and gradients are those of the whole
    [b, T, V] logits, for chunks that divide T (4), that do not (5 -> 4) and T itself."""
    tokens = _tokens((3, 17))
    segment_ids = jnp.asarray(np.repeat([[1] * 6 + [2] * 7 + [0] * 3], 3, axis=0))
    mask = (segment_ids > 0).astype(jnp.float32)
    full = _masked_loss_and_grads(CFG, tokens, segment_ids, mask, chunked=False)
    cfg = dataclasses.replace(CFG, logits_chunk=chunk)
    chunked = _masked_loss_and_grads(cfg, tokens, segment_ids, mask, chunked=True)
    np.testing.assert_allclose(full[0], chunked[0], rtol=1e-6)
    np.testing.assert_allclose(full[1], chunked[1], rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), full[2], chunked[2])


def test_adamw_steps_reduce_loss():
    net = model.Transformer(CFG, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(net, optax.adamw(1e-2), wrt=nnx.Param)
    tokens = _tokens((4, 17))

    @nnx.jit
    def step(net, opt):
        loss, grads = nnx.value_and_grad(
            lambda net: model.cross_entropy(net(tokens[:, :-1]), tokens[:, 1:])[0]
        )(net)
        opt.update(net, grads)
        return loss

    losses = [float(step(net, opt)) for _ in range(8)]
    assert losses[-1] < losses[0] - 1.0


def test_params_carry_logical_axes():
    abstract = model.abstract_model(CFG)
    meta = nnx.state(abstract).blocks.attention.qkv_dchk.get_metadata()
    assert meta["out_sharding"] == ("layers", "embed", None, "heads", "kv")
    assert nnx.state(abstract).embed_vd.get_metadata()["out_sharding"] == ("vocab", "embed")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12))
def test_document_positions(segment_ids):
    expected, run = [], 0
    for i, s in enumerate(segment_ids):
        run = run + 1 if i and segment_ids[i - 1] == s else 0
        expected.append(run)
    got = model.document_positions(np.array([segment_ids]))[0]
    assert got.tolist() == expected
