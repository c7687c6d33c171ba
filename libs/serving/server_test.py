"""The shared server bootstrap on real ports: health, auth, port clashes."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.serving import process, server


def _echo_servicer():
    def say(request: bytes, context) -> bytes:
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say)},
    )
    return (lambda _, srv: srv.add_generic_rpc_handlers((handler,)), None)


def _say(address: str, metadata=()) -> bytes:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/test.Echo/Say")
        return call(b"hi", metadata=metadata, timeout=5)


def test_health_reports_serving_for_named_services():
    running = server.serve([_echo_servicer()], ["test.Echo"])
    try:
        assert running.address.startswith("127.0.0.1:")
        process.wait_healthy(running.address, "test.Echo", timeout=10)
        with grpc.insecure_channel(running.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert _say(running.address) == b"echo:hi"
    finally:
        running.stop(0)


def test_bearer_token_is_required_when_configured():
    running = server.serve([_echo_servicer()], ["test.Echo"], auth_token="s3cret")
    try:
        with pytest.raises(grpc.RpcError) as err:
            _say(running.address)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            _say(running.address, metadata=(("authorization", "Bearer wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _say(running.address, metadata=(("authorization", "Bearer s3cret"),)) == b"echo:hi"
        # Health probes need no token.
        process.wait_healthy(running.address, "test.Echo", timeout=10)
    finally:
        running.stop(0)


def test_port_in_use_is_a_clear_error():
    first = server.serve([], [])
    try:
        with pytest.raises(server.PortInUseError, match=f"127.0.0.1:{first.port}"):
            server.serve([], [], port=first.port)
    finally:
        first.stop(0)
