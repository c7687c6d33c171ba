"""Log-likelihood of many (context, continuation) token pairs: packed, bucketed scoring.

`score_packed` is what the evaluator uses; `score_each` is its reference, one pair per
forward pass and nothing shared, which the tests hold the fast path equal to.

How `score_packed` saves work over padding every pair of a batch to the longest:

- packing: pairs are laid end to end in rows of `row_len` tokens (first fit, longest
  first), each pair its own segment, so attention never crosses pairs and positions
  restart at each pair (the model's `document_positions`); a row holds several short
  pairs instead of one pair and padding;
- continuation positions only: the output projection and the softmax over the
  vocabulary, most of a small model's FLOPs, run only at the positions that predict a
  continuation token, gathered from the final hidden states, not at every position;
- length bucketing: row length and rows per call are rounded up to powers of two,
  the gathered positions to a finer geometric series (1.25x), so one evaluation
  compiles a handful of programs and reuses them;
- logits in chunks: the gathered positions' logits exist a chunk of positions at a
  time (`positions_per_chunk`: about 2^29 logits, 2 GiB of float32, whatever the
  vocabulary), so scoring every position of long rows at a 256k vocabulary does
  not hold [positions, vocabulary] at once.

Under a mesh (jax.set_mesh) rows and gathered positions are split over the mesh's
batch axes (data-parallel); the parameters stay where the model's sharding put
them.

Each pair's log-probabilities are summed on the host in float64, so a pair's score
does not depend on which other pairs shared its forward pass beyond the model's own
float32 arithmetic.

A pair longer than the model's window keeps its continuation and the end of its
context, as libs/model's `score_continuations` does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Pair = tuple[Sequence[int], Sequence[int]]  # (context token ids, continuation token ids)


def _pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def _fine_bucket(n: int, align: int = 64) -> int:
    """n rounded up to a bucket of a geometric series of ratio 1.25 (multiples of
    `align`): at most a quarter wasted, where powers of two waste up to half, and
    still few distinct sizes (shapes to compile)."""
    bucket = align
    while bucket < n:
        bucket = -(-int(bucket * 1.25) // align) * align
    return bucket


@dataclasses.dataclass(frozen=True)
class _Item:
    inputs: list[int]  # the model's input tokens: (context + continuation)[:-1], windowed
    targets: list[int]  # the next token at each input position
    n_cont: int  # the last n_cont targets are the continuation


def _items(model, pairs: Sequence[Pair]) -> list[_Item]:
    max_len = model.cfg.max_seq_len
    items = []
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError(f"pairs[{i}]: context and continuation must not be empty")
        if len(cont) > max_len:
            raise ValueError(f"pairs[{i}]: {len(cont)} continuation tokens exceed {max_len}")
        seq = [int(t) for t in ctx] + [int(t) for t in cont]
        bad = [t for t in seq if not 0 <= t < model.cfg.vocab_size]
        if bad:
            raise ValueError(f"pairs[{i}]: token ids {bad[:5]} outside the vocabulary")
        items.append(_Item(seq[:-1][-max_len:], seq[1:][-max_len:], len(cont)))
    return items


LOGITS_PER_CHUNK = 2**29


def positions_per_chunk(vocab_size: int) -> int:
    """Gathered positions whose logits exist at once: a power of two >= 64 with
    about LOGITS_PER_CHUNK logits."""
    return max(64, 1 << max(0, (LOGITS_PER_CHUNK // vocab_size).bit_length() - 1))


def positions_bucket(n: int, chunk: int) -> int:
    """Gathered positions padded: a fine bucket, a multiple of `chunk` past one chunk."""
    n_pos = _fine_bucket(n)
    return n_pos if n_pos <= chunk else -(-n_pos // chunk) * chunk


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def score_rows(graphdef, state, tokens_bt, segment_ids_bt, flat_pos_n, targets_n, *, chunk):
    """log p(target) and whether it is the argmax, at each gathered position: the
    model (nnx.split into graphdef and state) over rows, logits `chunk` positions at
    a time. A pure function of the parameters: nothing but the scores comes back."""
    model = nnx.merge(graphdef, state)
    b, t = tokens_bt.shape
    h_btd, _ = model.hidden(tokens_bt, segment_ids_bt=segment_ids_bt)
    h_nd = h_btd.reshape(b * t, -1)[flat_pos_n]
    n, d = h_nd.shape
    chunk = min(chunk, n)

    def one_chunk(xs):
        h_cd, targets_c = xs
        # Each position a row of its own ([c, 1, d]): the output projection and the
        # softmax split over the mesh's batch axes like the rows (data-parallel).
        logits_cv = model.logits(h_cd[:, None])[:, 0]
        target_c = jnp.take_along_axis(logits_cv, targets_c[:, None], axis=-1)[:, 0]
        lp_c = target_c - jax.nn.logsumexp(logits_cv, axis=-1)
        return lp_c, jnp.argmax(logits_cv, axis=-1) == targets_c

    lp_kc, hit_kc = jax.lax.map(
        one_chunk, (h_nd.reshape(n // chunk, chunk, d), targets_n.reshape(n // chunk, chunk))
    )
    return lp_kc.reshape(n), hit_kc.reshape(n)


def _pack(items: list[_Item], row_len: int) -> list[list[int]]:
    """Rows of item indices, first fit by decreasing length (each row <= row_len)."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i].inputs))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(items[i].inputs)
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(row_len - n)
    return rows


def score_packed(
    model,
    pairs: Sequence[Pair],
    *,
    tokens_per_call: int = 8192,
    min_rows: int = 1,
    chunk: int = 0,
) -> list[tuple[float, int, bool]]:
    """(sum of log p(continuation | context), continuation tokens, whether greedy) per
    pair, as libs/model's `score_continuations` gives them, computed packed (module
    docstring). `tokens_per_call` bounds rows x row length of one forward pass;
    `min_rows`: a call's rows are padded to at least this many (the devices a
    data-parallel batch is split over); `chunk`: gathered positions whose logits
    exist at once (0: positions_per_chunk of the vocabulary)."""
    if not pairs:
        return []
    chunk = chunk or positions_per_chunk(model.cfg.vocab_size)
    graphdef, state = nnx.split(model)
    items = _items(model, pairs)
    max_len = model.cfg.max_seq_len
    longest = max(len(it.inputs) for it in items)
    # Row length: the longest pair's bucket, at least 128 so that short pairs share rows.
    row_len = min(max_len, _pow2(longest, 128))
    rows = _pack(items, row_len)
    rows_per_call = max(1, tokens_per_call // row_len)
    results: list = [None] * len(items)
    for first in range(0, len(rows), rows_per_call):
        call_rows = rows[first : first + rows_per_call]
        b = _pow2(max(len(call_rows), min_rows))
        tokens_bt = np.zeros((b, row_len), np.int32)
        segment_ids_bt = np.zeros((b, row_len), np.int32)
        flat_pos, targets, pair_of, slots = [], [], [], []
        for r, row in enumerate(call_rows):
            at = 0
            for seg, i in enumerate(row, start=1):
                it = items[i]
                n = len(it.inputs)
                tokens_bt[r, at : at + n] = it.inputs
                segment_ids_bt[r, at : at + n] = seg
                first_cont = at + n - it.n_cont
                flat_pos.extend(r * row_len + p for p in range(first_cont, at + n))
                targets.extend(it.targets[n - it.n_cont :])
                pair_of.extend([len(slots)] * it.n_cont)
                slots.append(i)
                at += n
        # The gathered positions decide the output projection's cost: a fine bucket.
        n_pos = positions_bucket(len(flat_pos), chunk)
        pad = n_pos - len(flat_pos)
        lp_n, hit_n = score_rows(
            graphdef,
            state,
            tokens_bt,
            segment_ids_bt,
            np.asarray(flat_pos + [0] * pad, np.int32),
            np.asarray(targets + [0] * pad, np.int32),
            chunk=chunk,
        )
        # Summed per pair on the host in float64: a float32 sum of a long continuation
        # rounds by ~1e-5 relative, which would make a pair's score depend on the
        # order its positions were summed in, i.e. on what else shared its call.
        n = len(flat_pos)
        pair_n = np.asarray(pair_of, np.int64)
        lp_n = np.asarray(lp_n, np.float64)[:n]
        sums = np.bincount(pair_n, lp_n, minlength=len(slots))
        missed = np.bincount(pair_n, ~np.asarray(hit_n)[:n], minlength=len(slots))
        for slot, i in enumerate(slots):
            results[i] = (float(sums[slot]), items[i].n_cont, bool(missed[slot] == 0))
    return results


@nnx.jit
def _score_one(model, tokens_1t, targets_1t, mask_1t):
    logits_1tv = model(tokens_1t)
    logprobs_1tv = jax.nn.log_softmax(logits_1tv, axis=-1)
    lp_1t = jnp.take_along_axis(logprobs_1tv, targets_1t[..., None], axis=-1)[..., 0]
    greedy_1t = (jnp.argmax(logits_1tv, axis=-1) == targets_1t) | (mask_1t == 0)
    return jnp.sum(lp_1t * mask_1t), jnp.all(greedy_1t)


def score_each(model, pairs: Sequence[Pair]) -> list[tuple[float, int, bool]]:
    """The reference: each pair alone in one unpadded row, full logits (slow)."""
    out = []
    for it in _items(model, pairs):
        n = len(it.inputs)
        mask = np.zeros((1, n), np.float32)
        mask[0, n - it.n_cont :] = 1
        lp, greedy = _score_one(
            model,
            np.asarray([it.inputs], np.int32),
            np.asarray([it.targets], np.int32),
            mask,
        )
        out.append((float(lp), it.n_cont, bool(greedy)))
    return out
