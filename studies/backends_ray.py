"""The Ray backend: each training phase a gang of trainer processes on a Ray cluster.

Capacity is a Ray custom resource, one unit per slice (`slice_resource`,
e.g. set `resources: {"code_lab_slice": 1}` on each slice's first host; see
docs/cluster.md). A phase on N hosts is:

1. a gang task holding one unit of that resource (Ray queues it until a
   slice is free, so at most `capacity` phases train at once);
2. inside it, a placement group of N bundles (one per host: `host_bundle`,
   or a TPU slice's hosts via ray.util.tpu.slice_placement_group), which
   Ray reserves all at once or not at all;
3. one `TrainerHost` actor per bundle, each running
   `python -m services.trainer.api.main --run_spec=... --distributed
   --coordinator_address=HOST0:PORT --num_processes=N --process_id=i`;
   host 0's address is the gang's jax.distributed coordinator.

A worker that dies fails the gang: the others are killed, the placement
group is released, and the gang starts again; the trainer resumes from the
run's last committed checkpoint (its checkpoint directory is the same). A
host lost to Ray (actor or node died) or a trainer ended by a signal
(SIGTERM/SIGKILL: preemption, maintenance) counts as a preemption; a
trainer that exits with an error counts as a failure. Each has its own
bound (`max_preemptions`, `max_failures`); past it the phase fails.

The outcome (metrics, final checkpoint) is read from the run directory's
events.jsonl through libs/storage, where process 0 of the gang wrote it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import socket
import sys
import tempfile
import threading
import time

from google.protobuf import json_format, text_format

from libs import storage
from proto import trainer_pb2
from studies.backends import Backend, PhaseFailed, PhaseJob, PhaseResult, RunOutcome

# Exit statuses of a trainer process that say "taken away", not "broke".
_PREEMPTED_SIGNALS = (-9, -15, 137, 143)


@dataclasses.dataclass(frozen=True)
class GangPolicy:
    """How gangs are placed and retried."""

    slice_resource: str = "code_lab_slice"
    host_bundle: dict = dataclasses.field(default_factory=lambda: {"CPU": 1})
    # Set both for TPU slices: the gang's hosts are one slice's hosts.
    tpu_topology: str = ""  # e.g. "4x4" (v5e-16)
    tpu_version: str = ""  # e.g. "v5e"
    max_failures: int = 2
    max_preemptions: int = 20
    placement_timeout_s: float = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class TrainerHost:
    """One host of a gang: runs one trainer process and reports how it ended.
    (Made a Ray actor class by RayBackend, so this module imports without Ray.)"""

    def coordinator(self) -> str:
        import ray

        return f"{ray.util.get_node_ip_address()}:{_free_port()}"

    def train(
        self,
        spec_text: str,
        coordinator: str,
        num_processes: int,
        process_id: int,
        flags: list[str],
        env: dict[str, str],
        log_path: str,
    ) -> tuple[int, str]:
        from libs.serving import process

        fd, spec_path = tempfile.mkstemp(prefix="run_spec-", suffix=".textproto")
        with os.fdopen(fd, "w") as f:
            f.write(spec_text)
        argv = process.module_command("services.trainer.api.main") + [f"--run_spec={spec_path}"]
        if num_processes > 1:
            argv += [
                "--distributed",
                f"--coordinator_address={coordinator}",
                f"--num_processes={num_processes}",
                f"--process_id={process_id}",
            ]
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as log:
            # Parent-death signal: when Ray kills this actor, its trainer dies too.
            child = process.spawn(
                argv + list(flags), env=process.child_env(env), stdout=log, stderr=log
            )
            code = child.wait()
        os.unlink(spec_path)
        with open(log_path) as log:
            tail = "".join(log.readlines()[-25:])
        return code, tail


def _run_gang(
    spec_text: str,
    hosts: int,
    policy: GangPolicy,
    flags: list[str],
    env: dict[str, str],
    log_dir: str,
) -> dict:
    """The gang task: places N hosts all or none, runs a trainer on each, and
    returns how the gang ended: {"outcome": succeeded|failed|preempted, ...}."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    host_actor = ray.remote(max_restarts=0)(TrainerHost)

    if policy.tpu_topology:
        from ray.util import tpu

        slice_pg = tpu.slice_placement_group(policy.tpu_topology, policy.tpu_version)
        pg = slice_pg.placement_group
        bundles = pg.bundle_specs
        hosts = len(bundles)  # a slice's hosts, one trainer process each
    else:
        bundles = [dict(policy.host_bundle)] * hosts
        pg = ray.util.placement_group(bundles, strategy="PACK" if hosts == 1 else "SPREAD")
    try:
        try:
            ray.get(pg.ready(), timeout=policy.placement_timeout_s)
            started = time.time()
        except ray.exceptions.GetTimeoutError:
            return {
                "outcome": "failed",
                "detail": f"{hosts} hosts of {bundles[0]} could not be placed in "
                f"{policy.placement_timeout_s:.0f}s",
            }
        workers = []
        for i, bundle in enumerate(bundles[:hosts]):
            resources = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
            workers.append(
                host_actor.options(
                    num_cpus=bundle.get("CPU", 0),
                    num_gpus=bundle.get("GPU", 0),
                    resources=resources,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg, placement_group_bundle_index=i
                    ),
                ).remote()
            )
        coordinator = ray.get(workers[0].coordinator.remote()) if hosts > 1 else ""
        refs = {
            w.train.remote(
                spec_text, coordinator, hosts, i, flags, env, os.path.join(log_dir, f"host-{i}.log")
            ): i
            for i, w in enumerate(workers)
        }
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                i = refs.pop(ready[0])
                try:
                    code, tail = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:
                    return {
                        "outcome": "preempted",
                        "worker": i,
                        "detail": f"host lost: {e}",
                        "started_at": started,
                        "ended_at": time.time(),
                    }
                if code == 0:
                    continue
                kind = "preempted" if code in _PREEMPTED_SIGNALS else "failed"
                return {
                    "outcome": kind,
                    "worker": i,
                    "code": code,
                    "detail": tail,
                    "started_at": started,
                    "ended_at": time.time(),
                }
            return {"outcome": "succeeded", "started_at": started, "ended_at": time.time()}
        finally:
            # All or none: one worker down takes the others down with it.
            for w in workers:
                ray.kill(w)
    finally:
        ray.util.remove_placement_group(pg)


class RayBackend(Backend):
    """Phases as gangs on a Ray cluster (see the module docstring).

    `address`: a running cluster ("auto", "ray://...") or None to start a
    local one with `init_kwargs` (tests: num_cpus and the slice resource).
    `trainer_flags`: flags every trainer gets (data credentials, ...);
    `env`: environment for the trainers (default: default_env())."""

    def __init__(
        self,
        *,
        address: str | None = None,
        policy: GangPolicy = GangPolicy(),
        trainer_flags: list[str] | None = None,
        env: dict[str, str] | None = None,
        log=print,
        log_dir: str | None = None,
        init_kwargs: dict | None = None,
    ):
        import ray

        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, **(init_kwargs or {}))
        self._ray = ray
        self.policy = policy
        slices = int(ray.cluster_resources().get(policy.slice_resource, 0))
        if slices < 1:
            raise ValueError(
                f"slice_resource: the Ray cluster offers no {policy.slice_resource!r} "
                f"resource (one unit per slice); it has {sorted(ray.cluster_resources())}"
            )
        self.capacity = slices
        self._flags = list(trainer_flags or [])
        self._env = default_env() if env is None else dict(env)
        self._log = log
        self._log_dir = log_dir or os.path.join(tempfile.gettempdir(), "code_lab", "gangs")
        self._gang = ray.remote(num_cpus=0, max_retries=0)(_run_gang)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.capacity, thread_name_prefix="gang"
        )
        self._lock = threading.Lock()
        self._inflight: dict[str, object] = {}  # run_id -> the gang task's ObjectRef
        self._cancelled: set[str] = set()

    def submit(self, job: PhaseJob) -> concurrent.futures.Future:
        return self._pool.submit(self._run, job)

    def _run(self, job: PhaseJob) -> PhaseResult:
        ray, policy = self._ray, self.policy
        started = None  # when the first attempt's trainers started
        spec_text = text_format.MessageToString(job.spec)
        events_uri = storage.join(job.spec.checkpoint_dir, job.run_id, "events.jsonl")
        resumed = storage.exists(events_uri)
        failures = preemptions = attempts = 0
        while True:
            attempts += 1
            self._log(
                f"{job.name}: gang of {job.hosts} for run {job.run_id}, attempt {attempts}"
                + (
                    f" ({preemptions} preemptions, {failures} failures so far)"
                    if attempts > 1
                    else ""
                )
            )
            log_dir = os.path.join(self._log_dir, job.run_id, f"attempt-{attempts}")
            ref = self._gang.options(resources={policy.slice_resource: 1}).remote(
                spec_text, job.hosts, policy, self._flags, self._env, log_dir
            )
            with self._lock:
                self._inflight[job.run_id] = ref
            try:
                end = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                end = {"outcome": "cancelled"}
            except ray.exceptions.RayError as e:  # the gang task's own host went away
                end = {"outcome": "preempted", "detail": f"gang task lost: {e}"}
            finally:
                with self._lock:
                    self._inflight.pop(job.run_id, None)
            if started is None:
                started = end.get("started_at")
            if job.run_id in self._cancelled or end["outcome"] == "cancelled":
                raise PhaseFailed(f"{job.name}: run {job.run_id} cancelled; a rerun resumes it")
            if end["outcome"] == "succeeded":
                break
            where = f"worker {end.get('worker', '?')}"
            if end["outcome"] == "preempted":
                preemptions += 1
                over = preemptions > policy.max_preemptions
                self._log(f"{job.name}: {where} preempted ({end.get('code', 'host lost')})")
            else:
                failures += 1
                over = failures > policy.max_failures
                self._log(f"{job.name}: {where} failed (exit {end.get('code', '?')})")
            if over:
                raise PhaseFailed(
                    f"{job.name}: run {job.run_id} gave up after {preemptions} preemptions and "
                    f"{failures} failures (limits {policy.max_preemptions} and "
                    f"{policy.max_failures}); last: {where} {end['outcome']}:\n"
                    f"{end.get('detail', '')}"
                )
        outcome = RunOutcome().add_all(_read_events(events_uri))
        if not outcome.succeeded():
            raise PhaseFailed(
                f"{job.name}: run {job.run_id}'s gang ended but its events say "
                f"{outcome.describe_end()}"
            )
        return PhaseResult(
            run_id=job.run_id,
            final=outcome.final,
            metrics=outcome.metrics,
            started_at=started,
            finished_at=end["ended_at"],
            resumed=resumed or attempts > 1,
            attempts=attempts,
            preemptions=preemptions,
            failures=failures,
        )

    def cancel(self, run_id: str) -> None:
        with self._lock:
            self._cancelled.add(run_id)
            ref = self._inflight.get(run_id)
        if ref is not None:
            # Ending the gang task ends its actors, and their trainers with them.
            self._ray.cancel(ref, force=True)

    def close(self) -> None:
        with self._lock:
            run_ids = list(self._inflight)
        for run_id in run_ids:
            self.cancel(run_id)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_ray:
            self._ray.shutdown()


def _read_events(uri: str) -> list[trainer_pb2.RunEvent]:
    if not storage.exists(uri):
        return []
    return [
        json_format.Parse(line, trainer_pb2.RunEvent())
        for line in storage.read_text(uri).splitlines()
        if line.strip()
    ]


def default_env() -> dict[str, str]:
    """The variables a trainer needs that a Ray worker may lack: the storage
    emulator's (tests) and the import path of this checkout."""
    names = (
        "STORAGE_EMULATOR_HOST",
        "TENSORSTORE_GCS_HTTP_URL",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
        "GOOGLE_CLOUD_PROJECT",
    )
    env = {k: os.environ[k] for k in names if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    return env
