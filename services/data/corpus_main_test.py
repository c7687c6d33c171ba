"""The corpus CLI end to end: build from a spec file, then inspect a mixture."""

import json
import subprocess
import sys

from libs.serving import process
from services.data.api import testing


def run(*args):
    out = subprocess.run(
        [sys.executable, "-m", "services.data.corpus_main", *args],
        env=process.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_build_then_inspect(tmp_path):
    paths = testing.write_source_files(str(tmp_path / "raw"))
    spec = {"sources": [s.to_json() for s in testing.source_specs(paths)]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "bench").mkdir()
    out = run(
        "build",
        f"--corpus_dir={tmp_path / 'corpus'}",
        f"--sources={tmp_path / 'spec.json'}",
        "--vocab_size=300",
        f"--benchmarks_dir={tmp_path / 'bench'}",
    )
    assert "decontamination:" in out and "code: " in out and "shards" in out

    out = run(
        "inspect",
        f"--corpus_dir={tmp_path / 'corpus'}",
        "--mixture=text=0.5,code=0.5",
        "--token_budget=4000",
        "--batch_size=2",
        "--seq_len=64",
    )
    assert "code_adjacent" in out  # the sources table
    assert "plan over 4000 tokens" in out and "2000 tokens" in out
    assert "sample batch: step 0" in out and "--- row 0 segment 1" in out

    (tmp_path / "mix.json").write_text(
        json.dumps(
            {
                "name": "cool",
                "stages": [
                    {"until_tokens": 1000, "weights": {"text": 1}},
                    {"weights": [{"source": "code", "weight": 1}]},
                ],
            }
        )
    )
    out = run(
        "inspect",
        f"--corpus_dir={tmp_path / 'corpus'}",
        f"--mixture={tmp_path / 'mix.json'}",
        "--step=20",
        "--batch_size=2",
        "--seq_len=32",
    )
    assert "mixture cool" in out and "stage 1" in out
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.data.corpus_main",
            "inspect",
            f"--corpus_dir={tmp_path / 'corpus'}",
            "--mixture=text=-1",
        ],
        env=process.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "mixture.stages[0].weights[0].weight" in bad.stderr
