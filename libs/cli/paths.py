"""Paths given on a command line, resolved the way the user meant them.

`bazel run` starts a binary in its runfiles folder, not where the user typed
the command, so a relative `--spec=studies/specs/tiny.textproto` would be
looked up in the wrong place. Bazel exports the user's folder as
`BUILD_WORKING_DIRECTORY`; every tool that takes a path resolves it here.
"""

from __future__ import annotations

import os

# Bazel sets this for `bazel run`; a binary started directly runs where the user is.
_WORKDIR_ENV = "BUILD_WORKING_DIRECTORY"


def user_dir() -> str:
    """The folder the user ran the command from."""
    return os.environ.get(_WORKDIR_ENV) or os.getcwd()


def resolve(path: str | None) -> str | None:
    """`path` made absolute against the user's folder; URIs (gs://...), absolute
    paths, "~" paths and empty values are returned as they are (expanded for "~")."""
    if not path or "://" in path:
        return path
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(user_dir(), path))
