"""Which Python imports cross a service boundary.

Code of one service (services/<a>/...), of studies/ and of tests/ may use
another service only through that service's gRPC edge, services.<b>.api (its
client, its main, its test fixtures) and the protos. Bazel visibility enforces
the rule on BUILD dependencies; this check enforces it on the imports
themselves, which a dependency that arrives transitively would let through.
"""

from __future__ import annotations

import ast
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
