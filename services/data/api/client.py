"""Python client of the DataService, for trainers and other teams.

    from services.data.api import client

    server = client.start_local_server()          # builds the default corpus on first use
    data = client.DataClient(server.address)
    mix = client.Mixture.of({"text": 0.75, "code": 0.25}, name="code25")
    with data.stream(mix, seed=0, global_batch_size=16, seq_len=2048,
                     start_step=0, shard_index=0, num_shards=1) as batches:
        for batch in batches:                      # client.Batch
            ...                                    # batch.tokens: int32 [16, 2048]
    data.close(); server.stop()

A stream reads on a background thread into a bounded queue (`prefetch`
batches), so the next batches arrive while the trainer computes. When the
server goes away (UNAVAILABLE: restart, crash, network), the stream
reconnects with exponential backoff and resumes at the step after the last
one it received; since batch k is a pure function of the request, the
batches are exactly those of an uninterrupted stream. `target` may be a
callable returning the current address, for a server that comes back on
another port. Other errors (INVALID_ARGUMENT, NOT_FOUND, ...) are raised to
the consumer at once.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Callable, Iterator, Mapping, Sequence

import grpc
import grpc.experimental

from proto import data_pb2, data_pb2_grpc
from services.data.api import wire

# Batch and the service's request limits are part of what callers use: the
# trainer types what it receives and checks its RunSpecs before it asks.
from services.data.batch import Batch, keep_freed_memory
from services.data.mixture import MAX_SEQ_LEN, MAX_SOURCES, MIN_SEQ_LEN, Mixture  # noqa: F401

MAX_MESSAGE_BYTES = 256 << 20
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE,)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Reconnect backoff: initial, growing x2 to max; give up after
    `give_up_s` without receiving anything."""

    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    give_up_s: float = 120.0


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Reconnect quickly after a server restart (gRPC's default backoff
        # starts at 1 s and grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # A stream's messages are read on the thread that iterates it rather
        # than handed over by the channel's polling thread: one thread switch
        # less a message (gRPC Python's experimental option; cancel() from
        # another thread still ends the call).
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]


def _as_mixture(mixture) -> data_pb2.MixtureSpec:
    if isinstance(mixture, data_pb2.MixtureSpec):
        return mixture
    if isinstance(mixture, Mixture):
        return wire.mixture_to_proto(mixture)
    if isinstance(mixture, Mapping):
        return wire.mixture_to_proto(Mixture.of(mixture))
    raise TypeError(
        f"mixture must be a Mixture, a MixtureSpec or a {{source: weight}} mapping, got {type(mixture).__name__}"
    )


class DataClient:
    """A connection to a DataService.

    target: "host:port", or a callable returning it (read again on every
        reconnect).
    auth_token: sent as `authorization: Bearer <token>` when set.
    root_certificates: PEM bytes of the CA that signed the server's
        certificate; enables TLS.
    tune_malloc: call batch.keep_freed_memory(), so that glibc keeps freed
        batch memory instead of re-faulting fresh pages for every batch
        (~0.1 ms of CPU a 16 x 2048 batch). Process-wide, hence opt-in.
    """

    def __init__(
        self,
        target: str | Callable[[], str],
        *,
        auth_token: str | None = None,
        root_certificates: bytes | None = None,
        retry: RetryPolicy = RetryPolicy(),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tune_malloc: bool = False,
    ):
        if tune_malloc:
            keep_freed_memory()
        self._target = target
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._root_certificates = root_certificates
        self.retry = retry
        self._options = _channel_options(max_message_bytes)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: data_pb2_grpc.DataServiceStub | None = None

    def target(self) -> str:
        return self._target() if callable(self._target) else self._target

    def _new_stub(self) -> tuple[grpc.Channel, data_pb2_grpc.DataServiceStub]:
        target = self.target()
        if self._root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
            channel = grpc.secure_channel(target, creds, options=self._options)
        else:
            channel = grpc.insecure_channel(target, options=self._options)
        return channel, data_pb2_grpc.DataServiceStub(channel)

    def stub(self, fresh: bool = False) -> data_pb2_grpc.DataServiceStub:
        """The shared stub; `fresh` replaces the channel (after a failure)."""
        with self._lock:
            if fresh or self._stub is None:
                if self._channel is not None:
                    self._channel.close()
                self._channel, self._stub = self._new_stub()
            return self._stub

    def raw_stream(self, method: str, fresh: bool = False):
        """The StreamBatches or StreamBatchGroups call returning each
        message's bytes undecoded (wire.decode_batch / wire.group_messages
        read them as views, saving protobuf's copies)."""
        self.stub(fresh)
        with self._lock:
            return self._channel.unary_stream(
                f"/{wire.SERVICE_NAME}/{method}",
                request_serializer=data_pb2.StreamBatchesRequest.SerializeToString,
                response_deserializer=None,
            )

    def _unary(self, method: str, request, timeout: float):
        deadline = time.monotonic() + self.retry.give_up_s
        backoff = self.retry.initial_backoff_s
        fresh = False
        while True:
            try:
                return getattr(self.stub(fresh), method)(
                    request, metadata=self._metadata, timeout=timeout
                )
            except grpc.RpcError as e:
                if e.code() not in _TRANSIENT or time.monotonic() + backoff > deadline:
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, self.retry.max_backoff_s)
            fresh = True

    def list_sources(self, timeout: float = 30.0) -> data_pb2.ListSourcesResponse:
        return self._unary("ListSources", data_pb2.ListSourcesRequest(), timeout)

    def validate_mixture(
        self, mixture, token_budget: int = 0, timeout: float = 30.0
    ) -> data_pb2.ValidateMixtureResponse:
        request = data_pb2.ValidateMixtureRequest(
            mixture=_as_mixture(mixture), token_budget=token_budget
        )
        return self._unary("ValidateMixture", request, timeout)

    def stream(
        self,
        mixture,
        *,
        seed: int,
        global_batch_size: int,
        seq_len: int,
        start_step: int = 0,
        num_steps: int = 0,
        shard_index: int = 0,
        num_shards: int = 1,
        prefetch: int = 4,
        encoding: str = "packed",
        batches_per_message: int = 0,
    ) -> "BatchStream":
        """Batches of one shard from `start_step` (`num_steps` of them; 0:
        until the mixture ends or the stream is closed). `encoding`: "packed"
        (tokens and runs on the wire, unpacked here: ~2-4 bytes a token) or
        "full" (all six arrays: 18 bytes a token); the batches are equal.
        `batches_per_message`: 0 (the server groups batches into messages of
        about wire.GROUP_BYTES, StreamBatchGroups), 1 (one batch a message,
        StreamBatches) or a group size; the batches are the same."""
        encodings = {"packed": data_pb2.BATCH_ENCODING_PACKED, "full": data_pb2.BATCH_ENCODING_FULL}
        if encoding not in encodings:
            raise ValueError(f"encoding must be one of {sorted(encodings)}, got {encoding!r}")
        request = data_pb2.StreamBatchesRequest(
            mixture=_as_mixture(mixture),
            seed=seed,
            start_step=start_step,
            num_steps=num_steps,
            shard_index=shard_index,
            num_shards=num_shards,
            global_batch_size=global_batch_size,
            seq_len=seq_len,
            encoding=encodings[encoding],
            batches_per_message=batches_per_message,
        )
        return BatchStream(self, request, prefetch)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_END = object()


class BatchStream:
    """An iterator of Batch over one StreamBatches request that survives
    server restarts. `reconnects` counts the resumed connections."""

    def __init__(self, client: DataClient, request: data_pb2.StreamBatchesRequest, prefetch: int):
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self._client = client
        self._request = request
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._closed = threading.Event()
        self._call = None
        self.next_step = request.start_step
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="data-stream")
        self._thread.start()

    def _remaining(self) -> int:
        if not self._request.num_steps:
            return 0
        return self._request.start_step + self._request.num_steps - self.next_step

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        grouped = self._request.batches_per_message != 1
        method = "StreamBatchGroups" if grouped else "StreamBatches"
        policy = self._client.retry
        backoff = policy.initial_backoff_s
        last_progress = time.monotonic()
        fresh = False
        while not self._closed.is_set():
            request = data_pb2.StreamBatchesRequest()
            request.CopyFrom(self._request)
            request.start_step = self.next_step
            if self._request.num_steps:
                request.num_steps = self._remaining()
                if request.num_steps <= 0:
                    break
            try:
                call = self._client.raw_stream(method, fresh)(
                    request, metadata=self._client._metadata
                )
                self._call = call
                if self._closed.is_set():
                    call.cancel()
                    return
                for raw in call:
                    for message in wire.group_messages(raw) if grouped else (raw,):
                        batch = wire.decode_batch(message)
                        if batch.step != self.next_step:
                            raise RuntimeError(
                                f"expected step {self.next_step}, server sent {batch.step}"
                            )
                        self.next_step += 1
                        backoff = policy.initial_backoff_s
                        last_progress = time.monotonic()
                        if not self._put(batch):
                            return
                break  # the stream ended normally
            except grpc.RpcError as e:
                if self._closed.is_set():
                    return
                transient = e.code() in _TRANSIENT
                if not transient or time.monotonic() - last_progress > policy.give_up_s:
                    self._put(e)
                    return
            except BaseException as e:  # handed to the consumer
                self._put(e)
                return
            self.reconnects += 1
            fresh = True
            if self._closed.wait(backoff):
                return
            backoff = min(backoff * 2, policy.max_backoff_s)
        self._put(_END)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._closed.is_set() and self._queue.empty():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._closed.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self._closed.set()
            raise item
        return item

    def close(self) -> None:
        """Stops the stream (cancels the call; the server stops reading)."""
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_local_server(
    corpus_dir: str | None = None,
    *,
    build_default_corpus: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    auth_token_file: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
    echo: bool = False,
):
    """Starts the data binary (`python -m services.data.api.main`) as a child
    process and waits for its `DataService listening on HOST:PORT` line.
    Without `corpus_dir` it serves the default corpus from its cache,
    building it first (under a minute here) when missing. Returns a
    libs.serving.process.ServiceProcess (.address, .stop(), .kill())."""
    from libs.serving import process

    argv = process.module_command("services.data.api.main") + [f"--host={host}", f"--port={port}"]
    if corpus_dir:
        argv.append(f"--corpus_dir={corpus_dir}")
    argv.append("--build_default_corpus" if build_default_corpus else "--nobuild_default_corpus")
    if auth_token_file:
        argv.append(f"--auth_token_file={auth_token_file}")
    return process.start(argv + list(extra_args), timeout=timeout, echo=echo)
