"""The packed batch a trainer consumes: one shard of one global step.

Shared by the library (mixture.py builds them), the wire format (wire.py)
and the client (client.py), so a batch read in-process and one received
over gRPC are the same type and compare equal.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One shard of global step `step`; every array has shape
    [batch_size, seq_len] (arrays received over gRPC are read-only views).

    tokens: int32 input ids.
    targets: int32 next-token ids: targets[b, t] is the token that follows
        tokens[b, t] in its document (also at the end of a row or of a
        source's run within a row).
    segment_ids: int32 document index within the row, from 1 (0 would be
        padding). A document cut at a row end continues in another row as a
        new segment. Attention must stay within a segment.
    positions: int32 position within the segment, from 0.
    loss_mask: uint8, 1 where targets[b, t] counts in the loss: 0 at each
        document's <eos> (its target would belong to another document) and
        on padding.
    source_ids: uint8 index into source_names of each token's source.
    source_names: the mixture's sources (every source named in any stage,
        in order of first appearance).
    tokens_before: tokens served by the whole mixture (all shards) before
        this step.
    stage: index of the mixture stage this step belongs to.
    epochs: epochs of each source (indexed like source_names) consumed by
        the whole mixture after this step.
    """

    step: int
    shard_index: int
    tokens: np.ndarray
    targets: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    loss_mask: np.ndarray
    source_ids: np.ndarray
    source_names: tuple[str, ...]
    tokens_before: int
    stage: int
    epochs: tuple[float, ...]

    ARRAYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask", "source_ids")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.tokens.size

    def source_token_counts(self) -> dict[str, int]:
        """Tokens of each source in this shard."""
        counts = np.bincount(self.source_ids.ravel(), minlength=len(self.source_names))
        return {name: int(c) for name, c in zip(self.source_names, counts)}

    def __eq__(self, other) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        scalars = ("step", "shard_index", "source_names", "tokens_before", "stage", "epochs")
        return all(getattr(self, f) == getattr(other, f) for f in scalars) and all(
            getattr(self, a).dtype == getattr(other, a).dtype
            and np.array_equal(getattr(self, a), getattr(other, a))
            for a in self.ARRAYS
        )

    __hash__ = None


@dataclasses.dataclass(frozen=True, eq=False)
class PackedBatch:
    """A Batch as its tokens and runs; `unpack()` derives the rest. This is
    what the library assembles (BatchReader.batch is packed(...).unpack()),
    and what travels in the PACKED encoding, so the derivation runs in one
    place, on whichever side of the wire unpacks.

    tokens: int32 [batch_size, seq_len].
    run_starts: int32 flat indices (row * seq_len + column) where runs start,
        ascending; a run is a stretch of one row holding consecutive tokens
        of one source's stream, and every row starts with one.
    run_sources: uint8 source index of each run.
    run_last_targets: int32 target of each run's last token.
    eos_id: the token that ends every document.
    """

    step: int
    shard_index: int
    tokens: np.ndarray
    run_starts: np.ndarray
    run_sources: np.ndarray
    run_last_targets: np.ndarray
    eos_id: int
    source_names: tuple[str, ...]
    tokens_before: int
    stage: int
    epochs: tuple[float, ...]

    ARRAYS = ("tokens", "run_starts", "run_sources", "run_last_targets")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def unpack(self) -> Batch:
        R, L = self.tokens.shape
        n = R * L
        tok = self.tokens.reshape(n)
        starts = self.run_starts.astype(np.int64)
        run_len = np.empty_like(starts)
        np.subtract(starts[1:], starts[:-1], out=run_len[:-1])
        run_len[-1] = n - starts[-1]
        source_ids = np.repeat(self.run_sources.astype(np.uint8, copy=False), run_len)
        # Within a run the target is the next token; at a run's end, its own.
        targets = np.empty(n, np.int32)
        targets[:-1] = tok[1:]
        targets[starts + run_len - 1] = self.run_last_targets
        # Segments start at each run and after each <eos>.
        is_eos = tok == self.eos_id
        flags = np.zeros(n, bool)
        flags[starts] = True
        flags[1:] |= is_eos[:-1]
        first = np.flatnonzero(flags)
        seg_len = np.empty_like(first)
        np.subtract(first[1:], first[:-1], out=seg_len[:-1])
        seg_len[-1] = n - first[-1]
        positions = np.arange(n, dtype=np.int32) - np.repeat(first.astype(np.int32), seg_len)
        row_first = np.searchsorted(first, np.arange(R) * L)
        number = np.arange(first.size, dtype=np.int32) - row_first[first // L].astype(np.int32) + 1
        return Batch(
            step=self.step,
            shard_index=self.shard_index,
            tokens=self.tokens,
            targets=targets.reshape(R, L),
            segment_ids=np.repeat(number, seg_len).reshape(R, L),
            positions=positions.reshape(R, L),
            loss_mask=(~is_eos).view(np.uint8).reshape(R, L),
            source_ids=source_ids.reshape(R, L),
            source_names=self.source_names,
            tokens_before=self.tokens_before,
            stage=self.stage,
            epochs=self.epochs,
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, PackedBatch):
            return NotImplemented
        scalars = (
            "step",
            "shard_index",
            "eos_id",
            "source_names",
            "tokens_before",
            "stage",
            "epochs",
        )
        return all(getattr(self, f) == getattr(other, f) for f in scalars) and all(
            np.array_equal(getattr(self, a), getattr(other, a)) for a in self.ARRAYS
        )

    __hash__ = None


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def keep_freed_memory(trim_bytes: int = 1 << 30, mmap_bytes: int = 32 << 20) -> bool:
    """Makes glibc malloc keep freed memory for reuse instead of handing it
    back to the OS at once.

    Batches are large, short-lived allocations (~0.6 MB per 16 x 2048 batch,
    and as much again for the gRPC message). By default glibc unmaps or
    trims such blocks on free, so every batch re-faults fresh zeroed pages,
    which cost more than assembling it: measured here, in-process assembly
    went from 0.56 to 0.18 ms per batch and a client's receive cost from
    ~0.45 to ~0.27 ms of CPU per batch. Process-wide (the memory stays with
    the process, bounded by its peak use); the data binary and the benchmark
    call it, a client may (DataClient(tune_malloc=True)). Returns False where
    mallopt is unavailable (not glibc).
    """
    global _tuned
    if _tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_bytes)) == 1
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_bytes)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok
