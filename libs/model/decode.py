"""Generation with a KV cache, and continuation scoring, for a Transformer.

`generate` left-pads a batch of prompts of different lengths, fills the cache with one
prefill pass, then runs the whole sampling loop inside one jit (lax.while_loop, which
also stops early once every row is done). Left padding puts every row's next token in
the same cache slot, so one step serves the batch; padding slots have segment id 0 and
are never attended to, and each row's positions count from its own first token.

`score_continuations` gives the log-likelihood of a continuation after a context, as
multiple-choice and other likelihood-based evaluations need.

Shapes are padded to power-of-two buckets (batch, prompt length, new tokens, stop
sequences) so a handful of compilations serve a whole evaluation.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from libs.model.model import KVCache, Transformer

_NEVER = -2  # a stop-pattern entry no token equals: marks unused pattern rows
_ANY = -1  # a stop-pattern entry that matches anything: left fill of short patterns


def bucket(n: int, minimum: int = 16) -> int:
    """A length padded to the power of two (at least `minimum`) the compiled
    programs take: one compilation serves every length up to it."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def _check_tokens(name: str, rows: Sequence[Sequence[int]], vocab_size: int):
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"{name}[{i}]: must not be empty")
        bad = [t for t in row if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"{name}[{i}]: token ids {bad[:5]} outside [0, {vocab_size})")


def _choose(logits_bv, key, temperature, top_p, sample: bool, nucleus: bool):
    if not sample:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = logits_bv / temperature
    if nucleus:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        keep_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv < top_p
        threshold_b1 = jnp.min(jnp.where(keep_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv >= threshold_b1, logits_bv, -jnp.inf)
    return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)


# The program `generate` runs (and the eval compile tool compiles for a topology):
# the prefill of a bucketed batch of prompts, then the decode loop on the KV cache.
# A pure function of the parameters (nnx.split): only the new tokens come back, not
# a copy of every parameter as a jitted module would return.
@functools.partial(jax.jit, static_argnames=("graphdef", "new_len", "sample", "nucleus"))
def generate_batch(
    graphdef,
    state,
    tokens_bp,
    segment_ids_bp,
    positions_bp,
    next_pos_b,
    max_new,
    stops_sk,
    temperature,
    top_p,
    key,
    *,
    new_len,
    sample,
    nucleus,
):
    model: Transformer = nnx.merge(graphdef, state)
    b, p = tokens_bp.shape
    cache = KVCache.init(model.cfg, b, p + new_len, per_layer=True)
    layers = model.unstack_layers()  # sliced once, outside the loop (see model.forward)
    logits_bpv, cache = model.forward(
        tokens_bp,
        segment_ids_bt=segment_ids_bp,
        positions_bt=positions_bp,
        cache=cache,
        start=0,
        layers=layers,
    )
    ones_b1 = jnp.ones((b, 1), jnp.int32)

    def cond(s):
        step, _, _, _, done_b, _, _, _, _ = s
        return (step < max_new) & ~jnp.all(done_b)

    def body(s):
        step, cache, logits_bv, out_bn, done_b, n_gen_b, recent_bk, pos_b, key = s
        key, sub = jax.random.split(key)
        tok_b = _choose(logits_bv, sub, temperature, top_p, sample, nucleus)
        tok_b = jnp.where(done_b, 0, tok_b)
        out_bn = jax.lax.dynamic_update_slice(out_bn, tok_b[:, None], (0, step))
        n_gen_b = n_gen_b + (~done_b).astype(jnp.int32)
        recent_bk = jnp.concatenate([recent_bk[:, 1:], tok_b[:, None]], axis=1)
        match_bs = jnp.all(
            (stops_sk[None] == _ANY) | (stops_sk[None] == recent_bk[:, None, :]), axis=-1
        )
        done_b = done_b | jnp.any(match_bs, axis=-1)
        logits_b1v, cache = model.forward(
            tok_b[:, None],
            segment_ids_bt=ones_b1,
            positions_bt=pos_b[:, None],
            cache=cache,
            start=p + step,
            layers=layers,
        )
        return (
            step + 1,
            cache,
            logits_b1v[:, 0],
            out_bn,
            done_b,
            n_gen_b,
            recent_bk,
            pos_b + 1,
            key,
        )

    init = (
        jnp.int32(0),
        cache,
        logits_bpv[:, -1],
        jnp.zeros((b, new_len), jnp.int32),
        jnp.zeros((b,), bool),
        jnp.zeros((b,), jnp.int32),
        jnp.full((b, stops_sk.shape[1]), _ANY, jnp.int32),
        next_pos_b,
        key,
    )
    final = jax.lax.while_loop(cond, body, init)
    return final[3], final[5]


def stop_patterns(stop_sequences) -> np.ndarray:
    """Stop sequences right-aligned in a bucketed [num, k] array (see _ANY, _NEVER)."""
    k = bucket(max((len(s) for s in stop_sequences), default=1), 1)
    num = bucket(len(stop_sequences), 1)
    stops_sk = np.full((num, k), _NEVER, np.int32)
    for i, seq in enumerate(stop_sequences):
        stops_sk[i] = _ANY
        stops_sk[i, k - len(seq) :] = seq
    return stops_sk


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_sequences: Sequence[Sequence[int]] = (),
    rng: jax.Array | None = None,
    min_rows: int = 1,
) -> list[list[int]]:
    """New tokens for each prompt: greedy when temperature == 0, else (nucleus) sampling.

    A row stops after max_new_tokens or as soon as its output ends with one of
    `stop_sequences` (token-id sequences shared by all rows); that stop sequence is
    stripped from the returned tokens. The batch is padded to at least `min_rows`
    rows (the devices a data-parallel batch is split over).
    """
    cfg = model.cfg
    if not prompts:
        return []
    _check_tokens("prompts", prompts, cfg.vocab_size)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
    stop_sequences = [list(map(int, s)) for s in stop_sequences]
    if any(len(s) == 0 for s in stop_sequences):
        raise ValueError("stop_sequences: must not contain an empty sequence")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"max_new_tokens: prompt of {longest} tokens + {max_new_tokens} new tokens "
            f"exceeds max_seq_len {cfg.max_seq_len}"
        )
    if max_new_tokens == 0:
        return [[] for _ in prompts]

    b, p = bucket(max(len(prompts), min_rows), 1), bucket(longest)
    rows = list(prompts) + [prompts[0]] * (b - len(prompts))  # filler rows, discarded
    tokens_bp = np.zeros((b, p), np.int32)
    segment_ids_bp = np.zeros((b, p), np.int32)
    positions_bp = np.zeros((b, p), np.int32)
    for i, row in enumerate(rows):
        tokens_bp[i, p - len(row) :] = row
        segment_ids_bp[i, p - len(row) :] = 1
        positions_bp[i, p - len(row) :] = np.arange(len(row))
    next_pos_b = np.array([len(r) for r in rows], np.int32)

    out_bn, n_gen_b = generate_batch(
        *nnx.split(model),
        tokens_bp,
        segment_ids_bp,
        positions_bp,
        next_pos_b,
        jnp.int32(max_new_tokens),
        stop_patterns(stop_sequences),
        jnp.float32(max(temperature, 1e-6)),
        jnp.float32(top_p),
        jax.random.key(0) if rng is None else rng,
        new_len=bucket(max_new_tokens),
        sample=temperature > 0,
        nucleus=top_p < 1,
    )
    out_bn, n_gen_b = np.asarray(out_bn), np.asarray(n_gen_b)
    results = []
    for i in range(len(prompts)):
        new = out_bn[i, : n_gen_b[i]].tolist()
        cut = len(new)
        for seq in stop_sequences:  # the earliest-starting stop that ends the output
            if len(seq) <= len(new) and new[len(new) - len(seq) :] == seq:
                cut = min(cut, len(new) - len(seq))
        results.append(new[:cut])
    return results


@nnx.jit
def _score(model: Transformer, tokens_bt, segment_ids_bt, targets_bt, mask_bt):
    logits_btv = model(tokens_bt, segment_ids_bt=segment_ids_bt)
    logprobs_btv = jax.nn.log_softmax(logits_btv, axis=-1)
    target_lp_bt = jnp.take_along_axis(logprobs_btv, targets_bt[..., None], axis=-1)[..., 0]
    greedy_bt = (jnp.argmax(logits_btv, axis=-1) == targets_bt) | (mask_bt == 0)
    return jnp.sum(target_lp_bt * mask_bt, axis=-1), jnp.all(greedy_bt, axis=-1)


def score_continuations(
    model: Transformer,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
) -> list[tuple[float, int, bool]]:
    """(sum of log p(continuation | context), its token count, whether greedy) per pair.

    `is_greedy` says every continuation token is the argmax given what precedes it. A
    pair longer than max_seq_len keeps its continuation and the end of its context.
    Memory grows with batch_size * length * vocab_size (the full logits); lower
    batch_size for large vocabularies.
    """
    cfg = model.cfg
    if len(contexts) != len(continuations):
        raise ValueError(f"continuations: {len(continuations)} given for {len(contexts)} contexts")
    if not contexts:
        return []
    _check_tokens("contexts", contexts, cfg.vocab_size)
    _check_tokens("continuations", continuations, cfg.vocab_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")

    items = []  # (inputs, targets, continuation length)
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        if len(cont) > cfg.max_seq_len:
            raise ValueError(
                f"continuations[{i}]: {len(cont)} tokens exceed max_seq_len {cfg.max_seq_len}"
            )
        seq = list(ctx) + list(cont)
        inputs, targets = seq[:-1][-cfg.max_seq_len :], seq[1:][-cfg.max_seq_len :]
        items.append((inputs, targets, len(cont)))

    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))  # similar lengths
    b = min(batch_size, bucket(len(items), 1))
    results: list = [None] * len(items)
    for first in range(0, len(order), b):
        chunk = order[first : first + b]
        t = min(bucket(len(items[chunk[0]][0])), cfg.max_seq_len)
        tokens_bt = np.zeros((b, t), np.int32)
        segment_ids_bt = np.zeros((b, t), np.int32)
        targets_bt = np.zeros((b, t), np.int32)
        mask_bt = np.zeros((b, t), np.float32)
        for row, i in enumerate(chunk):
            inputs, targets, n_cont = items[i]
            n = len(inputs)
            tokens_bt[row, :n] = inputs
            segment_ids_bt[row, :n] = 1
            targets_bt[row, :n] = targets
            mask_bt[row, n - n_cont : n] = 1
        sums_b, greedy_b = _score(model, tokens_bt, segment_ids_bt, targets_bt, mask_bt)
        sums_b, greedy_b = np.asarray(sums_b), np.asarray(greedy_b)
        for row, i in enumerate(chunk):
            results[i] = (float(sums_b[row]), items[i][2], bool(greedy_b[row]))
    return results
