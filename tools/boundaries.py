"""Two rules the repository keeps: which Python imports cross a service
boundary, and that no file names a path outside the repository.

Code of one service (services/<a>/...), of studies/ and of tests/ may use
another service only through that service's gRPC edge, services.<b>.api (its
client, its main, its test fixtures) and the protos. Bazel visibility enforces
the rule on BUILD dependencies; this check enforces it on the imports
themselves, which a dependency that arrives transitively would let through.
"""

from __future__ import annotations

import ast
import re
from typing import Iterator

# (importing file, imported module) pairs allowed across a boundary, each with
# its reason. The eval service reads a corpus's held-out slice straight from
# disk: the corpus format is the contract there (services/data/corpus.py).
ALLOWED = {
    ("services/eval/heldout.py", "services.data.corpus"),
    ("services/eval/heldout_test.py", "services.data.corpus"),
}


def owner(path: str) -> str:
    """The service a file belongs to ("" for studies/, tests/ and the rest)."""
    parts = path.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "services" else ""


def imported_modules(source: str) -> Iterator[str]:
    """Every module (or module attribute) a source imports, at any depth:
    `from a.b import c` gives "a.b.c"."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def violations(path: str, source: str) -> list[str]:
    """One line per import in `source` (the file at `path`, relative to the
    repository root) of another service's core."""
    found = []
    for module in imported_modules(source):
        parts = module.split(".")
        if parts[0] != "services" or len(parts) < 3 or parts[1] == owner(path):
            continue
        if parts[2] == "api" or (path, ".".join(parts[:3])) in ALLOWED:
            continue
        found.append(f"{path}: imports {module}; use services.{parts[1]}.api or the protos")
    return found


# Paths that exist on one machine only: the folder beside a checkout, a home
# or work folder, Bazel's output base. A clone anywhere else has none of them,
# so code, tests, BUILD files and docs name paths inside the repository,
# from tmp_path, or from Bazel's runfiles instead.
_MACHINE_PATH = re.compile(
    r"\.\./shared\b"  # a folder beside the checkout
    r"|(?<![\w.~-])/(?:work|root|home)/"  # a machine's own top-level folders
    r"|_bazel_(?:root)|/\.cache/bazel/"  # Bazel's output base
)


def machine_paths(path: str, text: str) -> list[str]:
    """One line per mention of a machine-local path in `text` (the file at `path`)."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _MACHINE_PATH.search(line)
        if match:
            found.append(
                f"{path}:{number}: names {match.group(0)!r}, a path outside the repository"
            )
    return found
