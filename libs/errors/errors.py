"""The one error type of the libraries: a request field and what is wrong with it.

`field` is the path of the offending field as the request spells it
("mixture.stages[0].weights[1].weight"; "" when no one field is at fault).
The kind of failure is the subclass, named after the gRPC status the edge
answers with (libs/serving/status.py holds that mapping); nothing here knows
gRPC.
"""

from __future__ import annotations


class FieldError(ValueError):
    """Base of the kinds below; catch it to catch any of them."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, parent: str, *, root: str = "") -> FieldError:
        """The same error named from an enclosing message whose field `parent`
        carried this error's request: a leading `root` of the path (the inner
        request's own name for that message) gives way to `parent`."""
        rest = self.field
        if root and (rest == root or rest.startswith((root + ".", root + "["))):
            rest = rest[len(root) :]
        elif rest and not rest.startswith("["):
            rest = "." + rest
        return type(self)(parent + rest, self.message)


class InvalidArgument(FieldError):
    """The field's value is malformed or out of its allowed set."""


class NotFound(FieldError):
    """Something the field names does not exist: a source, a checkpoint, a run."""


class AlreadyExists(FieldError):
    """What the field names exists already (a run_id that is running)."""


class OutOfRange(FieldError):
    """A position past the end: a step past a bounded mixture or its epoch cap."""


class FailedPrecondition(FieldError):
    """The request is fine but this machine cannot serve it now (no sandbox)."""


class Unavailable(FieldError):
    """A dependency the field names (a service, a judge endpoint) cannot be reached."""
