"""Following a trainer run: its committed checkpoints, through breaks in the stream.

`watch_run` is the trainer-client side: a WatchRun(checkpoints_only=True) stream
turned into `CheckpointEvent`s and a final `RunEnded`. `follow_events` keeps that going
across trainer restarts and network breaks: it reconnects from the sequence after the
last event it saw (waiting for the trainer to come back, with `wait_for_ready`), and
stops when the run ends or the caller cancels. What to do with each checkpoint, and
how to remember it across restarts of this service, is the harness's business.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Iterator, Union

import grpc

from proto import trainer_pb2, trainer_pb2_grpc
from libs import errors

_TERMINAL = {
    trainer_pb2.SUCCEEDED: "SUCCEEDED",
    trainer_pb2.FAILED: "FAILED",
    trainer_pb2.STOPPED: "STOPPED",
}
# Codes after which the same request may succeed later (the trainer restarting, a
# network break, the server cancelling its streams on shutdown).
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclasses.dataclass(frozen=True)
class CheckpointEvent:
    sequence: int
    uri: str
    step: int
    lineage: dict
    phase_end: bool


@dataclasses.dataclass(frozen=True)
class RunEnded:
    sequence: int
    state: str
    error: str


Event = Union[CheckpointEvent, RunEnded]


class Cancellation:
    """Set once by the caller; running callbacks (e.g. cancelling an RPC) on set."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def add_callback(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Runs `cb` on cancel (at once if already cancelled); returns a remover."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return lambda: self._remove(cb)
        cb()
        return lambda: None

    def _remove(self, cb) -> None:
        with self._lock:
            if cb in self._callbacks:
                self._callbacks.remove(cb)


class StreamBroken(Exception):
    """The trainer stream ended without the run ending; reconnecting may help."""


def lineage_dict(lineage: trainer_pb2.Lineage) -> dict:
    return {
        "run_id": lineage.run_id,
        "phase": lineage.phase,
        "parent_uri": lineage.parent_uri,
        "step": lineage.step,
        "phase_step": lineage.phase_step,
        "tokens_per_source": dict(lineage.tokens_per_source),
        "tokens_seen": lineage.tokens_seen,
        "phases_done": list(lineage.phases_done),
        "preset": lineage.preset,
    }


def watch_run(
    channel: grpc.Channel,
    run_id: str,
    from_sequence: int,
    cancellation: Cancellation,
    *,
    wait_for_ready: bool,
) -> Iterator[Event]:
    """One WatchRun stream as events; raises StreamBroken on a transient failure."""
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    call = stub.WatchRun(
        trainer_pb2.WatchRunRequest(
            run_id=run_id, from_sequence=from_sequence, checkpoints_only=True
        ),
        wait_for_ready=wait_for_ready,
    )
    remove = cancellation.add_callback(call.cancel)
    try:
        for ev in call:
            kind = ev.WhichOneof("event")
            if kind == "checkpoint":
                c = ev.checkpoint
                yield CheckpointEvent(
                    sequence=ev.sequence,
                    uri=c.uri,
                    step=c.step,
                    lineage=lineage_dict(c.lineage),
                    phase_end=c.phase_end,
                )
            elif kind == "status" and ev.status.state in _TERMINAL:
                yield RunEnded(
                    sequence=ev.sequence, state=_TERMINAL[ev.status.state], error=ev.status.error
                )
                return
    except grpc.RpcError as e:
        if cancellation.cancelled:
            return
        code = e.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise errors.NotFound("run_id", f"trainer has no run {run_id!r}: {e.details()}") from e
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise errors.InvalidArgument("run_id", e.details()) from e
        if code in _TRANSIENT:
            raise StreamBroken(f"{code.name}: {e.details()}") from e
        raise errors.Unavailable(
            "trainer_address", f"WatchRun failed: {code.name}: {e.details()}"
        ) from e
    finally:
        remove()
    if not cancellation.cancelled:
        raise StreamBroken("the stream ended before the run did")


def follow_events(
    trainer_address: str,
    run_id: str,
    cancellation: Cancellation,
    *,
    connect_timeout_s: float = 10.0,
    max_backoff_s: float = 5.0,
    run_missing_timeout_s: float = 600.0,
    channel_options=(),
) -> Iterator[Event]:
    """Every checkpoint event of a run, once each, reconnecting until the run ends.

    The first connection must succeed within `connect_timeout_s` and find the run (a
    wrong address or run id is an error, not a wait). After that, a broken stream is
    resumed from the next sequence number, waiting as long as it takes for the trainer
    to come back; a restarted trainer that does not know the run yet (it is resumed by
    a new StartRun) is waited for up to `run_missing_timeout_s`.
    """
    if not trainer_address:
        raise errors.InvalidArgument("trainer_address", "required")
    if not run_id:
        raise errors.InvalidArgument("run_id", "required")
    channel = grpc.insecure_channel(trainer_address, options=list(channel_options))
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError as e:
            raise errors.Unavailable(
                "trainer_address",
                f"no trainer at {trainer_address} after {connect_timeout_s:.0f} s",
            ) from e
        next_sequence, backoff = 0, 0.1
        seen_run, missing_since = False, None
        while not cancellation.cancelled:
            try:
                for event in watch_run(
                    channel, run_id, next_sequence, cancellation, wait_for_ready=True
                ):
                    next_sequence = event.sequence + 1
                    backoff, seen_run, missing_since = 0.1, True, None
                    yield event
                    if isinstance(event, RunEnded):
                        return
                return  # cancelled
            except StreamBroken as e:
                logging.warning(
                    "FollowRun %s: trainer stream broke (%s); resuming from sequence %d",
                    run_id,
                    e,
                    next_sequence,
                )
                seen_run = True  # the trainer accepted the call: the run was there
            except errors.NotFound:
                now = time.monotonic()
                missing_since = missing_since or now
                if not seen_run or now - missing_since > run_missing_timeout_s:
                    raise
                logging.warning(
                    "FollowRun %s: the trainer does not know the run (restarted?); waiting for it",
                    run_id,
                )
            if cancellation.wait(backoff):
                return
            backoff = min(backoff * 2, max_backoff_s)
    finally:
        channel.close()
