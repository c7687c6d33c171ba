"""Errors of the evaluation library, each naming the request field at fault.

The servicer maps them to gRPC status codes (InvalidArgument -> INVALID_ARGUMENT,
NotFound -> NOT_FOUND, Unavailable -> UNAVAILABLE, FailedPrecondition ->
FAILED_PRECONDITION); the library itself knows nothing of gRPC.
"""

from __future__ import annotations


class EvalError(Exception):
    """Base: `field` is the request field the message is about ("" if none)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(EvalError):
    """The request is malformed: unknown task or suite, bad number."""


class NotFound(EvalError):
    """Something the request names does not exist: a checkpoint, a run, task data."""


class Unavailable(EvalError):
    """A dependency (the trainer, a judge endpoint) cannot be reached."""


class FailedPrecondition(EvalError):
    """The request is fine but this machine cannot serve it (e.g. no sandbox)."""
