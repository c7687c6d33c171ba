"""The field error survives a real call: code, text and field path."""

import grpc
import pytest

from libs import errors
from libs.serving import server, status

RAISED = {
    "invalid": errors.InvalidArgument("spec.phases[0].token_budget", "must be positive, got -1"),
    "exists": errors.AlreadyExists("spec.run_id", "'r' is already running"),
    "range": errors.OutOfRange("start_step", "the mixture ends after 7 steps, got 9"),
    "nofield": errors.Unavailable("", "the judge is down"),
}


def _echo_error(request: bytes, context):
    status.abort(context, RAISED[request.decode()])


def _plain_abort(request: bytes, context):
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "seq_len: too short")


def _add(_, grpc_server):
    handlers = {
        "Fail": grpc.unary_unary_rpc_method_handler(_echo_error),
        "Plain": grpc.unary_unary_rpc_method_handler(_plain_abort),
    }
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))


@pytest.fixture(scope="module")
def channel():
    running = server.serve([(_add, None)], ["t.T"])
    with grpc.insecure_channel(running.address) as ch:
        yield ch
    running.stop(0)


def _fail(channel, method, name):
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(f"/t.T/{method}")(name.encode(), timeout=10)
    return e.value


@pytest.mark.parametrize(
    "name, code",
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("exists", grpc.StatusCode.ALREADY_EXISTS),
        ("range", grpc.StatusCode.OUT_OF_RANGE),
        ("nofield", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_the_error_comes_back_with_its_code_field_and_text(channel, name, code):
    raised = RAISED[name]
    e = _fail(channel, "Fail", name)
    assert e.code() == code
    assert e.details() == str(raised)
    assert [v.field for v in status.field_violations(e)] == [raised.field]
    got = status.field_error(e)
    assert type(got) is type(raised)
    assert (got.field, got.message) == (raised.field, raised.message)


def test_a_status_without_details_names_no_field(channel):
    e = _fail(channel, "Plain", "")
    assert status.field_violations(e) == [] and status.field_error(e) is None


def test_every_kind_has_a_code():
    kinds = errors.FieldError.__subclasses__()
    assert len(kinds) == 6
    assert len({status.code_of(kind("f", "m")) for kind in kinds}) == 6
