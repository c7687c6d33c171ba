"""The sharded corpus build: many input files, many workers, resumable.

`build_sharded(specs, out, config, workers=W)` builds the same corpus as a
pure function of the sources and the config, whatever W, and after a kill
picks up where it stopped. Its stages, each a set of independent tasks that
commit a marker when done (a marker present: the task is not redone):

1. clean (one task per input shard, i.e. per input file): read the
   documents, drop those sharing a 13-gram with a benchmark (decontam.py),
   set aside the held-out slice (corpus.is_heldout, unchanged), and write
   the rest as JSON lines with a 128-bit content digest each;
2. exact (one task per digest bucket): across every source at once, a
   document whose digest was seen earlier is dropped ("exact");
3. tokenizer: trained once on a sample drawn from every source's shards in
   order (`tokenizer_sample_chars` in all), or loaded; a vocabulary smaller
   than asked is refused (tokenizer.train). It trains on the head as soon
   as the shards of its sample are cleaned, while the workers clean the
   rest: stage 1 starts each source's first shards first;
4. encode (per shard): tokens and offsets of the documents left, and each
   document's MinHash signature over token 5-grams, cut into LSH bands;
5. near (one task per band bucket): documents sharing a band are near
   duplicates ("near_duplicate"; Jaccard about 0.8 and above with the
   default 14 bands of 8 rows); a group keeps one document;
6. write (per shard): the final shard files, up to the source's token cap.

The keep rule, for exact and near duplicates alike: the document with the
smallest key (source in the recipe's order, then shard, then position in
the shard) is kept, the others dropped. No stage holds every document: a
task holds one shard, or one bucket of digests or band hashes (their number
grows with the corpus: `records_per_bucket`); only the duplicate groups are
gathered in one place.

Layout written (local folder or gs://, through libs/storage):

    manifest.json                         format code_lab.corpus/2, written last
    tokenizer.json
    sources/<name>/shard-00000.tokens.u32 the shard's documents + <eos>, back to back
    sources/<name>/shard-00000.offsets.i64
    sources/<name>/heldout.jsonl
    _build/...                            stage outputs and markers; removed at the end

Workers are Ray tasks (`workers` CPUs of a local Ray cluster, or the cluster
`ray_address` names); `workers=0` runs every task in this process.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from libs import errors, storage
from services.data import corpus as corpus_lib
from services.data import decontam
from services.data import filters as filters_lib
from services.data import sources as sources_lib

FORMAT = corpus_lib.SHARDED_FORMAT
WORK = "_build"
NGRAM = 5  # tokens per MinHash shingle
BANDS, ROWS = 14, 8  # LSH: 112 hash functions


@dataclasses.dataclass(frozen=True)
class Shard:
    source: int  # index of the source in the recipe
    index: int  # shard index within the source
    name: str  # the source's name
    input: sources_lib.Input  # what this shard reads
    filters: filters_lib.Filters = filters_lib.Filters()  # the source's rules

    @property
    def tag(self) -> str:
        return f"{self.name}/{self.index:05d}"

    def key_base(self) -> int:
        return (self.source << 52) | (self.index << 28)


def plan_shards(specs: Sequence[sources_lib.SourceSpec]) -> list[Shard]:
    """One shard per input file of a builder input (json, parquet, text, ...);
    one per input otherwise (hub datasets, registered readers, inputs read
    only up to max_chars or grouped across records)."""
    shards = []
    for s, spec in enumerate(specs):
        pieces: list[sources_lib.Input] = []
        for inp in spec.inputs:
            splittable = (
                inp.path in sources_lib.LOCAL_BUILDERS
                and inp.data_files
                and not inp.max_chars
                and not inp.group_chars
            )
            if not splittable:
                pieces.append(inp)
                continue
            for f in _expand(inp):
                pieces.append(dataclasses.replace(inp, data_files=(f,), exclude=()))
        if len(pieces) >= 1 << 24:
            raise errors.InvalidArgument(
                f"sources[{s}].inputs", f"{len(pieces)} files; at most {1 << 24} a source"
            )
        rules = filters_lib.Filters.from_json(spec.filters, field=f"sources.{spec.name}.filters")
        shards += [Shard(s, i, spec.name, inp, rules) for i, inp in enumerate(pieces)]
    return shards


def expand_files(pattern: str) -> list[str]:
    """The files one local or URI glob matches ([] when none)."""
    return _expand(sources_lib.Input(path="json", data_files=(pattern,), missing_ok=True))


def _expand(inp: sources_lib.Input) -> list[str]:
    """The input's files: local globs as sources.expand_files does; URIs
    (gs://, hf://, any fsspec protocol) globbed by their filesystem."""
    local = [p for p in inp.data_files if "://" not in p]
    files = (
        sources_lib.expand_files(local, inp.exclude, inp.shuffle_files, inp.missing_ok)
        if local
        else []
    )
    for pattern in inp.data_files:
        if "://" not in pattern:
            continue
        protocol = pattern.split("://", 1)[0] + "://"
        if storage.is_gcs(pattern):
            fs, path = storage.filesystem(), pattern[len(protocol) :]
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(pattern)
        matched = sorted(
            uri
            for uri in (protocol + k.removeprefix(protocol) for k in fs.glob(path))
            if not any(fnmatch.fnmatch(uri, x) for x in inp.exclude)
        )
        if not matched and not inp.missing_ok:
            raise FileNotFoundError(f"no files match {pattern!r}")
        files += matched
    return files


# ---------------------------------------------------------------------------
# Stage tasks. Each reads and writes through libs/storage and ends by writing
# its marker (a JSON object) with storage.write_text, which is atomic.


def _work(root: str, *parts: str) -> str:
    return storage.join(root, WORK, *parts)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _load_npy(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def clean_task(root: str, shard: Shard, index, config: corpus_lib.BuildConfig) -> dict:
    """Stage 1 for one shard (see the module docstring)."""
    report = decontam.Report(index)
    kept, heldout = [], []
    counts = {"read": 0, "heldout": 0}
    for text in decontam.iter_clean(report, shard.name, _read(shard, counts)):
        if config.heldout_per_mille and corpus_lib.is_heldout(text, config.heldout_per_mille):
            counts["heldout"] += 1
            if len(heldout) < config.heldout_max_documents:
                heldout.append(text)
            continue
        kept.append(text)
    base = _work(root, "clean", shard.tag)
    storage.write_text(base + ".jsonl", "".join(json.dumps(t) + "\n" for t in kept))
    storage.write_text(base + ".heldout.jsonl", "".join(json.dumps(t) + "\n" for t in heldout))
    digests = np.frombuffer(b"".join(map(_digest, kept)), np.uint64).reshape(-1, 2)
    storage.write_bytes(base + ".digests.npy", _npy_bytes(digests))
    overlap = report.sources.get(shard.name, decontam.SourceOverlap())
    marker = {
        "documents": len(kept),
        "chars": sum(map(len, kept)),
        "dropped": {
            "heldout": counts["heldout"],
            "contaminated": overlap.dropped,
            **{k: v for k, v in counts.items() if k.startswith("filter:")},
        },
        "read": counts["read"],
        "overlap": {
            "documents": overlap.documents,
            "per_benchmark": overlap.documents_per_benchmark,
            "matched": {k: sorted(v) for k, v in overlap.matched.items()},
        },
    }
    storage.write_text(base + ".json", json.dumps(marker))
    return marker


def _read(shard: Shard, counts: dict):
    """The shard's documents that pass its source's filters; a document
    failing one is counted as "filter:<rule>"."""
    active = bool(shard.filters)
    for text in sources_lib.iter_documents(shard.input):
        counts["read"] += 1
        reason = shard.filters.check(text) if active else None
        if reason:
            counts["filter:" + reason] = counts.get("filter:" + reason, 0) + 1
            continue
        yield text


def _docs(uri: str) -> list[str]:
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line]


def _bucket_of(values: np.ndarray, buckets: int) -> np.ndarray:
    return (values % np.uint64(buckets)).astype(np.int64)


def exact_task(root: str, shards: Sequence[Shard], bucket: int, buckets: int) -> dict:
    """Stage 2 for one bucket of digests: the keys of exact duplicates."""
    keys, his, los = [], [], []
    for shard in shards:
        d = _load_npy(_work(root, "clean", shard.tag) + ".digests.npy")
        mine = np.flatnonzero(_bucket_of(d[:, 0], buckets) == bucket)
        keys.append(np.uint64(shard.key_base()) + mine.astype(np.uint64))
        his.append(d[mine, 0])
        los.append(d[mine, 1])
    dropped = _duplicates_by_value(np.concatenate(keys), np.concatenate(his), np.concatenate(los))
    storage.write_bytes(_work(root, "exact", f"{bucket:05d}.npy"), _npy_bytes(dropped))
    marker = {"dropped": int(dropped.size)}
    storage.write_text(_work(root, "exact", f"{bucket:05d}.json"), json.dumps(marker))
    return marker


def _duplicates_by_value(keys: np.ndarray, *values: np.ndarray) -> np.ndarray:
    """Keys of records whose values equal an earlier (smaller-key) record's."""
    if keys.size == 0:
        return np.zeros(0, np.uint64)
    order = np.lexsort((keys,) + tuple(reversed(values)))
    same = np.ones(keys.size - 1, bool)
    for v in values:
        same &= v[order][1:] == v[order][:-1]
    return np.sort(keys[order][1:][same])


def _shard_keys(uris: Sequence[str], shard: Shard) -> np.ndarray:
    """Document indices within `shard` listed in the key files `uris`."""
    base, out = np.uint64(shard.key_base()), []
    for uri in uris:
        k = _load_npy(uri)
        mine = k[(k >> np.uint64(28)) == (base >> np.uint64(28))]
        out.append((mine - base).astype(np.int64))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _permutations(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The MinHash family: h_k(x) = a_k x + b_k mod 2^32 over 32-bit shingle
    hashes, a_k odd (a bijection of the 32-bit values). In 32-bit arithmetic
    it is twice as fast as 64-bit multiply-shift, and its estimate of a
    Jaccard similarity is as good (simulated: bias under a tenth of the
    standard error of 112 functions)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 1 << 31, BANDS * ROWS, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, BANDS * ROWS, dtype=np.uint64).astype(np.uint32)
    return a, b


_CHUNK = 1 << 14  # windows hashed at once (112 rows of 16k uint32: 7 MB)


def band_hashes(tokens: np.ndarray, offsets: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """[documents, BANDS] uint64: each document's MinHash signature over its
    token NGRAM-grams, one hash per band of ROWS rows. A document shorter than
    NGRAM tokens gets bands of its own (its key), matching nothing: only an
    exact copy of it is a duplicate, and the exact stage finds those."""
    a, b = _permutations()
    n_docs = offsets.size - 1
    lengths = np.diff(offsets)
    windows = np.maximum(lengths - NGRAM + 1, 0)
    t = tokens.astype(np.uint64)
    # Window starts of every document, never crossing a document's end.
    first = np.repeat(offsets[:-1] - np.concatenate([[0], np.cumsum(windows)[:-1]]), windows)
    starts = first + np.arange(first.size)
    h = t[starts] * np.uint64(0x9E3779B97F4A7C15)
    for j in range(1, NGRAM):
        h = (h ^ t[starts + j]) * np.uint64(0x100000001B3)
    x = ((h >> np.uint64(32)) ^ h).astype(np.uint32)
    # One row per hash function, the windows along it: each row is a
    # multiply, an add and a segmented min over contiguous memory.
    sig = np.full((BANDS * ROWS, n_docs), np.iinfo(np.uint32).max, np.uint32)
    ends = np.cumsum(windows)
    buf = np.empty((BANDS * ROWS, _CHUNK), np.uint32)
    d = 0
    while d < n_docs:  # whole documents at a time, about _CHUNK windows
        lo = ends[d - 1] if d else 0
        e = max(int(np.searchsorted(ends, lo + _CHUNK, "right")), d + 1)
        docs = np.arange(d, e)[windows[d:e] > 0]
        if docs.size:
            span = x[lo : ends[e - 1]]
            if span.size > buf.shape[1]:  # one document longer than a chunk
                buf = np.empty((BANDS * ROWS, span.size), np.uint32)
            part = buf[:, : span.size]
            np.multiply(a[:, None], span[None, :], out=part)
            part += b[:, None]
            seg = (ends[docs] - windows[docs]) - lo
            sig[:, docs] = np.minimum.reduceat(part, seg, axis=1)
        d = e
    rows = sig.T.reshape(n_docs, BANDS, ROWS)
    out = np.zeros((n_docs, BANDS), np.uint64)
    for r in range(ROWS):
        out = out * np.uint64(0x100000001B3) + rows[:, :, r].astype(np.uint64)
    short = windows == 0
    out[short] = keys[short, None] * np.uint64(BANDS) + np.arange(BANDS, dtype=np.uint64)
    return out


def encode_task(root: str, shard: Shard, tok_uri: str, exact: Sequence[str]) -> dict:
    """Stage 4 for one shard: tokens, offsets, keys and LSH bands of the
    documents the exact stage kept."""
    from services.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.Tokenizer(_hf_tokenizer(storage.read_text(tok_uri)))
    base = _work(root, "clean", shard.tag)
    texts = _docs(base + ".jsonl")
    drop = set(_shard_keys(exact, shard).tolist())
    keep = [i for i in range(len(texts)) if i not in drop]
    arrays = [np.zeros(0, corpus_lib.TOKEN_DTYPE)]
    lengths = np.zeros(len(keep), np.int64)
    eos = np.array([tok.eos_id], corpus_lib.TOKEN_DTYPE)
    for c in range(0, len(keep), 512):
        batch = [texts[i] for i in keep[c : c + 512]]
        for j, ids in enumerate(tok.encode_batch(batch)):
            arrays += [np.asarray(ids, corpus_lib.TOKEN_DTYPE), eos]
            lengths[c + j] = len(ids) + 1
    tokens = np.concatenate(arrays)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(corpus_lib.OFFSET_DTYPE)
    keys = np.uint64(shard.key_base()) + np.asarray(keep, np.uint64)
    # MinHash over the text's tokens, <eos> left out.
    bands = band_hashes(np.delete(tokens, offsets[1:] - 1), offsets - np.arange(offsets.size), keys)
    out = _work(root, "encoded", shard.tag)
    storage.write_bytes(out + ".tokens.npy", _npy_bytes(tokens))
    storage.write_bytes(out + ".offsets.npy", _npy_bytes(offsets))
    storage.write_bytes(out + ".keys.npy", _npy_bytes(keys))
    storage.write_bytes(out + ".bands.npy", _npy_bytes(bands))
    marker = {"documents": len(keep), "tokens": int(tokens.size), "exact": len(drop)}
    storage.write_text(out + ".json", json.dumps(marker))
    return marker


@functools.lru_cache(maxsize=1)
def _hf_tokenizer(text: str):
    """The tokenizer of this JSON, parsed once a process: a worker's encode
    tasks share it (and its cache of encoded words)."""
    import tokenizers

    return tokenizers.Tokenizer.from_str(text)


def near_task(root: str, shards: Sequence[Shard], band: int, bucket: int, buckets: int) -> dict:
    """Stage 5 for one (band, bucket): pairs (kept key, duplicate key) of
    documents sharing this band's hash, the smallest key first."""
    keys, values = [], []
    for shard in shards:
        out = _work(root, "encoded", shard.tag)
        bands = _load_npy(out + ".bands.npy")
        if bands.size == 0:
            continue
        column = bands[:, band]
        mine = _bucket_of(column >> np.uint64(7), buckets) == bucket
        keys.append(_load_npy(out + ".keys.npy")[mine])
        values.append(column[mine])
    pairs = np.zeros((0, 2), np.uint64)
    if keys:
        k, v = np.concatenate(keys), np.concatenate(values)
        order = np.lexsort((k, v))
        k, v = k[order], v[order]
        first = np.concatenate([[True], v[1:] != v[:-1]])
        group_min = k[first][np.cumsum(first) - 1]
        pairs = np.stack([group_min[~first], k[~first]], axis=1)
    name = f"{band:02d}-{bucket:05d}"
    storage.write_bytes(_work(root, "near", name + ".npy"), _npy_bytes(pairs))
    storage.write_text(_work(root, "near", name + ".json"), json.dumps({"pairs": len(pairs)}))
    return {"pairs": len(pairs)}


def near_duplicates(pair_files: Sequence[np.ndarray]) -> np.ndarray:
    """Keys dropped as near duplicates: in each group of documents joined by
    a shared band, all but the smallest key (union-find over the pairs)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for pairs in pair_files:
        for a, b in pairs.tolist():
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array(sorted(k for k in parent if find(k) != k), np.uint64)


def write_task(root: str, shard: Shard, near_uri: str, limit_docs: int | None) -> dict:
    """Stage 6 for one shard: its final token and offset files (near
    duplicates out, at most `limit_docs` documents: the source's cap)."""
    out = _work(root, "encoded", shard.tag)
    tokens, offsets = _load_npy(out + ".tokens.npy"), _load_npy(out + ".offsets.npy")
    drop = _shard_keys([near_uri], shard)
    keys = _load_npy(out + ".keys.npy")
    index = (keys - np.uint64(shard.key_base())).astype(np.int64)
    keep = np.flatnonzero(~np.isin(index, drop))
    over_cap = 0
    if limit_docs is not None and keep.size > limit_docs:
        over_cap = int(keep.size - limit_docs)
        keep = keep[:limit_docs]
    lengths = (offsets[1:] - offsets[:-1])[keep]
    idx = np.repeat(offsets[:-1][keep] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    final = tokens[idx + np.arange(idx.size)].astype(corpus_lib.TOKEN_DTYPE)
    final_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(corpus_lib.OFFSET_DTYPE)
    rel = f"sources/{shard.name}/shard-{shard.index:05d}"
    storage.write_bytes(storage.join(root, rel + ".tokens.u32"), final.tobytes())
    storage.write_bytes(storage.join(root, rel + ".offsets.i64"), final_offsets.tobytes())
    entry = {
        "tokens_file": rel + ".tokens.u32",
        "offsets_file": rel + ".offsets.i64",
        "num_tokens": int(final.size),
        "num_documents": int(keep.size),
        "sha256": hashlib.sha256(final.tobytes() + final_offsets.tobytes()).hexdigest(),
        "dropped": {"near_duplicate": int(np.isin(index, drop).sum()), "over_cap": over_cap},
    }
    storage.write_text(_work(root, "write", shard.tag + ".json"), json.dumps(entry))
    return entry


# ---------------------------------------------------------------------------
# The driver.


def _warm_up() -> None:
    """A worker's first imports (datasets, tokenizers), done while the head
    builds the decontamination index instead of inside the first task."""
    import tokenizers  # noqa: F401

    sources_lib.import_datasets()


def _measured(fn, *args) -> tuple[dict, int]:
    """fn's result and the peak resident memory of the process that ran it (KiB)."""
    import resource

    result = fn(*args)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _in_worker(fn, *args) -> tuple[dict, int]:
    """_measured, in a Ray worker of one CPU: the tokenizer's own threads
    off, so that workers scale. (Set here, not as a runtime_env: a task with
    a runtime_env cannot use the workers Ray starts with the cluster, and
    waits for new ones, a second or more.)"""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return _measured(fn, *args)


class _Executor:
    """Runs a stage's tasks: on Ray (one CPU each), or here when workers=0.
    A task whose marker exists is not run again; its marker is its result."""

    OPTIONS = {"num_cpus": 1, "max_retries": 3}

    def __init__(self, workers: int, address: str, log: Callable[[str], None]):
        self._ray = None
        self._log = log
        self._owns = False
        self._warming = []
        if workers or address:
            import ray

            if not ray.is_initialized():
                kwargs = {} if address else {"num_cpus": workers, "include_dashboard": False}
                # "local": a new cluster of this process, never one another
                # process started on this machine.
                ray.init(address=address or "local", **kwargs)
                self._owns = True
            self._ray = ray

    def warm_up(self) -> None:
        """Starts one worker process per CPU of the cluster and has it import
        what the tasks need, while the head goes on: worker start-up and
        imports are off the first stage's critical path."""
        if self._ray:
            cpus = int(self._ray.cluster_resources().get("CPU", 1))
            remote = self._ray.remote(**self.OPTIONS)(_in_worker)
            self._warming = [remote.remote(_warm_up) for _ in range(max(1, cpus))]

    def share(self, value):
        """A large read-only argument of many tasks, stored once."""
        return self._ray.put(value) if self._ray else value

    def map(self, stage: str, fn, calls: Sequence[tuple[str, tuple]], **kw) -> list[dict]:
        """fn over `calls` (marker, arguments): their results, in order."""
        return self.start(stage, fn, calls, **kw).results()

    def start(
        self,
        stage: str,
        fn,
        calls: Sequence[tuple[str, tuple]],
        priority: Sequence | None = None,
    ) -> "_Running":
        """Starts fn over `calls` (marker, arguments), those of the smallest
        `priority` first: the largest tasks (so that none starts last while
        the other workers idle), or those the head needs soonest. (`priority`:
        a sort key per call.)"""
        if self._warming:  # a worker that cannot import what tasks need fails here
            self._ray.get(self._warming)
            self._warming = []
        return _Running(self._ray, self.OPTIONS, self._log, stage, fn, calls, priority)

    def close(self):
        if self._owns:
            self._ray.shutdown()


class _Running:
    """A stage's tasks under way: on Ray, or already run here (workers=0)."""

    def __init__(self, ray, options: dict, log, stage: str, fn, calls, priority):
        self._t = time.monotonic()
        self._ray, self._log, self._stage, self._calls = ray, log, stage, calls
        self._results: dict[int, dict] = {}
        for i, (marker, _) in enumerate(calls):
            if storage.exists(marker):
                self._results[i] = json.loads(storage.read_text(marker))
        self._done_before = len(self._results)
        todo = [i for i in range(len(calls)) if i not in self._results]
        if priority is not None:
            todo.sort(key=lambda i: priority[i])
        self._peak = 0
        self._refs: dict[int, object] = {}
        if not ray:
            for i in todo:
                self._results[i], rss = _measured(fn, *calls[i][1])
                self._peak = max(self._peak, rss)
        else:
            remote = ray.remote(**options)(_in_worker)
            self._refs = {i: remote.remote(fn, *calls[i][1]) for i in todo}

    def result(self, i: int) -> dict:
        """Task i's result, waiting for that task alone."""
        if i in self._refs:
            self._results[i], rss = self._ray.get(self._refs.pop(i))
            self._peak = max(self._peak, rss)
        return self._results[i]

    def results(self) -> list[dict]:
        """Every task's result, in the calls' order, once all are done."""
        last = time.monotonic()
        waiting = {ref: i for i, ref in self._refs.items()}
        while waiting:
            ready, _ = self._ray.wait(list(waiting), num_returns=1)
            self.result(waiting.pop(ready[0]))
            if time.monotonic() - last > 30:
                done = len(self._calls) - len(waiting)
                self._log(f"{self._stage}: {done} of {len(self._calls)} tasks done")
                last = time.monotonic()
        self._log(
            f"{self._stage}: {len(self._calls)} tasks ({self._done_before} done before) "
            f"in {time.monotonic() - self._t:.1f}s, peak {self._peak / 1024:.0f} MB a worker"
        )
        return [self._results[i] for i in range(len(self._calls))]


def _recipe(specs, config: corpus_lib.BuildConfig) -> dict:
    return {
        "format": FORMAT,
        "specs": [s.to_json() for s in specs],
        "config": dataclasses.asdict(config),
        "dedup": {"ngram": NGRAM, "bands": BANDS, "rows": ROWS},
    }


def build_sharded(
    specs: Sequence[sources_lib.SourceSpec],
    out: str,
    config: corpus_lib.BuildConfig | None = None,
    *,
    workers: int = 0,
    ray_address: str = "",
    records_per_bucket: int = 20_000_000,
    log: Callable[[str], None] = print,
) -> dict:
    """Builds the corpus of `specs` at `out` (a folder or gs:// URI) and
    returns its manifest; resumes a build of the same recipe left there.
    Raises FieldError (AlreadyExists "out") when `out` holds another recipe's
    corpus or partial build."""
    config = config or corpus_lib.BuildConfig()
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise errors.InvalidArgument("sources", f"need distinct source names, got {names}")
    t0 = time.monotonic()
    recipe = _recipe(specs, config)
    recipe_text = json.dumps(recipe, sort_keys=True)
    manifest_uri = storage.join(out, corpus_lib.MANIFEST)
    if storage.exists(manifest_uri):
        manifest = json.loads(storage.read_text(manifest_uri))
        if json.dumps(manifest.get("build", {}).get("recipe"), sort_keys=True) == recipe_text:
            log(f"corpus {manifest['corpus_id'][:12]} at {out} is built")
            return manifest
        raise errors.AlreadyExists("out", f"{out} holds a corpus of another recipe")
    recipe_uri = _work(out, "recipe.json")
    if storage.exists(recipe_uri) and storage.read_text(recipe_uri) != recipe_text:
        raise errors.AlreadyExists(
            "out", f"{out} holds a partial build of another recipe; remove it or choose another"
        )
    storage.makedirs(_work(out))
    storage.write_text(recipe_uri, recipe_text)

    shards = plan_shards(specs)
    log(f"{len(shards)} input shards in {len(specs)} sources")
    bdir = (
        decontam.default_benchmarks_dir()
        if config.benchmarks_dir is None
        else config.benchmarks_dir
    )
    ex = _Executor(workers, ray_address, log)
    try:
        ex.warm_up()  # the workers start while the head builds the index
        t = time.monotonic()
        index = decontam.Index.from_dir(
            bdir or None, config.include_humaneval, config.ngram, decontam.cache_dir()
        )
        log(
            f"decontamination index: {index.hashes.size} {config.ngram}-grams of "
            f"{len(index.names)} benchmarks, {'loaded' if index.cached else 'built'} "
            f"({time.monotonic() - t:.1f}s)"
        )
        shared = ex.share(index)
        # Each source's first shards first: the tokenizer's sample is read
        # from them, and it trains here while the workers clean the rest.
        cleaning = ex.start(
            "clean",
            clean_task,
            [(_work(out, "clean", s.tag) + ".json", (out, s, shared, config)) for s in shards],
            priority=[(s.index, s.source) for s in shards],
        )
        tok_uri = storage.join(out, corpus_lib.TOKENIZER)
        tok = _tokenizer(out, specs, shards, config, tok_uri, log, cleaning.result)
        clean = cleaning.results()
        buckets = max(1, math.ceil(sum(c["documents"] for c in clean) / records_per_bucket))
        ex.map(
            "exact",
            exact_task,
            [
                (_work(out, "exact", f"{b:05d}.json"), (out, shards, b, buckets))
                for b in range(buckets)
            ],
        )
        exact_uris = [_work(out, "exact", f"{b:05d}.npy") for b in range(buckets)]
        encoded = ex.map(
            "encode",
            encode_task,
            [
                (_work(out, "encoded", s.tag) + ".json", (out, s, tok_uri, exact_uris))
                for s in shards
            ],
            priority=[-c["chars"] for c in clean],  # the largest first
        )
        nb = max(1, math.ceil(sum(e["documents"] for e in encoded) / records_per_bucket))
        cells = [(band, b) for band in range(BANDS) for b in range(nb)]
        ex.map(
            "near",
            near_task,
            [
                (_work(out, "near", f"{band:02d}-{b:05d}.json"), (out, shards, band, b, nb))
                for band, b in cells
            ],
        )
        near_uri = _work(out, "near_dropped.npy")
        if not storage.exists(near_uri):
            pairs = [_load_npy(_work(out, "near", f"{band:02d}-{b:05d}.npy")) for band, b in cells]
            storage.write_bytes(near_uri, _npy_bytes(near_duplicates(pairs)))
        limits = _limits(out, specs, shards, near_uri)
        written = ex.map(
            "write",
            write_task,
            [
                (_work(out, "write", s.tag + ".json"), (out, s, near_uri, limits[s.tag]))
                for s in shards
            ],
        )
    finally:
        ex.close()
    manifest = _manifest(out, specs, shards, clean, exact_uris, written, index, config, tok)
    manifest["build"] = {
        "recipe": recipe,
        "shards": len(shards),
        "seconds": round(time.monotonic() - t0, 1),
    }
    manifest["corpus_id"] = corpus_lib.corpus_id(manifest)
    storage.write_text(manifest_uri, json.dumps(manifest, indent=1))
    _remove_tree(_work(out))
    log(
        f"corpus {manifest['corpus_id'][:12]} at {out}: "
        f"{sum(s['num_tokens'] for s in manifest['sources']) / 1e6:.2f}M tokens "
        f"in {len(shards)} shards ({manifest['build']['seconds']}s)"
    )
    return manifest


def _tokenizer(out, specs, shards, config, tok_uri: str, log, cleaned: Callable[[int], dict]):
    """Trains (or loads) the tokenizer once; a vocabulary smaller than asked
    is refused naming vocab_size."""
    from services.data import tokenizer as tokenizer_lib

    if storage.exists(tok_uri):
        return tokenizer_lib.Tokenizer(_hf_tokenizer(storage.read_text(tok_uri)))
    t = time.monotonic()
    if config.tokenizer_file:
        tok = tokenizer_lib.Tokenizer(_hf_tokenizer(storage.read_text(config.tokenizer_file)))
    else:
        sample = _sample(out, specs, shards, config.tokenizer_sample_chars, cleaned)
        if not sample:
            raise errors.FailedPrecondition("sources", "no documents to train the tokenizer on")
        tok = tokenizer_lib.train(sample, config.vocab_size)
        if tok.vocab_size < config.vocab_size:
            raise errors.InvalidArgument(
                "vocab_size",
                f"the tokenizer reached {tok.vocab_size} of {config.vocab_size} entries on "
                f"{sum(map(len, sample))} characters; give it a larger sample "
                "(tokenizer_sample_chars) or ask for fewer",
            )
        log(
            f"trained byte-level BPE, vocab {tok.vocab_size}, on "
            f"{sum(map(len, sample)) / 1e6:.1f}M chars ({time.monotonic() - t:.1f}s)"
        )
    storage.write_text(tok_uri, tok.to_json())
    return tok


def _sample(out, specs, shards, total_chars: int, cleaned: Callable[[int], dict]) -> list[str]:
    """The tokenizer's sample: an equal share of `total_chars` from each
    source, its shards read in order (`cleaned(i)` waits for shard i)."""
    per_source = total_chars // len(specs)
    sample = []
    for s, _ in enumerate(specs):
        size = 0
        for i, shard in enumerate(shards):
            if shard.source != s:
                continue
            cleaned(i)
            for text in _docs(_work(out, "clean", shard.tag) + ".jsonl"):
                sample.append(text)
                size += len(text)
                if size >= per_source:
                    break
            if size >= per_source:
                break
    return sample


def _limits(out, specs, shards, near_uri: str) -> dict[str, int | None]:
    """Per shard, the documents the source's token cap leaves it (None: no
    cap): a capped source keeps whole documents in order, up to the first
    that does not fit."""
    limits: dict[str, int | None] = {}
    for s, spec in enumerate(specs):
        room = spec.max_tokens
        for shard in (x for x in shards if x.source == s):
            if not spec.max_tokens:
                limits[shard.tag] = None
                continue
            enc = _work(out, "encoded", shard.tag)
            offsets = _load_npy(enc + ".offsets.npy")
            index = (_load_npy(enc + ".keys.npy") - np.uint64(shard.key_base())).astype(np.int64)
            kept = ~np.isin(index, _shard_keys([near_uri], shard))
            lengths = np.diff(offsets)[kept]
            fits = int(np.searchsorted(np.cumsum(lengths), room, "right"))
            limits[shard.tag] = fits
            room = 0 if fits < lengths.size else room - int(lengths.sum())
    return limits


def _manifest(out, specs, shards, clean, exact_uris, written, index, config, tok) -> dict:
    report = decontam.Report(index)
    exact_keys = np.concatenate([_load_npy(u) for u in exact_uris] or [np.zeros(0, np.uint64)])
    exact_by_source = np.bincount(
        (exact_keys >> np.uint64(52)).astype(np.int64), minlength=len(specs)
    )
    entries = []
    for s, spec in enumerate(specs):
        mine = [i for i, x in enumerate(shards) if x.source == s]
        dropped = {"heldout": 0, "contaminated": 0, "exact": int(exact_by_source[s])}
        overlap = report.sources.setdefault(spec.name, decontam.SourceOverlap())
        heldout: list[str] = []
        for i in mine:
            for k, v in clean[i]["dropped"].items():
                dropped[k] = dropped.get(k, 0) + v
            for k, v in written[i]["dropped"].items():
                dropped[k] = dropped.get(k, 0) + v
            o = clean[i]["overlap"]
            overlap.documents += o["documents"]
            overlap.dropped += clean[i]["dropped"]["contaminated"]
            for k, v in o["per_benchmark"].items():
                overlap.documents_per_benchmark[k] = overlap.documents_per_benchmark.get(k, 0) + v
            for k, v in o["matched"].items():
                overlap.matched.setdefault(k, set()).update(v)
            if len(heldout) < config.heldout_max_documents:
                more = _docs(_work(out, "clean", shards[i].tag) + ".heldout.jsonl")
                heldout += more[: config.heldout_max_documents - len(heldout)]
        shard_entries = [{k: v for k, v in written[i].items() if k != "dropped"} for i in mine]
        rel = f"sources/{spec.name}/{corpus_lib.HELDOUT_FILE}"
        lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in heldout)
        storage.write_text(storage.join(out, rel), lines)
        entries.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "description": spec.description,
                "num_tokens": sum(e["num_tokens"] for e in shard_entries),
                "num_documents": sum(e["num_documents"] for e in shard_entries),
                "content_hash": hashlib.sha256(
                    "\n".join(e["sha256"] for e in shard_entries).encode()
                ).hexdigest(),
                "shards": shard_entries,
                "dtype": "uint32",
                "max_tokens": spec.max_tokens,
                "dropped": dropped,
                "heldout": {
                    "file": rel,
                    "num_documents": len(heldout),
                    "num_held_out": dropped["heldout"],
                    "content_hash": hashlib.sha256(
                        lines.encode("utf-8", "surrogatepass")
                    ).hexdigest(),
                },
            }
        )
    return {
        "format": FORMAT,
        "tokenizer": corpus_lib.tokenizer_entry(tok),
        "sources": entries,
        "heldout": corpus_lib.heldout_entry(config),
        "dedup": {
            "exact": "blake2b-128 of the UTF-8 text, across every source",
            "near": f"MinHash LSH over token {NGRAM}-grams, {BANDS} bands x {ROWS} rows",
            "keep": "the smallest (source in recipe order, shard, position) of each group",
        },
        "decontamination": report.to_json(),
    }


def _remove_tree(uri: str) -> None:
    if storage.is_gcs(uri):
        storage.filesystem().rm(uri[len(storage.GCS) :], recursive=True)
    else:
        import shutil

        shutil.rmtree(uri, ignore_errors=True)
