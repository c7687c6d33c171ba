"""The micro study on Ray equals the micro study on the local backend.

The runner binary runs studies/specs/micro.textproto twice against the same
small corpus: with the default local backend, and with --backend=ray on a
Ray cluster of this machine with two slices. Both reports' Table 2 (every
score and token count) must be the same, every phase trained once, and the
child phase (balanced->text) must have started after its parent's final
checkpoint was recorded.
"""

import json
import os
import subprocess

import pytest

from libs.serving import process
from services.data.api import testing as data_testing
from studies import plan as plan_lib
from studies import spec

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs", "micro.textproto")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return data_testing.build_small_corpus(str(tmp_path_factory.mktemp("data")))


def _run(out, corpus_path, *extra):
    command = process.module_command("studies.runner_main") + [
        f"--spec={SPEC}",
        f"--out={out}",
        f"--data_flag=--corpus_dir={corpus_path}",
        "--data_flag=--nobuild_default_corpus",
        f"--eval_flag=--cache_dir={os.path.join(out, 'eval-cache')}",
        *extra,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=1200, env=process.child_env()
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _table2(out):
    report = open(os.path.join(out, "report.md")).read()
    section = report.split("## Table 2", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_the_micro_study_on_ray_reports_what_the_local_backend_does(tmp_path, corpus):
    local, on_ray = str(tmp_path / "local"), str(tmp_path / "ray")
    _run(local, corpus.path)
    output = _run(on_ray, corpus.path, "--backend=ray", "--ray_slices=2")
    assert "gang of 1 for run" in output
    rows = _table2(on_ray)
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["balanced", "balanced-to-text"]
    assert rows == _table2(local)

    init, child = plan_lib.build(spec.load(SPEC)).phases
    with open(os.path.join(on_ray, "state.json")) as f:
        phases = json.load(f)["phases"]
    parent_record, child_record = phases[init.fingerprint], phases[child.fingerprint]
    assert child_record["parent_uri"] == parent_record["checkpoint_uri"]
    assert child_record["started_at"] >= parent_record["trained_at"]
    assert child_record["attempts"] == parent_record["attempts"] == 1
