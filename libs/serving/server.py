"""The gRPC server bootstrap shared by the data, trainer and eval services.

Every service binary serves its own servicers plus the standard health
checking and reflection services, binds 127.0.0.1 unless told otherwise,
optionally requires a bearer token and TLS, prints one line saying where it
listens, and shuts down cleanly on SIGTERM. Nothing here knows what a
service does.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from concurrent import futures
from typing import Any, Callable, Sequence

import grpc
from absl import flags
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# Batches of 256 x 8192 tokens are ~40 MB as bytes; gRPC's 4 MB default would
# reject them. Clients use the same figure (see channel_options).
MAX_MESSAGE_BYTES = 256 << 20

# Probes must work without credentials, so health checks skip auth.
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class PortInUseError(RuntimeError):
    """The requested host:port could not be bound."""


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for both ends of a channel carrying large batches."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class _BearerTokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless `authorization: Bearer <token>` is sent."""

    def __init__(self, token: str):
        self._expected = "Bearer " + token

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_UNAUTHENTICATED_PREFIXES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny_unary


@dataclasses.dataclass
class RunningServer:
    """A started server and the address it is bound to."""

    server: grpc.Server
    health: health.HealthServicer
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    servicers: Sequence[tuple[Callable[[Any, grpc.Server], None], Any]],
    service_names: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    auth_token: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_workers: int = 16,
) -> RunningServer:
    """Starts a server with `servicers` (pairs of add_XServicer_to_server and
    servicer), health checking and reflection. Raises PortInUseError."""
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ValueError("tls_cert_file and tls_key_file must be given together")
    interceptors = [_BearerTokenInterceptor(auth_token)] if auth_token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=channel_options(max_message_bytes) + [("grpc.so_reuseport", 0)],
    )
    for add_to_server, servicer in servicers:
        add_to_server(servicer, server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in service_names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        list(service_names) + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    bind = f"{host}:{port}"
    try:
        if tls_cert_file:
            with open(tls_cert_file, "rb") as f:
                cert = f.read()
            with open(tls_key_file, "rb") as f:
                key = f.read()
            bound = server.add_secure_port(bind, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(bind)
    except RuntimeError as e:  # grpcio raises on bind failure in recent versions
        raise PortInUseError(f"cannot bind {bind}: port in use or address unavailable") from e
    if bound == 0:
        raise PortInUseError(f"cannot bind {bind}: port in use or address unavailable")
    server.start()
    return RunningServer(server=server, health=health_servicer, host=host, port=bound)


# Flags every service binary shares; defined once here so that the three
# mains spell them the same way.
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 serves other machines.")
flags.DEFINE_integer("port", 0, "Port to bind; 0 picks a free one (printed at start).")
flags.DEFINE_string("auth_token_file", None, "File holding a bearer token clients must send.")
flags.DEFINE_string("tls_cert", None, "PEM certificate chain; enables TLS with --tls_key.")
flags.DEFINE_string("tls_key", None, "PEM private key for --tls_cert.")


def serve_from_flags(
    name: str,
    servicers: Sequence[tuple[Callable[[Any, grpc.Server], None], Any]],
    service_names: Sequence[str],
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, configured by the shared flags; the
    binaries' main() ends here. Prints `<name> listening on HOST:PORT`."""
    FLAGS = flags.FLAGS
    token = None
    if FLAGS.auth_token_file:
        with open(FLAGS.auth_token_file) as f:
            token = f.read().strip()
        if not token:
            sys.exit(f"error: --auth_token_file {FLAGS.auth_token_file} is empty")
    try:
        running = serve(
            servicers,
            service_names,
            host=FLAGS.host,
            port=FLAGS.port,
            auth_token=token,
            tls_cert_file=FLAGS.tls_cert,
            tls_key_file=FLAGS.tls_key,
        )
    except (PortInUseError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")

    stopped = threading.Event()

    def _terminate(signum, frame):
        if stopped.is_set():
            return
        stopped.set()
        # Stopping from a helper thread keeps the signal handler short.
        threading.Thread(target=running.stop, args=(5.0,), daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    print(f"{name} listening on {running.address}", flush=True)
    running.wait()
    if on_stop is not None:
        on_stop()
    print(f"{name} stopped", flush=True)
