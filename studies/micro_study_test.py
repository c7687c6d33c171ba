"""The study runner end to end through the three real services, as processes.

The micro study (studies/specs/micro.textproto: a balanced model and
balanced->text started from it) is run with the runner binary, killed with
SIGKILL once its second phase has committed a checkpoint, and run again: the
first phase is reused, the second resumes from its checkpoint, and the report
has both arms. A third run, pointed at a fresh trainer service, finds
everything done: it writes the report without starting any training.
"""

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from libs.serving import process
from proto import trainer_pb2, trainer_pb2_grpc
from services.data.api import testing as data_testing
from studies import plan as plan_lib
from studies import spec

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs", "micro.textproto")
RUNNER = process.module_command("studies.runner_main")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return data_testing.build_small_corpus(str(tmp_path_factory.mktemp("data")))


def _command(out, corpus_path, *extra):
    return RUNNER + [
        f"--spec={SPEC}",
        f"--out={out}",
        f"--data_flag=--corpus_dir={corpus_path}",
        "--data_flag=--nobuild_default_corpus",
        f"--eval_flag=--cache_dir={os.path.join(out, 'eval-cache')}",
        *extra,
    ]


def _wait_for(path, process_, log, timeout=600):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process_.poll() is not None:
            pytest.fail(
                f"the runner exited ({process_.returncode}) before {path} appeared:\n"
                + open(log).read()
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear in {timeout}s:\n" + open(log).read())
        time.sleep(0.2)


def _table2_rows(report):
    section = report.split("## Table 2", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")][1:]


def test_killed_study_resumes_and_a_finished_one_only_reports(tmp_path, corpus):
    out = str(tmp_path / "study")
    study = spec.load(SPEC)
    init, cont = plan_lib.build(study).phases
    log = str(tmp_path / "run1.log")

    # Run 1: SIGKILL once the second phase has committed its step-10 checkpoint.
    with open(log, "w") as f:
        first = subprocess.Popen(
            _command(out, corpus.path), stdout=f, stderr=subprocess.STDOUT, env=process.child_env()
        )
    try:
        _wait_for(os.path.join(out, "checkpoints", cont.run_id, "checkpoints", "10"), first, log)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()

    # Run 2: continues. The orphaned services of run 1 die with it (the
    # runner waits for them), the finished phase is reused, the killed one resumes.
    second = subprocess.run(
        _command(out, corpus.path),
        capture_output=True,
        text=True,
        timeout=900,
        env=process.child_env(),
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "[1/2] balanced/init: finished before, reused" in output
    assert f"run {cont.run_id} resumed from its last checkpoint" in output
    report = open(os.path.join(out, "report.md")).read()
    rows = _table2_rows(report)
    assert [r.split("|")[1].strip() for r in rows] == ["balanced", "balanced-to-text"]
    for row in rows:
        nl_reasoning = row.split("|")[3].strip()
        assert nl_reasoning != "—", row  # evaluated
    assert os.path.exists(os.path.join(out, "figures", "loss_curves.png"))

    # Run 3: everything is recorded; a fresh trainer is never asked to train.
    trainer = process.start(process.module_command("services.trainer.api.main") + ["--serve"])
    try:
        started = time.monotonic()
        third = subprocess.run(
            _command(out, corpus.path, f"--trainer_address={trainer.address}"),
            capture_output=True,
            text=True,
            timeout=300,
            env=process.child_env(),
        )
        elapsed = time.monotonic() - started
        assert third.returncode == 0, third.stdout + third.stderr
        assert "every phase is trained and evaluated" in third.stdout
        assert "reused 2," in third.stdout
        assert elapsed < 60, f"a finished study took {elapsed:.0f}s to report"
        with grpc.insecure_channel(trainer.address) as channel:
            runs = trainer_pb2_grpc.TrainerServiceStub(channel).ListRuns(
                trainer_pb2.ListRunsRequest(), timeout=30
            )
        assert list(runs.runs) == []
    finally:
        trainer.stop()
