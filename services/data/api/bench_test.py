"""Pulse of the benchmark binary on a small corpus: it runs and ends with one
JSON line."""

import json
import subprocess
import sys

from libs.serving import process
from services.data.api import testing


def test_bench_prints_a_json_line(tmp_path):
    corpus = testing.build_small_corpus(str(tmp_path))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.data.api.bench",
            f"--corpus_dir={corpus.path}",
            "--mixture=text=0.7,code=0.3",
            "--batch_size=2",
            "--seq_len=64",
            "--steps=5",
            "--rounds=1",
            "--warmup=2",
        ],
        env=process.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        result["grpc_tokens_per_s"] > 0
        and result["inprocess_tokens_per_s"] > 0
        and result["ratio"] > 0
    )
    assert result["batch"] == [2, 64]
    # 2 x 64 packed tokens are 256 bytes: the server's group is capped at 1024 batches.
    assert result["batches_per_message"] == 1024 and result["one_per_message_tokens_per_s"] > 0
