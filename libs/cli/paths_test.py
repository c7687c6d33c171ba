"""Relative paths resolve from the user's folder under `bazel run`."""

import os

from libs.cli import paths


def test_relative_path_resolves_from_the_bazel_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))
    assert paths.resolve("studies/specs/x.textproto") == str(tmp_path / "studies/specs/x.textproto")


def test_without_bazel_the_current_directory_is_the_users(monkeypatch, tmp_path):
    monkeypatch.delenv("BUILD_WORKING_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("a/b") == os.path.join(str(tmp_path), "a", "b")


def test_uris_absolute_and_empty_paths_pass_through(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))
    assert paths.resolve("gs://bucket/x") == "gs://bucket/x"
    assert paths.resolve("/abs/x") == "/abs/x"
    assert paths.resolve("") == ""
    assert paths.resolve(None) is None
