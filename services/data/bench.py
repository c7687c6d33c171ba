"""Data service throughput: `bazel run //services/data:bench`.

Serves one mixture of the default corpus (built into its cache on first
use) from the data binary in a separate process and reads it with the client
over loopback gRPC; then assembles the same batches in this process with the
library. Rounds alternate between the two so that both see the same machine
load; the medians and their ratio are reported, together with the CPU time
each side spent per batch (a figure that load on a shared machine does not
distort). The last line is one JSON object.
"""

import json
import os
import statistics
import time

import psutil
from absl import app, flags

from services.data import batch as batch_lib, client, corpus, mixture

_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir", None, "Corpus to serve (default: the default corpus, built if missing)."
)
_MIXTURE = flags.DEFINE_string(
    "mixture",
    "text=0.5,code=0.25,markup=0.1,code_adjacent=0.1,synthetic_code=0.05",
    "Mixture to serve.",
)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch size.")
_SEQ = flags.DEFINE_integer("seq_len", 2048, "Sequence length.")
_STEPS = flags.DEFINE_integer("steps", 400, "Batches per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds of each kind.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed batches before each gRPC round.")
_READ_AHEAD = flags.DEFINE_integer("read_ahead", 0, "The server's --read_ahead.")
_ENCODING = flags.DEFINE_enum(
    "encoding", "packed", ["packed", "full"], "Batch encoding on the wire."
)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main(argv):
    del argv
    batch_lib.keep_freed_memory()  # as the data binary does; for the client and the in-process reader alike
    path = _CORPUS_DIR.value or corpus.default_corpus_dir()
    if not _CORPUS_DIR.value:
        corpus.ensure_default_corpus(path)
    mix = mixture.Mixture.parse(_MIXTURE.value)
    B, L, N = _BATCH.value, _SEQ.value, _STEPS.value
    tokens_per_round = N * B * L

    server = client.start_local_server(
        path, build_default_corpus=False, extra_args=[f"--read_ahead={_READ_AHEAD.value}"]
    )
    server_proc, me = psutil.Process(server.process.pid), psutil.Process()
    data = client.DataClient(server.address)
    reader = mixture.BatchReader(corpus.Corpus(path), mix, seed=0, global_batch_size=B, seq_len=L)
    grpc_rates, local_rates, server_cpu, client_cpu, local_cpu = [], [], [], [], []
    try:
        for r in range(_ROUNDS.value):
            start = r * (N + _WARMUP.value)
            with data.stream(
                mix,
                seed=0,
                global_batch_size=B,
                seq_len=L,
                start_step=start,
                num_steps=N + _WARMUP.value,
                prefetch=4,
                encoding=_ENCODING.value,
            ) as stream:
                for _ in range(_WARMUP.value):
                    next(stream)
                s0, c0, t0 = _cpu(server_proc), _cpu(me), time.perf_counter()
                n = sum(1 for _ in stream)
                dt = time.perf_counter() - t0
                server_cpu.append((_cpu(server_proc) - s0) / n)
                client_cpu.append((_cpu(me) - c0) / n)
            assert n == N, n
            grpc_rates.append(tokens_per_round / dt)

            c0, t0 = time.process_time(), time.perf_counter()
            for k in range(start, start + N):
                reader.batch(k)
            dt = time.perf_counter() - t0
            local_cpu.append((time.process_time() - c0) / N)
            local_rates.append(tokens_per_round / dt)
            print(
                f"round {r}: gRPC {grpc_rates[-1] / 1e6:.1f}M tokens/s "
                f"(server {server_cpu[-1] * 1e3:.3f} + client {client_cpu[-1] * 1e3:.3f} ms CPU/batch), "
                f"in-process {local_rates[-1] / 1e6:.1f}M tokens/s ({local_cpu[-1] * 1e3:.3f} ms CPU/batch)",
                flush=True,
            )
    finally:
        data.close()
        server.stop()

    grpc_rate, local_rate = statistics.median(grpc_rates), statistics.median(local_rates)
    result = {
        "bench": "data_service",
        "batch": [B, L],
        "encoding": _ENCODING.value,
        "mixture": _MIXTURE.value,
        "steps_per_round": N,
        "rounds": _ROUNDS.value,
        "grpc_tokens_per_s": round(grpc_rate),
        "inprocess_tokens_per_s": round(local_rate),
        "ratio": round(grpc_rate / local_rate, 3),
        "server_cpu_ms_per_batch": round(statistics.median(server_cpu) * 1e3, 3),
        "client_cpu_ms_per_batch": round(statistics.median(client_cpu) * 1e3, 3),
        "inprocess_cpu_ms_per_batch": round(statistics.median(local_cpu) * 1e3, 3),
        "targets": {"grpc_tokens_per_s": 20_000_000, "ratio": 0.8},
        "cpus": os.cpu_count(),
        "server_read_ahead": _READ_AHEAD.value,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"gRPC {grpc_rate / 1e6:.1f}M tokens/s, in-process {local_rate / 1e6:.1f}M tokens/s, ratio {result['ratio']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
