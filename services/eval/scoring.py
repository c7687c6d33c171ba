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
  compiles a handful of programs and reuses them.

Each pair's log-probabilities are summed on the host in float64, so a pair's score
does not depend on which other pairs shared its forward pass beyond the model's own
float32 arithmetic.

A pair longer than the model's window keeps its continuation and the end of its
context, as libs/model's `score_continuations` does.
"""

from __future__ import annotations

import dataclasses
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


@nnx.jit
def _score_rows(model, tokens_bt, segment_ids_bt, flat_pos_n, targets_n):
    """log p(target) and whether it is the argmax, at each gathered position."""
    b, t = tokens_bt.shape
    h_btd, _ = model.hidden(tokens_bt, segment_ids_bt=segment_ids_bt)
    h_nd = h_btd.reshape(b * t, -1)[flat_pos_n]
    # Each gathered position a row of its own ([n, 1, d]), so that the output projection
    # and softmax split over the mesh's batch axes like the rows (data-parallel).
    logits_nv = model.logits(h_nd[:, None])[:, 0]
    logprobs_nv = jax.nn.log_softmax(logits_nv, axis=-1)
    lp_n = jnp.take_along_axis(logprobs_nv, targets_n[:, None], axis=-1)[:, 0]
    return lp_n, jnp.argmax(logits_nv, axis=-1) == targets_n


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
    model, pairs: Sequence[Pair], *, tokens_per_call: int = 8192, min_rows: int = 1
) -> list[tuple[float, int, bool]]:
    """(sum of log p(continuation | context), continuation tokens, whether greedy) per
    pair, as libs/model's `score_continuations` gives them, computed packed (module
    docstring). `tokens_per_call` bounds rows x row length of one forward pass;
    `min_rows`: a call's rows are padded to at least this many (the devices a
    data-parallel batch is split over)."""
    if not pairs:
        return []
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
        n_pos = _fine_bucket(len(flat_pos))
        pad = n_pos - len(flat_pos)
        lp_n, hit_n = _score_rows(
            model,
            tokens_bt,
            segment_ids_bt,
            np.asarray(flat_pos + [0] * pad, np.int32),
            np.asarray(targets + [0] * pad, np.int32),
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
