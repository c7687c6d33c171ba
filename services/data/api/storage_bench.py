"""The data service reading a corpus on gs:// against the same corpus on
local disk, and its memory with 1 and with 8 streams:
`bazel run //services/data/api:storage_bench`.

The default corpus (built into its cache on first use) is uploaded to a GCS
emulator on this machine (libs/storage/testing.py, a local HTTP server: its
latency is loopback's, not Cloud Storage's). Three data services serve it:
from the folder; from gs:// staged (--stage_dir: each source's shards
copied to local disk on first read, checked, then memory-mapped; the first
round pays the copy); and from gs:// by range through a block cache of
`--cache_mb` (smaller than the corpus, so blocks are evicted and read
again; one service a block size of `--block_kb`: each step's blocks are
read at once, the next step's in the background). Rounds alternate between
them; the medians and their ratios to the folder's are reported.
Then, for 1 and for 8 streams of one mixture (8 trainer shards of one
global batch, read at once), a fresh service's resident memory after
`--steps` batches; the streams share the corpus's permutations. The last
line is one JSON object.
"""

import json
import os
import shutil
import statistics
import tempfile
import threading
import time

import psutil
from absl import app, flags

from libs import storage
from libs.cli import logs
from libs.storage import testing as storage_testing
from services.data import corpus, mixture
from services.data.api import client

_MIXTURE = flags.DEFINE_string(
    "mixture",
    "text=0.5,code=0.25,markup=0.1,code_adjacent=0.1,synthetic_code=0.05",
    "Mixture to serve.",
)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch size.")
_SEQ = flags.DEFINE_integer("seq_len", 2048, "Sequence length.")
_STEPS = flags.DEFINE_integer("steps", 200, "Batches per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds of each kind.")
_CACHE_MB = flags.DEFINE_integer("cache_mb", 16, "The gs:// service's block cache.")
_BLOCK_KB = flags.DEFINE_list(
    "block_kb", ["1024", "64"], "Block sizes of the by-range services, one service each."
)
_STREAMS = flags.DEFINE_integer("streams", 8, "Streams of the memory comparison.")


def _rate(address: str, mix, start: int) -> float:
    B, L, N = _BATCH.value, _SEQ.value, _STEPS.value
    with (
        client.DataClient(address) as data,
        data.stream(
            mix, seed=0, global_batch_size=B, seq_len=L, start_step=start, num_steps=N
        ) as s,
    ):
        t = time.perf_counter()
        n = sum(1 for _ in s)
        dt = time.perf_counter() - t
    assert n == N, n
    return N * B * L / dt


def _memory(path: str, mix, streams: int) -> float:
    """Resident MB of a fresh service after `streams` shards read --steps batches."""
    server = client.start_local_server(path, build_default_corpus=False)
    try:
        proc = psutil.Process(server.process.pid)

        def read(shard: int) -> None:
            with (
                client.DataClient(server.address) as data,
                data.stream(
                    mix,
                    seed=0,
                    global_batch_size=_BATCH.value * streams,
                    seq_len=_SEQ.value,
                    num_steps=_STEPS.value,
                    shard_index=shard,
                    num_shards=streams,
                ) as s,
            ):
                for _ in s:
                    pass

        threads = [threading.Thread(target=read, args=(i,)) for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return proc.memory_info().rss / 2**20
    finally:
        server.stop()


def main(argv):
    del argv
    logs.quiet_libraries()
    local = corpus.default_corpus_dir()
    corpus.ensure_default_corpus(local)
    mix = mixture.Mixture.parse(_MIXTURE.value)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(local) for f in fs)
    with storage_testing.gcs_emulator(bucket="bench") as gcs:
        remote = gcs.uri("corpus")
        t = time.perf_counter()
        storage.upload_tree(local, remote)
        print(f"uploaded {size / 1e6:.1f} MB to the emulator in {time.perf_counter() - t:.1f}s")
        stage = tempfile.mkdtemp(prefix="storage_bench-")
        servers = {
            "local": client.start_local_server(local, build_default_corpus=False),
            "staged": client.start_local_server(
                remote, build_default_corpus=False, extra_args=[f"--stage_dir={stage}"]
            ),
        }
        for kb in _BLOCK_KB.value:
            servers[f"range_{kb}k"] = client.start_local_server(
                remote,
                build_default_corpus=False,
                extra_args=[f"--cache_mb={_CACHE_MB.value}", f"--block_kb={kb}"],
            )
        rates: dict[str, list[float]] = {k: [] for k in servers}
        try:
            for r in range(_ROUNDS.value):
                for kind, server in servers.items():
                    rates[kind].append(_rate(server.address, mix, r * _STEPS.value))
                print(
                    f"round {r}: "
                    + ", ".join(f"{k} {v[-1] / 1e6:.2f}M tokens/s" for k, v in rates.items()),
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
            shutil.rmtree(stage, ignore_errors=True)
    memory = {n: _memory(local, mix, n) for n in (1, _STREAMS.value)}
    print(
        f"service memory: {memory[1]:.0f} MB with 1 stream, {memory[_STREAMS.value]:.0f} MB with {_STREAMS.value}"
    )
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "bench": "data_service_storage",
                "corpus_mb": round(size / 1e6, 1),
                "cache_mb": _CACHE_MB.value,
                "tokens_per_s": {k: round(v) for k, v in med.items()},
                "staged_over_local": round(med["staged"] / med["local"], 3),
                "range_over_local": {
                    kb: round(med[f"range_{kb}k"] / med["local"], 3) for kb in _BLOCK_KB.value
                },
                "memory_mb": {str(k): round(v) for k, v in memory.items()},
                "memory_ratio": round(memory[_STREAMS.value] / memory[1], 3),
                "batch": [_BATCH.value, _SEQ.value],
                "steps": _STEPS.value,
                "rounds": _ROUNDS.value,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
