"""Where a study's trainings run: the interface the runner submits phases to.

A backend takes a `PhaseJob` (a planned phase's RunSpec and how many hosts
train it) and returns a future of its `PhaseResult` (the phase-end
checkpoint, the metrics, when it ran, how many attempts it took). It offers
`capacity` phases at once; the runner never submits more. Two backends:

- `LocalBackend` (the default): the TrainerService the runner reaches
  (studies/service_processes.py: a child process, or one given by address). StartRun,
  then WatchRun until the run ends; no dependency beyond gRPC.
- `RayBackend` (studies/backends_ray.py): each phase a gang of trainer
  processes on a Ray cluster, one per host, restarted from the last
  committed checkpoint when a host dies.

Both read a run's outcome from the same events (proto/trainer.proto
RunEvent): over WatchRun here, from the run directory's events.jsonl there.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable, Iterable

import grpc

from proto import trainer_pb2

# Seconds between progress lines of a training phase.
PROGRESS_EVERY_S = 15.0


class PhaseFailed(RuntimeError):
    """A phase did not finish; the message says which, why, and that a rerun resumes."""


@dataclasses.dataclass(frozen=True)
class PhaseJob:
    name: str  # "arm/phase", for messages
    spec: trainer_pb2.RunSpec
    hosts: int = 1  # trainer processes (one per host) in the phase's gang

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclasses.dataclass
class PhaseResult:
    run_id: str
    final: trainer_pb2.CheckpointCommitted  # the last phase-end checkpoint
    metrics: list[dict]  # one record per logged step, by step
    started_at: float  # time.time() when the phase was handed to the trainer(s)
    finished_at: float
    resumed: bool = False  # it continued from a checkpoint of an earlier attempt
    attempts: int = 1
    preemptions: int = 0
    failures: int = 0
    # Where the last attempt's processes ran, by process id ("slice/worker id"
    # on TPU slices); empty when the backend does not say.
    hosts: tuple[str, ...] = ()


def metrics_record(m: trainer_pb2.Metrics) -> dict:
    return {
        "step": m.step,
        "phase": m.phase,
        "loss": m.loss,
        "source_loss": dict(m.source_loss),
        "tokens_seen": m.tokens_seen,
        "learning_rate": m.learning_rate,
        "tokens_per_second": m.tokens_per_second,
    }


class RunOutcome:
    """Folds a run's events into its metrics, final checkpoint and status.
    Replayed and repeated steps (a resumed run logs them again) keep the
    newest record."""

    def __init__(self):
        self._metrics: dict[tuple[str, int], dict] = {}
        self.final: trainer_pb2.CheckpointCommitted | None = None
        self.status: trainer_pb2.RunStatus | None = None
        self.last_metrics: trainer_pb2.Metrics | None = None

    def add(self, event: trainer_pb2.RunEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "metrics":
            self._metrics[(event.metrics.phase, event.metrics.step)] = metrics_record(event.metrics)
            self.last_metrics = event.metrics
        elif kind == "checkpoint" and event.checkpoint.phase_end:
            self.final = event.checkpoint
        elif kind == "status":
            self.status = event.status

    def add_all(self, events: Iterable[trainer_pb2.RunEvent]) -> "RunOutcome":
        for e in events:
            self.add(e)
        return self

    @property
    def metrics(self) -> list[dict]:
        return sorted(self._metrics.values(), key=lambda r: r["step"])

    def succeeded(self) -> bool:
        return (
            self.status is not None
            and self.status.state == trainer_pb2.SUCCEEDED
            and self.final is not None
        )

    def describe_end(self) -> str:
        state = trainer_pb2.RunState.Name(self.status.state) if self.status else "unknown"
        error = self.status.error if self.status and self.status.error else ""
        return state + (f": {error}" if error else "")


class Backend(abc.ABC):
    """Submits, watches and cancels training phases."""

    capacity: int = 1

    @abc.abstractmethod
    def submit(self, job: PhaseJob) -> concurrent.futures.Future:
        """Starts the phase; the future's result is a PhaseResult, or it raises PhaseFailed."""

    @abc.abstractmethod
    def cancel(self, run_id: str) -> None:
        """Stops the phase; its last committed checkpoint is where a rerun resumes."""

    def close(self) -> None:
        """Cancels what still runs and lets go of the backend's resources."""


def progress_line(job: PhaseJob, m: trainer_pb2.Metrics, total_steps: int) -> str:
    per_source = " ".join(f"{k} {v:.2f}" for k, v in sorted(m.source_loss.items()))
    return (
        f"{job.name}: step {m.step}/{total_steps} loss {m.loss:.3f} ({per_source}) "
        f"{m.tokens_per_second / 1e3:.1f}k tok/s"
    )


class LocalBackend(Backend):
    """Phases on the TrainerService the runner's Services reach (today's
    child process), `capacity` at a time (one: the trainer has the machine)."""

    def __init__(
        self,
        trainer_stub: Callable[[], object],
        *,
        logs: Callable[[], str] = lambda: "",
        log=print,
        capacity: int = 1,
        total_steps: Callable[[PhaseJob], int] = lambda job: 0,
    ):
        self._stub = trainer_stub
        self._logs = logs
        self._log = log
        self.capacity = capacity
        self._total_steps = total_steps
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=capacity, thread_name_prefix="phase"
        )
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, job: PhaseJob) -> concurrent.futures.Future:
        # StartRun from the caller's thread: the runner starts the trainer
        # service lazily, and a service's parent-death signal follows the
        # thread that started it.
        trainer = self._stub()
        started = time.time()
        try:
            response = trainer.StartRun(trainer_pb2.StartRunRequest(spec=job.spec), timeout=600)
            resumed = response.resumed
            how = "resumed from its last checkpoint" if resumed else "started"
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                future = concurrent.futures.Future()
                future.set_exception(
                    PhaseFailed(
                        f"{job.name}: the trainer refused run {job.run_id}: "
                        f"{e.code().name} {e.details()}"
                    )
                )
                return future
            resumed, how = True, "already running in the trainer, watching it"
        self._log(f"{job.name}: run {job.run_id} {how}")
        with self._lock:
            self._running.add(job.run_id)
        return self._pool.submit(self._watch, trainer, job, started, resumed)

    def _watch(self, trainer, job: PhaseJob, started: float, resumed: bool) -> PhaseResult:
        outcome = RunOutcome()
        last_print = time.monotonic()
        try:
            for event in trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=job.run_id)):
                outcome.add(event)
                if (
                    event.WhichOneof("event") == "metrics"
                    and time.monotonic() - last_print > PROGRESS_EVERY_S
                ):
                    last_print = time.monotonic()
                    self._log(progress_line(job, event.metrics, self._total_steps(job)))
        except grpc.RpcError as e:
            raise PhaseFailed(
                f"{job.name}: lost the trainer while watching run {job.run_id}: "
                f"{e.code().name} {e.details()}; run the study again to resume\n{self._logs()}"
            ) from None
        finally:
            with self._lock:
                self._running.discard(job.run_id)
        if not outcome.succeeded():
            raise PhaseFailed(
                f"{job.name}: run {job.run_id} ended {outcome.describe_end()}\n{self._logs()}"
            )
        return PhaseResult(
            run_id=job.run_id,
            final=outcome.final,
            metrics=outcome.metrics,
            started_at=started,
            finished_at=time.time(),
            resumed=resumed,
        )

    def cancel(self, run_id: str) -> None:
        try:
            self._stub().StopRun(trainer_pb2.StopRunRequest(run_id=run_id), timeout=60)
        except grpc.RpcError:
            pass  # the trainer is gone already: nothing left to stop

    def close(self) -> None:
        # Watchers end when their trainer service stops (Services.close).
        self._pool.shutdown(wait=False, cancel_futures=True)
