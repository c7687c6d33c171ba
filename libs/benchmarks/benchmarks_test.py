"""The repository's benchmark copy: every task has a provenance note whose
checksums hold, and a changed file is refused by name."""

import os
import shutil

import pytest

from libs.benchmarks import benchmarks
from libs.errors import errors

TASKS = (
    "arc_easy boolq cb copa hellaswag mbpp mt_bench nq_open piqa quac social_iqa "
    "triviaqa vicuna_bench winogrande"
).split()


def test_every_bundled_task_has_a_note_and_its_files_match_it():
    root = benchmarks.bundled_dir()
    assert sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))) == TASKS
    for task in TASKS:
        task_dir = os.path.join(root, task)
        table = benchmarks.checksums(task_dir)
        files = sorted(f for f in os.listdir(task_dir) if f != benchmarks.PROVENANCE)
        assert sorted(table) == files, task
        benchmarks.verify_task(task_dir)


def test_a_changed_file_is_refused_naming_it(tmp_path):
    task_dir = tmp_path / "copa"
    shutil.copytree(os.path.join(benchmarks.bundled_dir(), "copa"), task_dir)
    benchmarks.verify_file(str(task_dir), "val.jsonl")
    data = (task_dir / "val.jsonl").read_bytes()
    (task_dir / "val.jsonl").write_bytes(data[:-2] + b"X\n")
    with pytest.raises(errors.FailedPrecondition, match=r"copa/val\.jsonl: sha256 [0-9a-f]{64}"):
        benchmarks.verify_file(str(task_dir), "val.jsonl")
    (task_dir / "val.jsonl").write_bytes(data[:100])
    with pytest.raises(errors.FailedPrecondition, match=r"val\.jsonl: 100 bytes"):
        benchmarks.verify_file(str(task_dir), "val.jsonl")


def test_an_unlisted_file_is_refused_and_a_folder_without_a_note_is_read_as_is(tmp_path):
    task_dir = tmp_path / "copa"
    shutil.copytree(os.path.join(benchmarks.bundled_dir(), "copa"), task_dir)
    (task_dir / "extra.jsonl").write_text("{}\n")
    with pytest.raises(errors.FailedPrecondition, match="extra.jsonl: not listed"):
        benchmarks.verify_file(str(task_dir), "extra.jsonl")
    plain = tmp_path / "mine"
    plain.mkdir()
    (plain / "x.jsonl").write_text("{}\n")
    benchmarks.verify_file(str(plain), "x.jsonl")


def test_the_environment_variable_overrides_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(benchmarks.ENV, str(tmp_path))
    assert benchmarks.default_dir() == str(tmp_path)
    monkeypatch.delenv(benchmarks.ENV)
    assert benchmarks.default_dir() == benchmarks.bundled_dir()
