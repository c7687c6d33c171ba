"""Corpus build throughput: `bazel run //services/data:build_bench`.

Input: real text and code, the default corpus's documents (built into its
cache on first use) decoded back to text and written as jsonl shards, two
sources. The sharded build (pipeline.py) then runs on a local Ray cluster
with 1 worker and with 2, in turn, each `--rounds` times into a fresh
folder: read, decontaminate, hold out, exact and near dedup, train the
tokenizer, encode, write. The decontamination index, a function of the
benchmark files alone, is built once before the rounds and loaded from its
cache by each build (`--noindex_cache`: each build builds it). Reported per
run: wall time, the tokens written per second per worker, the time of each
stage, and each worker's peak memory (its resident set, the largest any of
its tasks saw); per round, the ratio of the 1-worker to the 2-worker wall
time. MinHash alone (band_hashes over the encoded tokens) is timed apart, to
say what near dedup adds to a worker's time. The last line is one JSON
object.
"""

import json
import os
import re
import shutil
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from libs.cli import logs
from services.data import corpus, decontam, pipeline, sources

_SHARDS = flags.DEFINE_integer("shards", 8, "Input files per source.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Builds with each worker count.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts to compare.")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "Tokenizer vocabulary.")
_SAMPLE = flags.DEFINE_integer(
    "tokenizer_sample_chars", 2_000_000, "Characters the tokenizer trains on."
)
_INDEX_CACHE = flags.DEFINE_boolean(
    "index_cache",
    True,
    "Build the decontamination index once, before the rounds, and let every build load it "
    "from the cache (as builds after a benchmark set's first do); false: each build builds it.",
)

_STAGE = re.compile(r"^(\w+): (\d+) tasks \((\d+) done before\) in ([0-9.]+)s, peak (\d+) MB")


def _inputs(root: str) -> list[sources.SourceSpec]:
    """The default corpus's text-like and code-like sources as jsonl shards."""
    manifest = corpus.ensure_default_corpus(log=lambda s: None)
    c = corpus.Corpus(corpus.default_corpus_dir())
    del manifest
    tok = c.tokenizer()
    groups = {"text": ("text", "markup", "cooldown"), "code": ("code", "code_adjacent")}
    specs = []
    for name, members in groups.items():
        docs = []
        for m in members:
            off = c.offsets(m)
            tokens = c.tokens(m)
            docs += tok.hf.decode_batch(
                [tokens[off[i] : off[i + 1] - 1].tolist() for i in range(off.size - 1)],
                skip_special_tokens=False,
            )
        os.makedirs(os.path.join(root, name))
        for k in range(_SHARDS.value):
            with open(os.path.join(root, name, f"part-{k:03d}.jsonl"), "w") as f:
                f.writelines(json.dumps({"text": d}) + "\n" for d in docs[k :: _SHARDS.value])
        specs.append(
            sources.SourceSpec(
                name,
                name,
                f"default corpus {'/'.join(members)}, decoded",
                (sources.Input(path="json", data_files=(os.path.join(root, name, "*.jsonl"),)),),
            )
        )
    return specs


def _build(specs, out: str, workers: int) -> dict:
    import ray

    ray.init(address="local", num_cpus=workers, include_dashboard=False)
    lines: list[str] = []
    t = time.perf_counter()
    try:
        manifest = pipeline.build_sharded(
            specs,
            out,
            corpus.BuildConfig(
                vocab_size=_VOCAB.value,
                tokenizer_sample_chars=_SAMPLE.value,
                include_humaneval=True,
            ),
            workers=workers,
            log=lines.append,
        )
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
    matches = [m for m in map(_STAGE.match, lines) if m]
    stages = {m.group(1): float(m.group(4)) for m in matches}
    tokens = sum(s["num_tokens"] for s in manifest["sources"])
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "tokens": tokens,
        "tokens_per_s_per_worker": tokens / wall / workers,
        "stages_s": stages,
        "peak_rss_mb_per_worker": max(int(m.group(5)) for m in matches),
        "corpus_id": manifest["corpus_id"],
    }


def main(argv):
    del argv
    logs.quiet_libraries()
    root = tempfile.mkdtemp(prefix="build_bench-")
    try:
        specs = _inputs(os.path.join(root, "raw"))
        chars = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        print(
            f"inputs: {len(specs)} sources x {_SHARDS.value} shards, {chars / 1e6:.1f} MB of jsonl"
        )
        index_s = None
        if _INDEX_CACHE.value:
            os.environ["CODE_LAB_CACHE_DIR"] = os.path.join(root, "cache")
            t = time.perf_counter()
            decontam.Index.from_dir(
                decontam.default_benchmarks_dir(),
                True,
                corpus.BuildConfig().ngram,
                decontam.cache_dir(),
            )
            index_s = time.perf_counter() - t
            print(f"decontamination index built once, into the cache: {index_s:.2f}s")
        runs = []
        for r in range(_ROUNDS.value):
            for w in map(int, _WORKERS.value):
                out = os.path.join(root, f"out-{w}-{r}")
                if not _INDEX_CACHE.value:  # an empty cache each build
                    os.environ["CODE_LAB_CACHE_DIR"] = os.path.join(root, f"cache-{w}-{r}")
                run = _build(specs, out, w)
                runs.append(run)
                print(
                    f"round {r} workers {w}: {run['wall_s']:.1f}s, {run['tokens'] / 1e6:.2f}M tokens, "
                    f"{run['tokens_per_s_per_worker'] / 1e6:.3f}M tokens/s per worker, "
                    f"peak {run['peak_rss_mb_per_worker']:.0f} MB a worker, stages {run['stages_s']}",
                    flush=True,
                )
                if r < _ROUNDS.value - 1 or w != int(_WORKERS.value[-1]):
                    shutil.rmtree(out)
        # MinHash alone, over one built corpus's tokens.
        last = corpus.Corpus(out)
        tokens = np.concatenate([np.asarray(last.tokens(s.name)[:]) for s in last.sources])
        offsets = np.concatenate(
            [[0]] + [last.offsets(s.name)[1:] + k for s, k in _bases(last)]
        ).astype(np.int64)
        t = time.perf_counter()
        pipeline.band_hashes(tokens, offsets, np.arange(offsets.size - 1, dtype=np.uint64))
        minhash = tokens.size / (time.perf_counter() - t)
        print(f"MinHash (band_hashes) alone: {minhash / 1e6:.2f}M tokens/s on one core")
        by = {w: [r for r in runs if r["workers"] == w] for w in map(int, _WORKERS.value)}
        med = {w: statistics.median(r["wall_s"] for r in rs) for w, rs in by.items()}
        ids = {r["corpus_id"] for r in runs}
        summary = {
            "tokens": runs[0]["tokens"],
            "wall_s_median": med,
            "tokens_per_s_per_worker_median": {
                w: statistics.median(r["tokens_per_s_per_worker"] for r in rs)
                for w, rs in by.items()
            },
            "speedup": {w: med[int(_WORKERS.value[0])] / m for w, m in med.items()},
            # Per round, the builds run back to back: the machine's drift
            # between rounds cancels out of each pair's ratio.
            "speedup_per_round": {
                w: [
                    round(a["wall_s"] / b["wall_s"], 3)
                    for a, b in zip(by[int(_WORKERS.value[0])], rs)
                ]
                for w, rs in by.items()
            },
            "peak_rss_mb_per_worker": {
                w: max(r["peak_rss_mb_per_worker"] for r in rs) for w, rs in by.items()
            },
            "minhash_tokens_per_s": minhash,
            "index_cache": _INDEX_CACHE.value,
            "index_build_s": index_s,
            "same_corpus_id": len(ids) == 1,
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bases(c):
    base = 0
    for s in c.sources:
        yield s, base
        base += s.num_tokens


if __name__ == "__main__":
    app.run(main)
