"""The runs a trainer process knows: start one in the background, watch its
events, list them, stop one. What the TrainerService serves, without gRPC."""

from __future__ import annotations

import dataclasses
import threading
import traceback
from typing import Callable, Iterator

import jax

from libs import errors, storage
from proto import trainer_pb2
from services.trainer import spec as spec_lib
from services.trainer.events import EventLog
from services.trainer.train import Trainer

# The exit status of a trainer process whose run stopped on request (SIGTERM, Ctrl-C,
# or another host's SIGTERM, agreed by every process) after saving a checkpoint to
# resume from: 128 + SIGTERM, the status a process killed by SIGTERM has, which
# launchers already read as a preemption to restart, not as an error.
STOPPED_EXIT_STATUS = 143


@dataclasses.dataclass
class _Run:
    spec: trainer_pb2.RunSpec
    events: EventLog
    stop: threading.Event
    thread: threading.Thread | None = None
    status: trainer_pb2.RunStatus | None = None
    # How the trainer itself ended: the status of a process that records no
    # events (every process of a multi-process run but process 0).
    ended: int | None = None


class Runs:
    """Runs of one trainer process.

    `connect(spec) -> DataLink` opens the data side of a run (see data_link);
    it is a parameter so that the library never decides how to reach data.
    """

    def __init__(self, connect: Callable, *, console: bool = False):
        self._connect = connect
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._console = console

    def start(self, spec: trainer_pb2.RunSpec) -> tuple[str, bool]:
        """Validates and starts a run; (run_id, resumed). Raises errors.FieldError."""
        spec = spec_lib.with_defaults(spec)
        with self._lock:
            existing = self._runs.get(spec.run_id)
            if existing and existing.thread and existing.thread.is_alive():
                raise errors.AlreadyExists("run_id", f"{spec.run_id!r} is already running")
        # Everything checkable locally first, so a bad spec never starts a data service.
        spec_lib.validate(spec, num_devices=jax.device_count())
        link = self._connect(spec)
        try:
            for i, phase in enumerate(spec.phases):
                link.check_mixture(f"phases[{i}].mixture", phase.mixture)
        except Exception:
            link.close()
            raise
        # checkpoint_dir may be a gs:// URI: the run directory goes through storage.
        run_dir = storage.join(spec.checkpoint_dir, spec.run_id)
        storage.makedirs(run_dir)
        # Process 0 alone records the run's events (as it alone reports metrics);
        # the others keep theirs in memory, so that the file has one writer.
        events = EventLog(
            spec.run_id,
            storage.join(run_dir, "events.jsonl") if jax.process_index() == 0 else None,
        )
        run = _Run(spec=spec, events=events, stop=threading.Event())
        trainer = Trainer(
            spec,
            batches=link.batches,
            vocab_size=link.vocab_size,
            tokenizer_json=link.tokenizer_json,
            events=events,
            stop=run.stop,
            console=self._console,
        )
        resumed = trainer.resumable()

        def body():
            try:
                run.ended = trainer.run()
            except Exception as e:  # a failed run is reported, not fatal to the server
                traceback.print_exc()
                events.append(
                    status=trainer_pb2.RunStatus(
                        run_id=spec.run_id,
                        state=trainer_pb2.FAILED,
                        error=f"{type(e).__name__}: {e}",
                    )
                )
                run.ended = trainer_pb2.FAILED
            finally:
                link.close()
                events.close()

        run.thread = threading.Thread(target=body, name=f"run-{spec.run_id}", daemon=True)
        with self._lock:
            self._runs[spec.run_id] = run
        run.thread.start()
        return spec.run_id, resumed

    def _get(self, run_id: str) -> _Run:
        with self._lock:
            if run_id not in self._runs:
                raise errors.NotFound("run_id", f"no run {run_id!r}")
            return self._runs[run_id]

    def watch(
        self,
        run_id: str,
        from_sequence: int = 0,
        *,
        checkpoints_only: bool = False,
        cancelled=lambda: False,
    ) -> Iterator[trainer_pb2.RunEvent]:
        for event in self._get(run_id).events.watch(from_sequence, cancelled=cancelled):
            if checkpoints_only and event.WhichOneof("event") == "metrics":
                continue
            yield event

    def status(self, run_id: str) -> trainer_pb2.RunStatus:
        run = self._get(run_id)
        latest = trainer_pb2.RunStatus(run_id=run_id, state=trainer_pb2.PENDING)
        last_ckpt = ""
        for event in run.events.events():
            kind = event.WhichOneof("event")
            if kind == "status":
                step, phase = latest.step, latest.phase
                latest.CopyFrom(event.status)
                # A failure report knows only what went wrong, not where.
                latest.step = latest.step or step
                latest.phase = latest.phase or phase
            elif kind == "metrics":
                latest.step, latest.phase = event.metrics.step, event.metrics.phase
            elif kind == "checkpoint":
                last_ckpt = event.checkpoint.uri
        latest.latest_checkpoint = last_ckpt or latest.latest_checkpoint
        if run.ended is not None and latest.state in (trainer_pb2.PENDING, trainer_pb2.RUNNING):
            latest.state = run.ended
        return latest

    def list(self) -> list[trainer_pb2.RunStatus]:
        with self._lock:
            ids = sorted(self._runs)
        return [self.status(i) for i in ids]

    def stop(self, run_id: str, timeout: float | None = None) -> trainer_pb2.RunStatus:
        run = self._get(run_id)
        run.stop.set()
        if run.thread:
            run.thread.join(timeout)
        return self.status(run_id)

    def request_stop_all(self) -> None:
        """Asks every run to stop after its current step, without waiting."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stop.set()

    def stop_all(self, timeout: float | None = None) -> None:
        """Stops every run (each commits a checkpoint first)."""
        with self._lock:
            ids = list(self._runs)
        for run_id in ids:
            self.stop(run_id, timeout)

    def wait(self, run_id: str, timeout: float | None = None) -> trainer_pb2.RunStatus:
        run = self._get(run_id)
        if run.thread:
            run.thread.join(timeout)
        return self.status(run_id)
