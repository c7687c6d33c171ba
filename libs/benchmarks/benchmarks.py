"""Where the evaluation benchmarks' files are, and that they are the files we think.

The files live in the repository under third_party/benchmarks/<task>/, one
folder a task, each with a PROVENANCE.md giving origin, licence and a table
of every file's size and sha256. That table is the one record of the
checksums: `verify_task` reads it and refuses a file whose bytes differ,
naming the file. The data service decontaminates its corpora against these
files and the eval service scores on them, so both must read the same bytes.

One override for every tool: the environment variable $CODE_LAB_BENCHMARKS,
or the tools' `--benchmarks_dir` flag (which wins). A folder without
provenance notes (a test's planted benchmark, a user's own) is read as it is.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re

from libs.errors import errors

# The one environment variable that points the tools at another folder.
ENV = "CODE_LAB_BENCHMARKS"
# The file in each task folder that records origin, licence and checksums.
PROVENANCE = "PROVENANCE.md"
# The flag's help, shared by every tool that defines --benchmarks_dir.
FLAG_HELP = (
    f"Folder of benchmark files (one sub-folder a task); default ${ENV}, else the "
    "repository's third_party/benchmarks."
)

_ROW = re.compile(r"^\|\s*([^|\s][^|]*?)\s*\|\s*([\d,]+)\s*\|\s*([0-9a-f]{64})\s*\|\s*$")


def bundled_dir() -> str:
    """third_party/benchmarks of this checkout (or of the Bazel runfiles tree,
    which mirrors the repository's layout)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(repo, "third_party", "benchmarks")


def default_dir() -> str:
    """$CODE_LAB_BENCHMARKS if set, else the repository's copy."""
    return os.environ.get(ENV) or bundled_dir()


def checksums(task_dir: str) -> dict[str, tuple[int, str]]:
    """File name -> (bytes, sha256) from the task folder's PROVENANCE.md; {} when
    the folder has no provenance note."""
    path = os.path.join(task_dir, PROVENANCE)
    if not os.path.exists(path):
        return {}
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _ROW.match(line.strip())
            if m:
                table[m.group(1)] = (int(m.group(2).replace(",", "")), m.group(3))
    if not table:
        raise errors.FailedPrecondition(
            "benchmarks_dir", f"{path}: no '| file | bytes | sha256 |' rows"
        )
    return table


def verify_file(task_dir: str, name: str) -> None:
    """Refuses `task_dir/name` unless its size and sha256 are those its
    provenance note records. Files of a folder without a note pass."""
    table = checksums(task_dir)
    if not table:
        return
    path = os.path.join(task_dir, name)
    if name not in table:
        raise errors.FailedPrecondition(
            "benchmarks_dir", f"{path}: not listed in {os.path.join(task_dir, PROVENANCE)}"
        )
    stat = os.stat(path)
    _verify(path, stat.st_size, stat.st_mtime_ns, *table[name])


def verify_task(task_dir: str) -> None:
    """Every file the task folder's provenance note lists, checked."""
    for name in checksums(task_dir):
        verify_file(task_dir, name)


def sha256(path: str) -> str:
    """The file's sha256 (hex). A process hashes each file once; a file
    rewritten since (another size or mtime) is hashed again."""
    stat = os.stat(path)
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _verify(path: str, size: int, mtime_ns: int, want_size: int, want_sha: str) -> None:
    if size != want_size:
        raise errors.FailedPrecondition(
            "benchmarks_dir", f"{path}: {size} bytes, its provenance note records {want_size}"
        )
    got = _sha256(path, size, mtime_ns)
    if got != want_sha:
        raise errors.FailedPrecondition(
            "benchmarks_dir", f"{path}: sha256 {got}, its provenance note records {want_sha}"
        )
