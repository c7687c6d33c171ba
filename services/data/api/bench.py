"""Data service throughput: `bazel run //services/data/api:bench`.

Serves one mixture of the default corpus (built into its cache on first
use) from the data binary in a separate process and reads it with the client
over loopback gRPC; then assembles the same batches in this process with the
library. Rounds alternate between the two so that both see the same machine
load; the medians and their ratio are reported, together with the CPU time
each side spent per batch (a figure that load on a shared machine does not
distort). Each round also streams the same batches one to a message
(StreamBatches), to show what grouping them (StreamBatchGroups) buys. The
last line is one JSON object.
"""

import json
import os
import statistics
import time

import psutil
from absl import app, flags

from services.data import batch as batch_lib, corpus, mixture
from services.data.api import client, wire

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
_PER_MESSAGE = flags.DEFINE_integer(
    "batches_per_message", 0, "Batches per gRPC message (0: the server's choice)."
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
    data_token_bytes = wire.token_width(data.list_sources().vocab_size)
    reader = mixture.BatchReader(corpus.Corpus(path), mix, seed=0, global_batch_size=B, seq_len=L)
    grpc_rates, single_rates, local_rates = [], [], []
    server_cpu, client_cpu, single_cpu, local_cpu = [], [], [], []

    def grpc_round(start: int, per_message: int) -> tuple[float, float, float]:
        """tokens/s, server and client CPU seconds per batch."""
        with data.stream(
            mix,
            seed=0,
            global_batch_size=B,
            seq_len=L,
            start_step=start,
            num_steps=N + _WARMUP.value,
            prefetch=4,
            encoding=_ENCODING.value,
            batches_per_message=per_message,
        ) as stream:
            for _ in range(_WARMUP.value):
                next(stream)
            s0, c0, t0 = _cpu(server_proc), _cpu(me), time.perf_counter()
            n = sum(1 for _ in stream)
            dt = time.perf_counter() - t0
        assert n == N, n
        return tokens_per_round / dt, (_cpu(server_proc) - s0) / n, (_cpu(me) - c0) / n

    try:
        for r in range(_ROUNDS.value):
            start = r * (N + _WARMUP.value)
            rate, s_cpu, c_cpu = grpc_round(start, _PER_MESSAGE.value)
            grpc_rates.append(rate)
            server_cpu.append(s_cpu)
            client_cpu.append(c_cpu)
            rate, s_cpu, c_cpu = grpc_round(start, 1)
            single_rates.append(rate)
            single_cpu.append((s_cpu, c_cpu))

            c0, t0 = time.process_time(), time.perf_counter()
            for k in range(start, start + N):
                reader.batch(k)
            dt = time.perf_counter() - t0
            local_cpu.append((time.process_time() - c0) / N)
            local_rates.append(tokens_per_round / dt)
            print(
                f"round {r}: gRPC {grpc_rates[-1] / 1e6:.1f}M tokens/s "
                f"(server {server_cpu[-1] * 1e3:.3f} + client {client_cpu[-1] * 1e3:.3f} ms CPU/batch), "
                f"one batch a message {single_rates[-1] / 1e6:.1f}M tokens/s "
                f"({single_cpu[-1][0] * 1e3:.3f} + {single_cpu[-1][1] * 1e3:.3f} ms), "
                f"in-process {local_rates[-1] / 1e6:.1f}M tokens/s ({local_cpu[-1] * 1e3:.3f} ms CPU/batch)",
                flush=True,
            )
    finally:
        data.close()
        server.stop()

    grpc_rate, local_rate = statistics.median(grpc_rates), statistics.median(local_rates)
    single_rate = statistics.median(single_rates)
    per_message = _PER_MESSAGE.value or wire.batches_per_message(
        0, B, L, packed=_ENCODING.value == "packed", token_bytes=data_token_bytes
    )
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
        "batches_per_message": per_message,
        "one_per_message_tokens_per_s": round(single_rate),
        "one_per_message_ratio": round(single_rate / local_rate, 3),
        "server_cpu_ms_per_batch": round(statistics.median(server_cpu) * 1e3, 3),
        "client_cpu_ms_per_batch": round(statistics.median(client_cpu) * 1e3, 3),
        "inprocess_cpu_ms_per_batch": round(statistics.median(local_cpu) * 1e3, 3),
        "targets": {"grpc_tokens_per_s": 20_000_000, "ratio": 0.8},
        "cpus": os.cpu_count(),
        "server_read_ahead": _READ_AHEAD.value,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"gRPC {grpc_rate / 1e6:.1f}M tokens/s ({per_message} batches a message), "
        f"in-process {local_rate / 1e6:.1f}M tokens/s, ratio {result['ratio']} "
        f"(one batch a message: {result['one_per_message_ratio']})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
