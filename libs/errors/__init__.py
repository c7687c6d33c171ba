"""One field error type for every library (see errors.py)."""

from libs.errors.errors import (  # noqa: F401
    AlreadyExists,
    FailedPrecondition,
    FieldError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
