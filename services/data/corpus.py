"""The tokenized corpus on disk: building it, and reading it by random access.

Layout of a corpus directory:

    manifest.json                 sources, counts, hashes, tokenizer, decontamination
    tokenizer.json                the byte-level BPE (HF `tokenizers` format)
    sources/<name>/tokens.u32     every document's tokens + <eos>, back to back
    sources/<name>/offsets.i64    num_documents + 1 offsets into tokens.u32
    sources/<name>/heldout.jsonl  the source's held-out documents, {"text": ...} a line

Held-out slice: a document whose content hash falls in the lowest
`heldout_per_mille` thousandths (sha256 of its UTF-8 text, first 8 bytes,
mod 1000) is held out: never encoded into tokens.u32, so no mixture can serve
it, and kept as text (up to `heldout_max_documents` of them) for per-domain
evaluation (bits per byte per source, as Paloma). The choice depends on the
text alone, so it is the same in every build and for every mixture; the
manifest records the rule and, per source, how many documents it held out and
kept. Held-out documents are chosen after deduplication and decontamination
and are kept out of the tokenizer's training sample.

Storage: one flat little-endian uint32 token array and one int64 offsets
array per source, read through numpy memory maps. Why: the mixture reader
needs windows at arbitrary (document, offset) positions; with a flat array a
window is a slice (contiguous pages the OS caches and prefetches), nothing
is decompressed or parsed, a source of any size costs no memory until read,
and processes serving the same corpus share the page cache. Record formats
(Arrow/Parquet row groups, ArrayRecord, TFRecord) pay per-record decoding
and make windows that span documents several reads; tensorstore's chunked
arrays add a layer we do not need on a local disk. uint32 holds any
vocabulary (the paper's 256k does not fit uint16). The offsets are small
(8 bytes per document) and are read into memory.

A corpus on gs:// (the sharded build writes there as well as to a folder)
is served without a copy of all of it on every replica, in one of two ways:

- staged (`stage_dir`, the data service's --stage_dir): a source's shards
  are copied to local disk the first time a mixture reads the source, and
  checked against the manifest's sha256; a replica holds the sources its
  mixtures use, read as fast as local files;
- by range (no stage_dir): the offsets are read whole, the tokens by byte
  range through a block cache shared by every source and stream of the
  Corpus (`cache_bytes`, least recently used blocks evicted); a replica
  holds no more than the cache, at a cost of one request a missing block.

Building (`build`): every source is read through `sources.iter_source`
(one `datasets` code path for local files, Hugging Face names and registered
readers), exact duplicates are dropped, documents sharing a 13-gram with a
benchmark are dropped (decontam.py), a tokenizer is trained on a sample of
every source (unless one is given), and documents are encoded and appended
up to the source's token cap. The directory is written under a temporary
name and renamed into place, so a killed build leaves no half corpus.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from libs import storage
from services.data import decontam
from services.data import sources as sources_lib

FORMAT = "code_lab.corpus/1"
# Sources in shards ("shards": [{tokens_file, offsets_file, num_tokens, ...}]),
# written by the sharded build (pipeline.py).
SHARDED_FORMAT = "code_lab.corpus/2"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
TOKEN_DTYPE = np.dtype("<u4")
OFFSET_DTYPE = np.dtype("<i8")
# Bump when the default catalogue or build changes, so cached corpora rebuild.
DEFAULT_RECIPE = "default/v4"  # v4: a held-out slice per source


def default_corpus_dir() -> str:
    """$CODE_LAB_CORPUS_DIR, else ~/.cache/code_lab/corpus/default."""
    return os.environ.get("CODE_LAB_CORPUS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "code_lab", "corpus", "default"
    )


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """One source as the manifest records it."""

    name: str
    kind: str
    description: str
    num_tokens: int
    num_documents: int
    content_hash: str
    heldout_documents: int = 0  # held out by content hash, never served


class Corpus:
    """A built corpus, opened for reading: a folder (token arrays memory-mapped
    on first use) or gs://, read one of two ways: by range through a block
    cache of `cache_bytes` in blocks of `block_bytes` (a batch reader fetches
    each step's blocks at once and the next step's in the background: `warm`),
    or, with `stage_dir`, each source's shards copied
    to that local folder when the source is first read (checked against the
    manifest's sha256) and memory-mapped from there. Nothing is read until a
    source is."""

    def __init__(
        self,
        path: str,
        *,
        cache_bytes: int = 512 << 20,
        stage_dir: str = "",
        block_bytes: int = 64 << 10,
    ):
        if block_bytes <= 0 or block_bytes % np.dtype(TOKEN_DTYPE).itemsize:
            raise ValueError(
                f"block_bytes: a positive multiple of 4 (whole tokens), got {block_bytes}"
            )
        self.remote = storage.is_gcs(path)
        self.stage_dir = stage_dir
        self._stage_lock = threading.Lock()
        self.path = path.rstrip("/") if self.remote else os.path.abspath(path)
        manifest_path = storage.join(self.path, MANIFEST)
        if not storage.exists(manifest_path):
            raise FileNotFoundError(f"no corpus at {self.path} (missing {MANIFEST})")
        self.manifest = json.loads(storage.read_text(manifest_path))
        self._blocks = BlockCache(cache_bytes, block_bytes) if self.remote else None
        if self.manifest.get("format") not in (FORMAT, SHARDED_FORMAT):
            raise ValueError(
                f"{manifest_path}: format {self.manifest.get('format')!r}, expected "
                f"{FORMAT!r} or {SHARDED_FORMAT!r}"
            )
        self.sources = [
            SourceInfo(
                name=s["name"],
                kind=s["kind"],
                description=s["description"],
                num_tokens=s["num_tokens"],
                num_documents=s["num_documents"],
                content_hash=s["content_hash"],
                heldout_documents=s.get("heldout", {}).get("num_held_out", 0),
            )
            for s in self.manifest["sources"]
        ]
        self._by_name = {s.name: s for s in self.sources}
        self._tokens: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        self._tokenizer = None

    corpus_id = property(lambda self: self.manifest["corpus_id"])
    vocab_size = property(lambda self: self.manifest["tokenizer"]["vocab_size"])
    eos_id = property(lambda self: self.manifest["tokenizer"]["eos_id"])
    pad_id = property(lambda self: self.manifest["tokenizer"]["pad_id"])

    def source(self, name: str) -> SourceInfo:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def _shards(self, name: str) -> list[dict]:
        """The source's files: one {tokens_file, offsets_file, num_tokens} a shard."""
        entry = next(s for s in self.manifest["sources"] if s["name"] == name)
        return entry.get("shards") or [entry]

    def tokens(self, name: str):
        """The source's uint32 tokens, read-only and memory-mapped: an array
        for a source in one file, a Concatenated view over its shards'."""
        arr = self._tokens.get(name)
        if arr is None:
            parts = [self._token_file(s) for s in self._shards(name) if s["num_tokens"]]
            if not parts:
                arr = np.zeros(0, TOKEN_DTYPE)
            else:
                arr = parts[0] if len(parts) == 1 else Concatenated(parts)
            self._tokens[name] = arr
        return arr

    @property
    def by_range(self) -> bool:
        """Whether tokens are read from gs:// by range through the block cache."""
        return self.remote and not self.stage_dir

    def warm(self, reads: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Fetches, all at once, the blocks that (source, starts, stops) token
        ranges will read; nothing unless the corpus is read by range."""
        if not self.by_range:
            return
        keys = []
        for name, starts, stops in reads:
            tokens = self.tokens(name)
            if hasattr(tokens, "blocks") and starts.size:
                keys += tokens.blocks(starts, stops)
        self._blocks.fetch(keys)

    def offsets(self, name: str) -> np.ndarray:
        """Document boundaries over the source's tokens (its shards in order):
        document i is tokens[offsets[i]:offsets[i+1]]."""
        arr = self._offsets.get(name)
        if arr is None:
            parts, base = [np.zeros(1, OFFSET_DTYPE)], 0
            for s in self._shards(name):
                uri = storage.join(self.path, s["offsets_file"])
                off = np.frombuffer(storage.read_bytes(uri), OFFSET_DTYPE)
                parts.append(off[1:] + base)
                base += int(off[-1]) if off.size else 0
            arr = np.concatenate(parts)
            self._offsets[name] = arr
        return arr

    def _token_file(self, shard: dict):
        uri = storage.join(self.path, shard["tokens_file"])
        size = shard["num_tokens"]
        if self.remote and not self.stage_dir:
            return RangeArray(uri, TOKEN_DTYPE, size, self._blocks)
        if self.remote:
            uri = self._stage(shard)
        # A plain ndarray view: fancy indexing on np.memmap subclasses is
        # measurably slower.
        return np.memmap(uri, TOKEN_DTYPE, "r", shape=(size,)).view(np.ndarray)

    def _stage(self, shard: dict) -> str:
        """The local copy of a remote shard's tokens under stage_dir, copied
        once (whoever asks first) and checked against the manifest's sha256
        of its tokens and offsets."""
        local = os.path.join(self.stage_dir, self.corpus_id[:16], shard["tokens_file"])
        with self._stage_lock:
            if os.path.exists(local):
                return local
            os.makedirs(os.path.dirname(local), exist_ok=True)
            digest = hashlib.sha256()
            tmp = f"{local}.tmp-{os.getpid()}"
            with storage.open(storage.join(self.path, shard["tokens_file"]), "rb") as src:
                with open(tmp, "wb") as dst:
                    while chunk := src.read(16 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
            digest.update(storage.read_bytes(storage.join(self.path, shard["offsets_file"])))
            expected = shard.get("sha256") or shard["content_hash"]
            if digest.hexdigest() != expected:
                os.unlink(tmp)
                raise ValueError(
                    f"{self.path}/{shard['tokens_file']}: sha256 {digest.hexdigest()}, "
                    f"the manifest says {expected}"
                )
            os.replace(tmp, local)
            return local

    def document(self, name: str, i: int) -> np.ndarray:
        off = self.offsets(name)
        return self.tokens(name)[off[i] : off[i + 1]]

    def heldout(self, name: str) -> list[str]:
        """The source's held-out documents (never served), as text; [] for a
        corpus built without a held-out slice."""
        entry = next(s for s in self.manifest["sources"] if s["name"] == name)
        if "heldout" not in entry:
            return []
        text = storage.read_text(storage.join(self.path, entry["heldout"]["file"]))
        return [json.loads(line)["text"] for line in text.splitlines() if line.strip()]

    def tokenizer_json(self) -> str:
        """The tokenizer as HF `tokenizers` JSON ("" if the corpus has none)."""
        uri = storage.join(self.path, self.manifest["tokenizer"].get("file", TOKENIZER))
        return storage.read_text(uri) if storage.exists(uri) else ""

    def tokenizer(self):
        if self._tokenizer is None:
            import tokenizers

            from services.data import tokenizer

            text = self.tokenizer_json()
            self._tokenizer = tokenizer.Tokenizer(tokenizers.Tokenizer.from_str(text))
        return self._tokenizer


class BlockCache:
    """Fixed-size blocks of remote files (`block` bytes each), least recently
    used evicted past `capacity` bytes; safe to share between threads."""

    def __init__(self, capacity: int, block: int = 1 << 20):
        self.block = block
        self.capacity = max(capacity, block)
        self._blocks: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.fetched = 0  # blocks read from storage

    def get(self, uri: str, block: int) -> bytes:
        key = (uri, block)
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
                return data
        data = storage.read_range(uri, block * self.block, self.block)
        with self._lock:
            self._insert(key, data)
        return data

    def fetch(self, keys: Iterable[tuple[str, int]]) -> None:
        """Reads the (uri, block) blocks not held yet, in the order given, all at
        once (concurrent ranged reads); no more than the cache holds. The ones
        held are marked used, so that the new ones do not evict them."""
        missing = []
        with self._lock:
            for key in dict.fromkeys(keys):
                if key in self._blocks:
                    self._blocks.move_to_end(key)
                else:
                    missing.append(key)
        missing = missing[: self.capacity // self.block]
        if not missing:
            return
        parts = storage.read_ranges([(uri, b * self.block, self.block) for uri, b in missing])
        with self._lock:
            for key, data in zip(missing, parts):
                self._insert(key, data)

    def _insert(self, key: tuple[str, int], data: bytes) -> None:
        if key in self._blocks:
            return
        self._blocks[key] = data
        self._size += len(data)
        self.fetched += 1
        while self._size > self.capacity:
            _, old = self._blocks.popitem(last=False)
            self._size -= len(old)


class RangeArray:
    """A read-only 1-D array in a remote file, read by block through a
    BlockCache: indexed by an int, a slice of step 1 or an integer array."""

    def __init__(self, uri: str, dtype, size: int, cache: BlockCache):
        self.uri, self.dtype, self.size, self.cache = uri, np.dtype(dtype), size, cache
        self.shape = (size,)
        self._per_block = cache.block // self.dtype.itemsize

    def __len__(self) -> int:
        return self.size

    def _block(self, b: int) -> np.ndarray:
        return np.frombuffer(self.cache.get(self.uri, b), self.dtype)

    def blocks(self, starts: np.ndarray, stops: np.ndarray) -> list[tuple[str, int]]:
        """The cache keys of the blocks that hold elements [start, stop) of each range."""
        first, last = starts // self._per_block, (stops - 1) // self._per_block
        return [
            (self.uri, b) for f, e in zip(first.tolist(), last.tolist()) for b in range(f, e + 1)
        ]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step != 1:
                raise IndexError("RangeArray: slices take step 1")
            if stop <= start:
                return np.zeros(0, self.dtype)
            first, last = start // self._per_block, (stop - 1) // self._per_block
            if first == last:
                base = first * self._per_block
                return self._block(first)[start - base : stop - base]
            whole = np.concatenate([self._block(b) for b in range(first, last + 1)])
            base = first * self._per_block
            return whole[start - base : stop - base]
        if np.isscalar(index):
            b, i = divmod(int(index), self._per_block)
            return self._block(b)[i]
        index = np.asarray(index)
        blocks = index // self._per_block
        out = np.empty(index.shape, self.dtype)
        for b in np.unique(blocks):
            mask = blocks == b
            out[mask] = self._block(int(b))[index[mask] - b * self._per_block]
        return out


class Concatenated:
    """Read-only arrays end to end, indexed as one: an int, a slice (one
    shard's view when it lies in one) or an integer array (gathered shard by
    shard)."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.starts = np.concatenate([[0], np.cumsum([p.size for p in self.parts])])
        self.size = int(self.starts[-1])
        self.dtype = self.parts[0].dtype
        self.shape = (self.size,)

    def __len__(self) -> int:
        return self.size

    def blocks(self, starts: np.ndarray, stops: np.ndarray) -> list:
        """The block-cache keys of each part (a RangeArray) that ranges
        [start, stop) touch; [] for parts in memory."""
        keys = []
        for i, part in enumerate(self.parts):
            lo, hi = self.starts[i], self.starts[i + 1]
            touch = (starts < hi) & (stops > lo)
            if touch.any() and hasattr(part, "blocks"):
                keys += part.blocks(
                    np.maximum(starts[touch], lo) - lo, np.minimum(stops[touch], hi) - lo
                )
        return keys

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step != 1:
                raise IndexError("Concatenated: slices take step 1")
            i = int(np.searchsorted(self.starts, start, "right")) - 1
            if stop <= self.starts[i + 1] or start >= stop:
                return self.parts[min(i, len(self.parts) - 1)][
                    start - self.starts[i] : max(stop, start) - self.starts[i]
                ]
            return self[np.arange(start, stop)]
        if np.isscalar(index):
            i = int(np.searchsorted(self.starts, index, "right")) - 1
            return self.parts[i][index - self.starts[i]]
        index = np.asarray(index)
        which = np.searchsorted(self.starts, index, "right") - 1
        out = np.empty(index.shape, self.dtype)
        for i in np.unique(which):
            mask = which == i
            out[mask] = self.parts[i][index[mask] - self.starts[i]]
        return out


# ---------------------------------------------------------------------------
# Building.


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """How a corpus is built.

    vocab_size: tokenizer size (paper: 256k; default corpus: 8192).
    tokenizer_file: reuse this tokenizer.json instead of training one.
    tokenizer_sample_chars: characters of each source the tokenizer sees.
    benchmarks_dir: benchmark folder to decontaminate against (None: the
        default, see decontam.default_benchmarks_dir; "" disables the folder).
    include_humaneval: also decontaminate against HumanEval.
    ngram: words per n-gram of the overlap check.
    chars_per_token: read budget of a capped source, in characters per token
        of its cap (generous: documents past the cap are read, not encoded).
    memory_chars: uncapped sources are kept in memory up to this size and
        streamed a second time beyond it.
    recipe: a label stored in the manifest (ensure_default_corpus uses it
        to decide whether a cached corpus is current).
    heldout_per_mille: thousandths of each source's documents held out (by
        content hash, see the module docstring); 0: none.
    heldout_max_documents: held-out documents kept as text per source (the
        rest are still never served).
    """

    vocab_size: int = 8192
    tokenizer_file: str | None = None
    tokenizer_sample_chars: int = 2_000_000
    benchmarks_dir: str | None = None
    include_humaneval: bool = True
    ngram: int = decontam.NGRAM
    chars_per_token: float = 6.0
    memory_chars: int = 256_000_000
    recipe: str = ""
    heldout_per_mille: int = 10
    heldout_max_documents: int = 256

    def __post_init__(self):
        if not 0 <= self.heldout_per_mille < 1000:
            raise ValueError(
                f"heldout_per_mille: must be in [0, 1000), got {self.heldout_per_mille}"
            )
        if self.heldout_max_documents < 0:
            raise ValueError(
                f"heldout_max_documents: must be >= 0, got {self.heldout_max_documents}"
            )


HELDOUT_FILE = "heldout.jsonl"
HELDOUT_RULE = "sha256(utf-8 text)[:8] big-endian mod 1000 < heldout_per_mille"


def is_heldout(text: str, per_mille: int) -> bool:
    """Whether a document belongs to its source's held-out slice (module docstring)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < per_mille


def _dedup(texts: Iterable[str], seen: set, counts: dict) -> Iterator[str]:
    for t in texts:
        h = hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if h in seen:
            counts["duplicate"] = counts.get("duplicate", 0) + 1
            continue
        seen.add(h)
        yield t


def build(
    specs: Sequence[sources_lib.SourceSpec],
    out_dir: str,
    config: BuildConfig = BuildConfig(),
    log: Callable[[str], None] = print,
) -> dict:
    """Builds a corpus from `specs` into `out_dir` (replacing it) and returns
    its manifest."""
    from services.data import synthetic
    from services.data import tokenizer as tokenizer_lib

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate source names: {names}")
    if not specs:
        raise ValueError("no sources")
    t0 = time.monotonic()
    out_dir = os.path.abspath(out_dir)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "sources"))
    try:
        bdir = (
            decontam.default_benchmarks_dir()
            if config.benchmarks_dir is None
            else config.benchmarks_dir
        )
        index = decontam.Index.from_dir(
            bdir or None, config.include_humaneval, config.ngram, decontam.cache_dir()
        )
        report = decontam.Report(index)
        log(
            f"decontamination index: {len(index.names)} benchmarks from {bdir or '(none)'}"
            f"{' + HumanEval' if 'humaneval' in index.names else ''}, {index.hashes.size} distinct {index.n}-grams "
            f"({time.monotonic() - t0:.1f}s)"
        )

        # Pass A: read (deduplicated, decontaminated) documents into memory,
        # up to what the cap can use. A source that outgrows memory_chars
        # first (uncapped, or capped at more than memory holds) keeps only
        # a tokenizer sample and is streamed again in pass B from the start.
        collected: dict[str, list[str]] = {}
        restream: set[str] = set()
        drops: dict[str, dict] = {}
        heldout: dict[str, list[str]] = {}
        for spec in specs:
            t = time.monotonic()
            enough = spec.max_tokens * config.chars_per_token if spec.max_tokens else math.inf
            docs, size = [], 0
            heldout[spec.name] = []
            for text in _clean_stream(
                spec, report, drops.setdefault(spec.name, {}), config, heldout[spec.name]
            ):
                docs.append(text)
                size += len(text)
                if size >= enough:
                    break
                if size >= config.memory_chars:
                    restream.add(spec.name)
                    break
            collected[spec.name] = docs
            log(
                f"read {spec.name}: {len(docs)} documents, {size / 1e6:.1f}M chars"
                f"{' (more streamed later)' if spec.name in restream else ''} ({time.monotonic() - t:.1f}s)"
            )

        # Tokenizer.
        t = time.monotonic()
        if config.tokenizer_file:
            tok = tokenizer_lib.load(config.tokenizer_file)
        else:
            sample = []
            for spec in specs:
                size = 0
                for text in collected[spec.name]:
                    sample.append(text)
                    size += len(text)
                    if size >= config.tokenizer_sample_chars:
                        break
            if not sample:
                raise ValueError("no documents to train the tokenizer on")
            tok = tokenizer_lib.train(sample, config.vocab_size)
            log(
                f"trained byte-level BPE, vocab {tok.vocab_size}, on {sum(map(len, sample)) / 1e6:.1f}M chars "
                f"({time.monotonic() - t:.1f}s)"
            )
        tok.save(os.path.join(tmp, TOKENIZER))

        # Pass B: encode and write each source up to its cap.
        entries = []
        for spec in specs:
            t = time.monotonic()
            docs: Iterable[str] = collected.pop(spec.name)
            if spec.name in restream:
                report.sources.pop(spec.name, None)
                drops[spec.name] = {}
                heldout[spec.name] = []
                docs = _clean_stream(spec, report, drops[spec.name], config, heldout[spec.name])
            entry = _write_source(spec, docs, tok, tmp, drops[spec.name])
            entry["heldout"] = _write_heldout(spec, heldout.pop(spec.name), tmp, drops[spec.name])
            if spec.name in report.sources:
                entry["dropped"]["contaminated"] = report.sources[spec.name].dropped
            if spec.inputs and any(i.reader == "synthetic_python" for i in spec.inputs):
                options = next(i.options for i in spec.inputs if i.reader == "synthetic_python")
                entry["synthetic"] = synthetic.verified(**options)[1].to_json()
            entries.append(entry)
            log(
                f"encoded {spec.name}: {entry['num_documents']} documents, {entry['num_tokens']} tokens "
                f"({time.monotonic() - t:.1f}s)"
            )

        decontamination = report.to_json()
        log(decontam.format_report(decontamination))
        manifest = {
            "format": FORMAT,
            "tokenizer": tokenizer_entry(tok),
            "sources": entries,
            "heldout": heldout_entry(config),
            "decontamination": decontamination,
            "build": {
                "recipe": config.recipe,
                "config": dataclasses.asdict(config),
                "specs": [s.to_json() for s in specs],
                "seconds": round(time.monotonic() - t0, 1),
                "python": sys.version.split()[0],
            },
        }
        manifest["corpus_id"] = corpus_id(manifest)
        text = json.dumps(manifest, indent=1)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            f.write(text)
        manifest = json.loads(text)  # the manifest as readers will see it
        _replace_dir(tmp, out_dir)
        log(
            f"corpus {manifest['corpus_id'][:12]} at {out_dir} "
            f"({sum(e['num_tokens'] for e in entries) / 1e6:.2f}M tokens, {manifest['build']['seconds']}s)"
        )
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tokenizer_entry(tok) -> dict:
    """The manifest's "tokenizer" object."""
    return {
        "file": TOKENIZER,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "sha256": tok.sha256,
        "type": "byte-level BPE (HF tokenizers)",
    }


def heldout_entry(config: BuildConfig) -> dict:
    """The manifest's "heldout" object: the rule and its settings."""
    return {
        "rule": HELDOUT_RULE,
        "per_mille": config.heldout_per_mille,
        "max_documents": config.heldout_max_documents,
    }


def corpus_id(manifest: dict) -> str:
    """Hash of what determines the served tokens: sources and tokenizer."""
    key = {
        "tokenizer": manifest["tokenizer"]["sha256"],
        "sources": [
            (s["name"], s["kind"], s["num_tokens"], s["num_documents"], s["content_hash"])
            for s in manifest["sources"]
        ],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _clean_stream(
    spec, report: decontam.Report, drops: dict, config: BuildConfig, heldout: list[str]
) -> Iterator[str]:
    """The source's documents without exact duplicates, contaminated ones and the
    held-out slice; held-out documents are appended to `heldout` (up to the
    config's maximum) and counted in drops["heldout"]."""
    clean = decontam.iter_clean(
        report, spec.name, _dedup(sources_lib.iter_source(spec), set(), drops)
    )
    for text in clean:
        if config.heldout_per_mille and is_heldout(text, config.heldout_per_mille):
            drops["heldout"] = drops.get("heldout", 0) + 1
            if len(heldout) < config.heldout_max_documents:
                heldout.append(text)
            continue
        yield text


def _write_heldout(spec, texts: list[str], root: str, drops: dict) -> dict:
    rel = os.path.join("sources", spec.name, HELDOUT_FILE)
    digest = hashlib.sha256()
    with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
        for text in texts:
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            digest.update(line.encode("utf-8", "surrogatepass"))
    return {
        "file": rel,
        "num_documents": len(texts),  # kept as text
        "num_held_out": drops.get("heldout", 0),  # never served (kept or not)
        "num_bytes": sum(len(t.encode("utf-8", "surrogatepass")) for t in texts),
        "content_hash": digest.hexdigest(),
    }


def _batches(it: Iterable[str], size: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _write_source(spec, docs: Iterable[str], tok, root: str, drops: dict) -> dict:
    rel = os.path.join("sources", spec.name)
    os.makedirs(os.path.join(root, rel))
    tokens_rel, offsets_rel = os.path.join(rel, "tokens.u32"), os.path.join(rel, "offsets.i64")
    digest = hashlib.sha256()
    offsets = [0]
    total = 0
    cap = spec.max_tokens
    eos = np.array([tok.eos_id], TOKEN_DTYPE)
    stop = False
    with open(os.path.join(root, tokens_rel), "wb") as f:
        for batch in _batches(docs, 256):
            if stop:
                drops["over_cap"] = drops.get("over_cap", 0) + len(batch)
                continue
            for i, ids in enumerate(tok.encode_batch(batch)):
                n = len(ids) + 1
                if cap and total + n > cap:
                    stop = True
                    drops["over_cap"] = drops.get("over_cap", 0) + len(batch) - i
                    break
                arr = np.concatenate([np.asarray(ids, TOKEN_DTYPE), eos])
                if tok.eos_id in arr[:-1]:
                    raise AssertionError(
                        f"{spec.name}: a document encoded to <eos> inside its text"
                    )
                b = arr.tobytes()
                f.write(b)
                digest.update(b)
                total += n
                offsets.append(total)
    off = np.asarray(offsets, OFFSET_DTYPE)
    off.tofile(os.path.join(root, offsets_rel))
    digest.update(off.tobytes())
    return {
        "name": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        "num_tokens": total,
        "num_documents": len(offsets) - 1,
        "content_hash": digest.hexdigest(),
        "tokens_file": tokens_rel,
        "offsets_file": offsets_rel,
        "dtype": "uint32",
        "max_tokens": cap,
        "dropped": dict(drops),
    }


def _replace_dir(tmp: str, out_dir: str) -> None:
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    old = None
    if os.path.exists(out_dir):
        old = f"{out_dir}.old-{os.getpid()}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_recipe(scale: float, vocab_size: int) -> str:
    return f"{DEFAULT_RECIPE} scale={scale:g} vocab={vocab_size}"


def ensure_default_corpus(
    path: str | None = None,
    *,
    scale: float = 1.0,
    vocab_size: int = 8192,
    benchmarks_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The manifest of the default corpus at `path` (default_corpus_dir()),
    building it first if it is missing or was built by another recipe.
    Concurrent callers wait on a lock file, so it is built once."""
    path = os.path.abspath(path or default_corpus_dir())
    recipe = default_recipe(scale, vocab_size)
    with _locked(path):
        manifest_path = os.path.join(path, MANIFEST)
        if os.path.exists(manifest_path):
            with open(manifest_path) as f:
                manifest = json.load(f)
            built_by = manifest.get("build", {}).get("recipe") or ""
            if built_by == recipe:
                return manifest
            if not built_by.startswith("default/"):
                log(f"{path} holds a corpus not built by the default recipe; using it as it is")
                return manifest
            log(
                f"corpus at {path} was built by {manifest.get('build', {}).get('recipe')!r}; rebuilding as {recipe!r}"
            )
        log(f"building the default corpus at {path} ({recipe})")
        try:
            return build(
                sources_lib.default_sources(scale),
                path,
                BuildConfig(vocab_size=vocab_size, benchmarks_dir=benchmarks_dir, recipe=recipe),
                log=log,
            )
        except FileNotFoundError as e:
            packages = " ".join(sources_lib.DEBIAN_PACKAGES)
            raise FileNotFoundError(
                f"{e}: the default corpus reads Debian packages (apt-get install {packages})"
            ) from e
