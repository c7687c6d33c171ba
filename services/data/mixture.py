"""Mixtures of corpus sources, and the packed batches that serve them.

A Mixture is a list of stages, each a set of source weights that holds until
a token count (a cooldown is a last stage with other weights). Serving is
block-deterministic:

* A block is one global step: B rows x L tokens. Within a stage, source s
  gets the same quota q_s of every block: the B*L slots split by the
  stage's normalised weights with largest-remainder rounding (exact
  rational arithmetic), so proportions are exact in tokens per block.
* A stage ends at the first block boundary at or after its `until_tokens`.
* Each source is read as one endless stream: epoch e is the source's
  documents in the order of a permutation seeded by (seed, source name, e),
  each ending in <eos>, epochs back to back. Because quotas are constant
  within a stage, the stream offset of source s before block k is a closed
  form (sum over stages of q_s x blocks of that stage before k), so any
  block can be assembled directly: no replay, restarts are exact, and a
  stage boundary continues every stream where it stopped (no document of a
  source is repeated or skipped within an epoch).
* Block layout: source 0's q_0 stream tokens, then source 1's, ..., fill
  the B*L slots in order and are cut into B rows. A permutation seeded by
  (seed, step) deals the rows to the shards (shard i of n gets B/n of them,
  kept in block order), so the shards cover the block exactly once and each
  sees every source; a single shard holds the block in order.
* Packing: a row holds consecutive runs of stream tokens; a document cut
  by a row end or a source switch continues in the next row holding that
  source's stream, as a new segment. Segment ids count documents within the
  row from 1, positions restart at 0 per segment, targets are the true next
  token of the document, and the loss mask is 0 at <eos> (its target would
  be the next document). Every slot holds a real token, so there is no
  padding (pad_id never appears; were it used, its mask would be 0).

The reader assembles a PackedBatch (tokens plus runs: where each stretch
of one source's stream starts in a row, its source, and its last token's
target) and derives the rest in PackedBatch.unpack, which the client also
uses when batches travel packed.

batch(k, shard i of n) is a pure function of (corpus, mixture, seed, B, L,
k, i, n). Names, not indices, key a source's permutation, so adding a
source to a corpus or a mixture leaves the others' document order alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import fractions
import hashlib
import math
import queue
import threading
import weakref
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from libs import errors
from services.data.batch import Batch, PackedBatch

MAX_GLOBAL_BATCH = 65536
MIN_SEQ_LEN = 8
MAX_SEQ_LEN = 1 << 20
# One shard of one step travels as one message: 18 bytes a token must stay
# far below the 256 MB message limit.
MAX_SHARD_TOKENS = 1 << 22  # 512 x 8192, the paper's whole global batch
# Token counts are int64; steps whose token offset would not fit are refused.
MAX_TOKEN_OFFSET = 1 << 62
# A source id travels as one uint8 (data.proto: source_ids, run_sources) indexing
# the batch's source_names, so a mixture can name as many sources as a uint8 has
# values. The trainer sizes its per-source loss slots by this.
MAX_SOURCES = np.iinfo(np.uint8).max + 1


@dataclasses.dataclass(frozen=True)
class SourceWeight:
    source: str
    weight: float


@dataclasses.dataclass(frozen=True)
class Stage:
    """Weights that hold until `until_tokens` tokens (from the start of the
    mixture, all shards) have been served; 0: until the end (last stage)."""

    weights: tuple[SourceWeight, ...]
    until_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Named sources with weights, optionally staged; max_epochs > 0 caps how
    many epochs of any source may be served."""

    stages: tuple[Stage, ...]
    name: str = ""
    max_epochs: float = 0.0

    @classmethod
    def of(
        cls, weights: Mapping[str, float], *, name: str = "", max_epochs: float = 0.0
    ) -> "Mixture":
        """A one-stage mixture, e.g. Mixture.of({"text": 0.75, "code": 0.25})."""
        return cls(stages=(_stage(weights, 0),), name=name, max_epochs=max_epochs)

    @classmethod
    def staged(
        cls,
        stages: Sequence[tuple[int, Mapping[str, float]]],
        *,
        name: str = "",
        max_epochs: float = 0.0,
    ) -> "Mixture":
        """Stages as (until_tokens, weights) pairs; until_tokens 0 = open-ended."""
        return cls(
            stages=tuple(_stage(w, until) for until, w in stages), name=name, max_epochs=max_epochs
        )

    def source_names(self) -> tuple[str, ...]:
        """Every source named in any stage, in order of first appearance."""
        return tuple(dict.fromkeys(w.source for s in self.stages for w in s.weights))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "max_epochs": self.max_epochs,
            "stages": [
                {"until_tokens": s.until_tokens, "weights": {w.source: w.weight for w in s.weights}}
                for s in self.stages
            ],
        }

    @classmethod
    def from_json(cls, d: Mapping) -> "Mixture":
        """From {"name", "max_epochs", "stages": [{"until_tokens", "weights":
        {source: weight} or [{"source", "weight"}]}]}, or a bare
        {source: weight} mapping for one stage."""
        if "stages" not in d:
            return cls.of({k: float(v) for k, v in d.items()})
        stages = []
        for s in d["stages"]:
            w = s.get("weights", {})
            pairs = w.items() if isinstance(w, Mapping) else ((x["source"], x["weight"]) for x in w)
            stages.append(
                Stage(
                    tuple(SourceWeight(k, float(v)) for k, v in pairs),
                    int(s.get("until_tokens", 0)),
                )
            )
        return cls(
            stages=tuple(stages), name=d.get("name", ""), max_epochs=float(d.get("max_epochs", 0.0))
        )

    @classmethod
    def parse(cls, text: str) -> "Mixture":
        """From "text=0.75,code=0.25" (one stage)."""
        weights = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"mixture {text!r}: expected source=weight, got {part!r}")
            weights[name.strip()] = float(value)
        return cls.of(weights)


def _stage(weights: Mapping[str, float], until: int) -> Stage:
    return Stage(
        weights=tuple(SourceWeight(k, float(v)) for k, v in weights.items()),
        until_tokens=int(until),
    )


# ---------------------------------------------------------------------------
# Validation. Fields are named as in the request (StreamBatchesRequest /
# ValidateMixtureRequest), so the servicer passes the errors on unchanged.


def validate(mixture: Mixture, available: Mapping[str, int]) -> None:
    """Checks `mixture` against the corpus (`available`: source name -> its
    token count). Raises errors.InvalidArgument / errors.NotFound naming the field."""
    if not mixture.stages:
        raise errors.InvalidArgument("mixture.stages", "at least one stage is required")
    me = mixture.max_epochs
    if not isinstance(me, (int, float)) or not math.isfinite(me) or me < 0:
        raise errors.InvalidArgument(
            "mixture.max_epochs", f"must be a finite number >= 0 (0: no cap), got {me!r}"
        )
    named: set[str] = set()
    for i, stage in enumerate(mixture.stages):
        for j, sw in enumerate(stage.weights):
            named.add(sw.source)
            if len(named) > MAX_SOURCES:
                raise errors.InvalidArgument(
                    f"mixture.stages[{i}].weights[{j}].source",
                    f"{sw.source!r} is distinct source number {len(named)}; a mixture may "
                    f"name at most {MAX_SOURCES} (source ids are uint8)",
                )
    previous = 0
    last = len(mixture.stages) - 1
    for i, stage in enumerate(mixture.stages):
        f = f"mixture.stages[{i}]"
        until = stage.until_tokens
        if until < 0:
            raise errors.InvalidArgument(f"{f}.until_tokens", f"must be >= 0, got {until}")
        if until == 0 and i != last:
            raise errors.InvalidArgument(
                f"{f}.until_tokens", "0 (open-ended) is allowed only for the last stage"
            )
        if until and until <= previous:
            raise errors.InvalidArgument(
                f"{f}.until_tokens",
                f"must be > the previous stage's until_tokens ({previous}), got {until}",
            )
        previous = until or previous
        if not stage.weights:
            raise errors.InvalidArgument(f"{f}.weights", "at least one source weight is required")
        seen: dict[str, int] = {}
        total = 0.0
        for j, sw in enumerate(stage.weights):
            g = f"{f}.weights[{j}]"
            if not sw.source:
                raise errors.InvalidArgument(f"{g}.source", "must name a source")
            if sw.source in seen:
                raise errors.InvalidArgument(
                    f"{g}.source", f"{sw.source!r} already appears at weights[{seen[sw.source]}]"
                )
            seen[sw.source] = j
            w = sw.weight
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise errors.InvalidArgument(f"{g}.weight", f"must be a finite number, got {w!r}")
            if w < 0:
                raise errors.InvalidArgument(f"{g}.weight", f"must be >= 0, got {w!r}")
            if sw.source not in available:
                known = ", ".join(sorted(available)) or "none"
                raise errors.NotFound(
                    f"{g}.source", f"unknown source {sw.source!r} (known: {known})"
                )
            if w > 0 and available[sw.source] == 0:
                raise errors.InvalidArgument(
                    f"{g}.source", f"source {sw.source!r} has no tokens; give it weight 0"
                )
            total += w
        if total <= 0:
            raise errors.InvalidArgument(
                f"{f}.weights", "all weights are 0; at least one must be positive"
            )
        if not math.isfinite(total):
            raise errors.InvalidArgument(
                f"{f}.weights", "the weights' sum overflows; use smaller weights"
            )


def validate_geometry(
    global_batch_size: int, seq_len: int, shard_index: int = 0, num_shards: int = 1
) -> None:
    """Checks the batch shape and shard fields of a request."""
    if not 1 <= global_batch_size <= MAX_GLOBAL_BATCH:
        raise errors.InvalidArgument(
            "global_batch_size", f"must be in [1, {MAX_GLOBAL_BATCH}], got {global_batch_size}"
        )
    if not MIN_SEQ_LEN <= seq_len <= MAX_SEQ_LEN:
        raise errors.InvalidArgument(
            "seq_len", f"must be in [{MIN_SEQ_LEN}, {MAX_SEQ_LEN}], got {seq_len}"
        )
    if num_shards < 1:
        raise errors.InvalidArgument("num_shards", f"must be >= 1, got {num_shards}")
    if global_batch_size % num_shards:
        raise errors.InvalidArgument(
            "num_shards", f"must divide global_batch_size ({global_batch_size}), got {num_shards}"
        )
    if not 0 <= shard_index < num_shards:
        raise errors.InvalidArgument(
            "shard_index", f"must be in [0, num_shards={num_shards}), got {shard_index}"
        )
    shard_tokens = global_batch_size // num_shards * seq_len
    if shard_tokens > MAX_SHARD_TOKENS:
        raise errors.InvalidArgument(
            "global_batch_size",
            f"a shard of {global_batch_size // num_shards} x {seq_len} = {shard_tokens} tokens is over the "
            f"{MAX_SHARD_TOKENS} tokens one message may carry; use more shards or shorter sequences",
        )


def largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    """Splits `total` into integers proportional to `weights` (largest
    remainder; ties to the earlier entry). Exact rational arithmetic, so the
    split is the same on every machine."""
    ws = [fractions.Fraction(w) for w in weights]
    s = sum(ws)
    exact = [w * total / s for w in ws]
    floors = [math.floor(x) for x in exact]
    left = total - sum(floors)
    order = sorted(range(len(ws)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return np.asarray(floors, np.int64)


def _weights_vector(stage: Stage, names: Sequence[str]) -> list[float]:
    by_name = {w.source: w.weight for w in stage.weights}
    return [by_name.get(n, 0.0) for n in names]


def token_budget_default(mixture: Mixture) -> int:
    """The end of the last bounded stage (0 if no stage is bounded)."""
    return max((s.until_tokens for s in mixture.stages), default=0)


def plan(
    mixture: Mixture, available: Mapping[str, int], token_budget: int = 0
) -> tuple[int, dict[str, tuple[int, float]]]:
    """Per-source (tokens, epochs) over `token_budget` tokens (0: the end of
    the last bounded stage), splitting each stage's tokens by largest
    remainder. Serving splits per block, so served counts differ from this
    plan by at most one token per source per block. Raises errors.InvalidArgument if the
    plan exceeds max_epochs."""
    validate(mixture, available)
    if token_budget < 0:
        raise errors.InvalidArgument("token_budget", f"must be >= 0, got {token_budget}")
    budget = token_budget or token_budget_default(mixture)
    names = mixture.source_names()
    tokens = np.zeros(len(names), np.int64)
    start = 0
    for stage in mixture.stages:
        end = stage.until_tokens or budget
        n = max(0, min(end, budget) - start)
        if n:
            tokens += largest_remainder(_weights_vector(stage, names), n)
        start = max(start, end)
        if start >= budget:
            break
    out = {}
    for name, t in zip(names, tokens):
        size = available[name]
        out[name] = (int(t), float(t) / size if size else 0.0)
    _check_epochs(
        mixture,
        {n: e for n, (_, e) in out.items()},
        f"a budget of {budget} tokens",
        errors.InvalidArgument,
    )
    return budget, out


def _check_epochs(
    mixture: Mixture, epochs: Mapping[str, float], where: str, error=errors.InvalidArgument
) -> None:
    cap = mixture.max_epochs
    if cap > 0:
        for name, e in epochs.items():
            if e > cap * (1 + 1e-12):
                raise error(
                    "mixture.max_epochs",
                    f"source {name!r} would be read for {e:.4g} epochs within {where}, over the cap of {cap:g}",
                )


class Schedule:
    """The block plan of a mixture for one block size: per-stage quotas and
    the closed form of each source's stream offset."""

    def __init__(self, mixture: Mixture, block_tokens: int):
        self.names = mixture.source_names()
        self.block_tokens = block_tokens
        stages = mixture.stages
        self.quotas = np.stack(
            [largest_remainder(_weights_vector(s, self.names), block_tokens) for s in stages]
        )
        self.start_block = np.zeros(len(stages), np.int64)
        self.end_block: list[int | None] = []
        start = 0
        for i, s in enumerate(stages):
            self.start_block[i] = start
            if s.until_tokens:
                end = max(start, -(-s.until_tokens // block_tokens))
                self.end_block.append(end)
                start = end
            else:
                self.end_block.append(None)
        # A fully bounded mixture ends with its last stage.
        self.num_blocks: int | None = self.end_block[-1]

    def stage_of(self, k: int) -> int:
        for i, end in enumerate(self.end_block):
            if end is None or k < end:
                return i
        return len(self.end_block) - 1

    def consumed(self, k: int) -> np.ndarray:
        """Tokens of each source served in blocks [0, k), all shards."""
        out = np.zeros(len(self.names), np.int64)
        for i, end in enumerate(self.end_block):
            start = int(self.start_block[i])
            stop = k if end is None else min(k, end)
            if stop > start:
                out += self.quotas[i] * (stop - start)
        return out


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def source_stream(corpus, name: str, seed: int) -> _SourceStream:
    """The stream of (corpus, source, seed), one per Corpus object: readers of
    the same corpus and seed (streams of a data service, at any step, for any
    trainer shard) share its epochs' permutations instead of each keeping its
    own."""
    with _SHARED_LOCK:
        streams = _SHARED.setdefault(corpus, {})
        stream = streams.get((name, seed))
        if stream is None:
            stream = streams[(name, seed)] = _SourceStream(corpus, name, seed)
        return stream


class _SourceStream:
    """One source read as an endless stream of epochs of shuffled documents."""

    _CACHE = 4  # epochs whose permutation is kept

    def __init__(self, corpus, name: str, seed: int):
        self.tokens = corpus.tokens(name)
        off = corpus.offsets(name)
        self.doc_starts = off[:-1]
        self.lengths = np.diff(off)
        self.size = int(off[-1])
        self.entropy = [seed & 0xFFFFFFFFFFFFFFFF, _name_key(name)]
        self._epochs: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()  # streams on several threads share this

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream offset of each document of epoch e, in order, plus the end;
        file offset of each document)."""
        with self._lock:
            hit = self._epochs.get(e)
            if hit is not None:
                self._epochs.move_to_end(e)
                return hit
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.entropy + [e])))
            perm = rng.permutation(self.lengths.size)
            starts = np.zeros(perm.size + 1, np.int64)
            np.cumsum(self.lengths[perm], out=starts[1:])
            value = (starts, self.doc_starts[perm])
            self._epochs[e] = value
            if len(self._epochs) > self._CACHE:
                self._epochs.popitem(last=False)
            return value

    def spans(self, position: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Where stream tokens [position, position + n) lie in the source's
        tokens: (start, length) of each document piece, in stream order."""
        starts_out, lengths_out = [], []
        done = 0
        while done < n:
            e, o = divmod(position + done, self.size)
            take = min(n - done, self.size - o)
            starts, files = self.epoch(e)
            j = int(starts.searchsorted(o, "right")) - 1
            j_end = int(starts.searchsorted(o + take, "left"))
            seg_start = starts[j:j_end].copy()
            seg_start[0] = o
            seg_end = starts[j + 1 : j_end + 1].copy()
            seg_end[-1] = o + take
            starts_out.append(files[j:j_end] + (seg_start - starts[j:j_end]))
            lengths_out.append(seg_end - seg_start)
            done += take
        if len(starts_out) == 1:
            return starts_out[0], lengths_out[0]
        return np.concatenate(starts_out), np.concatenate(lengths_out)

    def read(self, position: int, out: np.ndarray, spans=None) -> None:
        """Fills `out` with stream tokens [position, position + len(out));
        `spans`: their `spans(position, len(out))`, when already computed."""
        starts, lengths = spans if spans is not None else self.spans(position, out.size)
        if starts.size <= 8:
            # Few documents: slice copies (numpy scalars made Python ints once).
            at = 0
            for f, n in zip(starts.tolist(), lengths.tolist()):
                out[at : at + n] = self.tokens[f : f + n]
                at += n
        else:
            # Many short documents: one gather over the index vector.
            first = np.cumsum(lengths) - lengths  # each piece's place in `out`
            out[:] = self.tokens[np.repeat(starts - first, lengths) + np.arange(out.size)]

    def token_at(self, position: int) -> int:
        e, o = divmod(position, self.size)
        starts, files = self.epoch(e)
        j = int(starts.searchsorted(o, "right")) - 1
        return int(self.tokens[int(files[j]) + o - int(starts[j])])


class BatchReader:
    """Assembles the batches of one shard of a mixture.

    `batch(step)` is a pure function of the constructor's arguments and
    `step`; readers for different shards of the same (corpus, mixture, seed,
    B, L) together cover each global block exactly once.
    """

    def __init__(
        self,
        corpus,
        mixture: Mixture,
        *,
        seed: int,
        global_batch_size: int,
        seq_len: int,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        validate_geometry(global_batch_size, seq_len, shard_index, num_shards)
        available = {s.name: s.num_tokens for s in corpus.sources}
        validate(mixture, available)
        self.corpus = corpus
        self.mixture = mixture
        self.seed = int(seed)
        self.global_batch_size = global_batch_size
        self.seq_len = seq_len
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.rows = global_batch_size // num_shards
        self.schedule = Schedule(mixture, global_batch_size * seq_len)
        self.names = self.schedule.names
        self.sizes = np.array([available[n] for n in self.names], np.int64)
        self._streams = [source_stream(corpus, n, self.seed) for n in self.names]
        self.eos_id = corpus.eos_id
        # A gs:// corpus read by range: each step's blocks are fetched at once,
        # and the next step's in the background (corpus.Corpus.warm).
        self._by_range = bool(getattr(corpus, "by_range", False))
        self._prefetch_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._prefetch_pending: concurrent.futures.Future | None = None
        self._prefetch_step = -1
        self._prefetch_lock = threading.Lock()
        self._flat_starts = np.concatenate(
            [
                np.zeros((len(self.schedule.quotas), 1), np.int64),
                np.cumsum(self.schedule.quotas, axis=1),
            ],
            axis=1,
        )

    @property
    def num_steps(self) -> int | None:
        """Steps of a fully bounded mixture; None if the last stage is open-ended."""
        return self.schedule.num_blocks

    def epochs_after(self, step: int) -> np.ndarray:
        consumed = self.schedule.consumed(step + 1)
        return np.where(self.sizes > 0, consumed / np.maximum(self.sizes, 1), 0.0)

    def check_request(self, start_step: int, num_steps: int) -> None:
        """Checks a streaming request: step range, and the epoch cap over the
        requested steps (or, for an endless request, up to the end of the last
        bounded stage; later steps are checked as they are served)."""
        if start_step < 0:
            raise errors.InvalidArgument("start_step", f"must be >= 0, got {start_step}")
        if num_steps < 0:
            raise errors.InvalidArgument(
                "num_steps", f"must be >= 0 (0: until cancelled), got {num_steps}"
            )
        if (start_step + 1) * self.schedule.block_tokens > MAX_TOKEN_OFFSET:
            raise errors.InvalidArgument(
                "start_step",
                f"{start_step} steps of {self.schedule.block_tokens} tokens overflow the token count",
            )
        end = self.num_steps
        if end is not None and start_step >= end:
            raise errors.OutOfRange(
                "start_step", f"the mixture ends after {end} steps, got {start_step}"
            )
        if self.mixture.max_epochs > 0:
            last = (
                start_step + num_steps
                if num_steps
                else (end or -(-token_budget_default(self.mixture) // self.schedule.block_tokens))
            )
            if end is not None:
                last = min(last, end)
            if last > 0:
                epochs = dict(zip(self.names, self.epochs_after(last - 1).tolist()))
                _check_epochs(
                    self.mixture,
                    epochs,
                    f"{last} steps of {self.schedule.block_tokens} tokens",
                    errors.InvalidArgument,
                )

    def shard_rows(self, step: int) -> np.ndarray:
        """The block rows this shard holds at `step`, ascending: a seeded
        (seed, step) permutation of the block's rows, cut into num_shards
        equal parts. One shard (n = 1) holds every row in block order."""
        if self.num_shards == 1:
            return np.arange(self.global_batch_size)
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([self.seed & 0xFFFFFFFFFFFFFFFF, 0xB10C, step]))
        )
        order = rng.permutation(self.global_batch_size)
        return np.sort(order[self.shard_index * self.rows : (self.shard_index + 1) * self.rows])

    def batch(self, step: int) -> Batch:
        """This shard's part of global step `step`."""
        return self.packed(step).unpack()

    def packed(self, step: int) -> PackedBatch:
        """This shard's part of global step `step`, as tokens and runs."""
        if step < 0:
            raise errors.InvalidArgument("start_step", f"must be >= 0, got {step}")
        if self.num_steps is not None and step >= self.num_steps:
            raise errors.OutOfRange(
                "start_step", f"the mixture ends after {self.num_steps} steps, got {step}"
            )
        if (step + 1) * self.schedule.block_tokens > MAX_TOKEN_OFFSET:
            raise errors.OutOfRange("start_step", f"step {step}: the token count would overflow")
        epochs = self.epochs_after(step)
        if self.mixture.max_epochs > 0:
            _check_epochs(
                self.mixture,
                dict(zip(self.names, epochs.tolist())),
                f"step {step}",
                errors.OutOfRange,
            )
        L, R = self.seq_len, self.rows
        stage = self.schedule.stage_of(step)
        rows = self.shard_rows(step)
        reads = self._reads(step, rows)
        spans = [None] * len(reads)
        if self._by_range:
            prefetched = self._wait_for_prefetch(step)
            if prefetched is not None and prefetched[0] == reads:
                spans = self._warm(reads, prefetched[1])  # its spans, computed once
            else:
                spans = self._warm(reads)

        tokens = np.empty(R * L, np.int32)
        run_starts: list[int] = []
        run_sources: list[int] = []
        run_last: list[int] = []
        for (s, pos, c, m), read_spans in zip(reads, spans):
            stream = self._streams[s]
            stream.read(pos, tokens[c : c + m], read_spans)
            # Cut at row ends into runs.
            cut = c
            while cut < c + m:
                end = min(c + m, (cut // L + 1) * L)
                run_starts.append(cut)
                run_sources.append(s)
                run_last.append(int(tokens[end]) if end < c + m else stream.token_at(pos + m))
                cut = end
        if self._by_range and (self.num_steps is None or step + 1 < self.num_steps):
            # Step k + 1's blocks arrive while step k is sent and trained on.
            self._prefetch(step + 1)
        return PackedBatch(
            step=step,
            shard_index=self.shard_index,
            tokens=tokens.reshape(R, L),
            run_starts=np.asarray(run_starts, np.int32),
            run_sources=np.asarray(run_sources, np.uint8),
            run_last_targets=np.asarray(run_last, np.int32),
            eos_id=self.eos_id,
            source_names=tuple(self.names),
            tokens_before=step * self.schedule.block_tokens,
            stage=stage,
            epochs=tuple(epochs.tolist()),
        )

    def _reads(self, step: int, rows: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(source index, stream position, place in the shard's flat tokens, count)
        of each read that assembles this shard's `rows` of `step`: consecutive
        block rows form runs of flat slots, and each (run, source) overlap is one
        read of the source's stream."""
        L = self.seq_len
        flat = self._flat_starts[self.schedule.stage_of(step)]
        before = self.schedule.consumed(step)
        reads = []
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        S = len(flat) - 1
        for row_run in np.split(rows, breaks):
            lo, hi = int(row_run[0]) * L, (int(row_run[-1]) + 1) * L
            out0 = int(rows.searchsorted(row_run[0])) * L - lo  # flat slot -> output index
            s = int(flat.searchsorted(lo, "right")) - 1
            while s < S and flat[s] < hi:
                a, b = max(lo, int(flat[s])), min(hi, int(flat[s + 1]))
                if b > a:
                    reads.append((s, int(before[s]) + a - int(flat[s]), a + out0, b - a))
                s += 1
        return reads

    def _warm(self, reads, read_spans=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Fetches every block `reads` touch at once (a corpus read by range;
        blocks still in the cache are not fetched again); returns each read's
        spans, for the reads themselves. `read_spans`: those spans, when a
        warm-up of the same reads computed them."""
        by_source: dict[int, list] = collections.defaultdict(list)
        if read_spans is None:
            read_spans = [self._streams[s].spans(pos, m) for s, pos, _, m in reads]
        for (s, pos, _, m), spans in zip(reads, read_spans):
            by_source[s].append(spans)
            # The token after the read (its last run's target) too.
            by_source[s].append(self._streams[s].spans(pos + m, 1))
        self.corpus.warm(
            (
                self.names[s],
                np.concatenate([a for a, _ in spans]),
                np.concatenate([a + n for a, n in spans]),
            )
            for s, spans in by_source.items()
        )
        return read_spans

    def _prefetch(self, step: int) -> None:
        """Warms `step` on a background thread, unless the last warm-up is still
        running (a consumer faster than storage gains nothing from a queue)."""
        with self._prefetch_lock:
            if self._prefetch_pool is None:
                self._prefetch_pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="block-prefetch"
                )
            if self._prefetch_pending is None or self._prefetch_pending.done():
                self._prefetch_pending = self._prefetch_pool.submit(self._warm_step, step)
                self._prefetch_step = step

    def _wait_for_prefetch(self, step: int):
        """Waits for a warm-up of `step` under way, rather than read its blocks
        twice; returns its (reads, spans), or None (none, or it failed)."""
        with self._prefetch_lock:
            pending = self._prefetch_pending if self._prefetch_step == step else None
        return pending.result() if pending is not None else None

    def _warm_step(self, step: int):
        try:
            reads = self._reads(step, self.shard_rows(step))
            return reads, self._warm(reads)
        except Exception:  # noqa: BLE001  (a warm-up only: the step's own reads raise)
            return None

    def iterate(
        self, start_step: int = 0, num_steps: int = 0, *, read_ahead: int = 0, packed: bool = False
    ) -> Iterator[Batch] | Iterator[PackedBatch]:
        """Batches from `start_step`: `num_steps` of them, or (0) until the
        end of a bounded mixture, forever otherwise (PackedBatch with
        `packed`). With read_ahead > 0 a thread assembles up to that many
        batches ahead of the consumer."""
        self.check_request(start_step, num_steps)
        stop = start_step + num_steps if num_steps else None
        if self.num_steps is not None:
            stop = self.num_steps if stop is None else min(stop, self.num_steps)

        def steps() -> Iterator[int]:
            k = start_step
            while stop is None or k < stop:
                yield k
                k += 1

        make = self.packed if packed else self.batch
        batches = (make(k) for k in steps())
        return prefetch(batches, read_ahead) if read_ahead > 0 else batches


_DONE = object()


def prefetch(items: Iterable, depth: int) -> Iterator:
    """Iterates `items` on a background thread, at most `depth` ahead of the
    consumer. Exceptions reach the consumer; closing the iterator stops the
    thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for x in items:
                if not put((x, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # handed to the consumer
            put((None, e))

    thread = threading.Thread(target=produce, daemon=True, name="batch-read-ahead")
    thread.start()
    try:
        while True:
            x, err = q.get()
            if err is not None:
                raise err
            if x is _DONE:
                return
            yield x
    finally:
        stop.set()
