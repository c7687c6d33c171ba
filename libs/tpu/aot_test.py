"""Where libtpu comes from, and the environment each use gives JAX (no TPU, no JAX import)."""

import os
import sys

import pytest

from libs.tpu import aot


@pytest.fixture
def runfiles(tmp_path, monkeypatch):
    """A runfiles tree holding @libtpu_wheel's libtpu.so, and no libtpu settings."""
    library = tmp_path / "libtpu_wheel" / "site" / "libtpu" / "libtpu.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")
    monkeypatch.setenv("RUNFILES_DIR", str(tmp_path))
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    monkeypatch.delenv("TPU_SKIP_MDS_QUERY", raising=False)
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    return str(library)


def test_the_runtime_entry_finds_libtpu_in_its_runfiles_and_keeps_the_metadata_server(runfiles):
    assert aot.find_libtpu() == runfiles
    assert aot.use_libtpu_runtime() == runfiles
    assert os.environ["TPU_LIBRARY_PATH"] == runfiles
    # A TPU VM's libtpu reads the slice's topology from its metadata server.
    assert "TPU_SKIP_MDS_QUERY" not in os.environ


def test_the_compile_tool_skips_the_metadata_server(runfiles):
    assert aot.use_libtpu() == runfiles
    assert os.environ["TPU_LIBRARY_PATH"] == runfiles
    assert os.environ["TPU_SKIP_MDS_QUERY"] == "1"


def test_a_given_library_path_wins(runfiles, tmp_path, monkeypatch):
    own = tmp_path / "own" / "libtpu.so"
    own.parent.mkdir()
    own.write_bytes(b"")
    monkeypatch.setenv("TPU_LIBRARY_PATH", str(own))
    assert aot.use_libtpu_runtime() == str(own)


def test_no_libtpu_is_a_clear_error(runfiles, monkeypatch):
    monkeypatch.setattr(aot, "find_libtpu", lambda: None)
    with pytest.raises(RuntimeError, match="libtpu not found.*TPU_LIBRARY_PATH"):
        aot.use_libtpu_runtime()
    assert "TPU_LIBRARY_PATH" not in os.environ


def test_the_runtime_entry_must_come_before_jax(runfiles, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", object())
    with pytest.raises(RuntimeError, match="before JAX is imported"):
        aot.use_libtpu_runtime()
