"""The micro study with everything on gs:// (a GCS emulator started here).

The runner binary writes state, curves, the report and every checkpoint
under gs://bkt/micro, is killed (SIGKILL) once the second phase has
committed its step-10 checkpoint in the bucket, and is run again: it
resumes from what the bucket holds and ends with the losses of an
uninterrupted run on a local directory. Nothing may appear on local disk
under a folder named "gs:".

Needs the trainer's own writes (services/trainer/train.py: run directory,
metrics.jsonl, TensorBoard; services/trainer/events.py: events.jsonl) to go
through libs/storage; until then it is tagged manual in studies/BUILD.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from libs import storage
from libs.serving import process
from libs.storage import testing as gcs_testing
from services.data.api import testing as data_testing
from studies import plan as plan_lib
from studies import spec

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs", "micro.textproto")


def _command(out, corpus_path, cache):
    return process.module_command("studies.runner_main") + [
        f"--spec={SPEC}",
        f"--out={out}",
        f"--data_flag=--corpus_dir={corpus_path}",
        "--data_flag=--nobuild_default_corpus",
        f"--eval_flag=--cache_dir={cache}",
    ]


def _final_losses(state_text):
    phases = json.loads(state_text)["phases"]
    return {r["run_id"]: r["final_loss"] for r in phases.values()}


def test_a_killed_study_on_gcs_resumes_from_the_bucket(tmp_path):
    corpus = data_testing.build_small_corpus(str(tmp_path / "data"))
    init, cont = plan_lib.build(spec.load(SPEC)).phases
    local = str(tmp_path / "local")
    done = subprocess.run(
        _command(local, corpus.path, str(tmp_path / "cache-local")),
        capture_output=True,
        text=True,
        timeout=900,
        env=process.child_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = _final_losses(open(os.path.join(local, "state.json")).read())

    with gcs_testing.gcs_emulator(bucket="bkt") as gcs:
        out = gcs.uri("micro")
        marker = storage.join(
            out, "checkpoints", cont.run_id, "checkpoints", "10", "commit_success.txt"
        )
        log = str(tmp_path / "run1.log")
        cwd = str(tmp_path / "cwd")
        os.makedirs(cwd)
        with open(log, "w") as f:
            first = subprocess.Popen(
                _command(out, corpus.path, str(tmp_path / "cache")),
                stdout=f,
                stderr=subprocess.STDOUT,
                env=process.child_env(),
                cwd=cwd,
            )
        try:
            deadline = time.monotonic() + 600
            while not storage.exists(marker):
                if first.poll() is not None:
                    pytest.fail(f"the runner exited ({first.returncode}):\n" + open(log).read())
                assert time.monotonic() < deadline, open(log).read()
                time.sleep(0.5)
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            if first.poll() is None:
                first.kill()
        second = subprocess.run(
            _command(out, corpus.path, str(tmp_path / "cache")),
            capture_output=True,
            text=True,
            timeout=900,
            env=process.child_env(),
            cwd=cwd,
        )
        output = second.stdout + second.stderr
        assert second.returncode == 0, output
        assert "[1/2] balanced/init: finished before, reused" in output
        assert f"run {cont.run_id} resumed from its last checkpoint" in output
        got = _final_losses(storage.read_text(storage.join(out, "state.json")))
        assert got.keys() == expected.keys()
        for run_id, loss in expected.items():
            assert got[run_id] == pytest.approx(loss, rel=1e-5), run_id
        names = storage.listdir(out)
        assert {"state.json", "report.md", "figures", "curves", "checkpoints"} <= set(names)
        run_dir = storage.join(out, "checkpoints", cont.run_id)
        assert {"events.jsonl", "metrics.jsonl"} <= set(storage.listdir(run_dir))
        assert not os.path.exists(os.path.join(cwd, "gs:"))
