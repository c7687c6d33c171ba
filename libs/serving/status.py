"""The one mapping between libs/errors and gRPC statuses, for both ends of a call.

A server ends a call with `abort(context, error)`: the status code of the
error's kind, its text as the details string people read, and its field path
in a google.rpc.BadRequest field violation that programs read. A client gets
the error back with `field_error(rpc_error)` (same kind, same field), so no
caller ever parses a details string.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs import errors

_CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}
_KINDS = {code: kind for kind, code in _CODES.items()}


def code_of(error: errors.FieldError) -> grpc.StatusCode:
    return next(_CODES[k] for k in type(error).__mro__ if k in _CODES)


def to_status(error: errors.FieldError) -> grpc.Status:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=error.field, description=error.message
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(
        status_pb2.Status(code=code_of(error).value[0], message=str(error), details=[detail])
    )


def abort(context: grpc.ServicerContext, error: errors.FieldError) -> NoReturn:
    """Ends the call with `error`'s status (see the module docstring)."""
    context.abort_with_status(to_status(error))


def field_violations(e: grpc.RpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The field violations a failed call's status carries ([] if none)."""
    status = rpc_status.from_call(e)
    found = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(bad.field_violations)
    return found


def field_error(e: grpc.RpcError) -> errors.FieldError | None:
    """The field error a failed call carries, of the kind its code says; None
    when the status names no field (the server did not use abort)."""
    violations = field_violations(e)
    kind = _KINDS.get(e.code())
    if not violations or kind is None:
        return None
    return kind(violations[0].field, violations[0].description)
