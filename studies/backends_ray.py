"""The Ray backend: each training phase a gang of trainer processes on a Ray cluster.

A phase on N hosts is a gang task that places N host bundles all at once
(a Ray placement group: all or none), starts one `TrainerHost` actor per
bundle, each running `python -m services.trainer.api.main --run_spec=...
--distributed --coordinator_address=HOST0:PORT --num_processes=N
--process_id=i` (host 0's address is the gang's jax.distributed
coordinator), and waits for them. On TPU slices the module is the trainer's
TPU entry, `services.trainer.api.main_tpu`: libtpu from @libtpu_wheel, and
a host whose JAX devices are not TPUs fails instead of training on its CPU.
libtpu reaches the hosts the way the code does: the trainers import from the
runner's import path (default_env's PYTHONPATH, the runner's Bazel runfiles,
which hold @libtpu_wheel), the same checkout built at the same path on every
host. Capacity, the phases that train at once, is the number of slices,
counted in one of two ways (docs/cluster.md):

- TPU slices (`tpu_topology` and `tpu_version` set): the cluster's intact
  slices of that topology, as Ray sees them from the labels TPU VMs declare
  (`ray.io/tpu-slice-name`, `-worker-id`, `-pod-type`) and the head resource
  (`TPU-<pod type>-head: 1` on worker 0). The gang reserves one slice's head
  and then its hosts with `ray.util.tpu.slice_placement_group`, bundle i
  pinned by label to TPU worker i: the trainer's process id is the host's
  TPU worker id. The gang task itself holds nothing, so the head it
  reserves is the slice's only head.
- Other clusters: a Ray custom resource, one unit per slice
  (`slice_resource`, e.g. `resources: {"code_lab_slice": 1}` on each slice's
  first host); the gang task holds one unit, and its hosts are `hosts`
  bundles of `host_bundle`.

How a gang ends, and what is counted:

- every trainer exits 0: the phase succeeded;
- a host lost to Ray (actor or node died) or a trainer ended by a signal
  (SIGTERM/SIGKILL: preemption, maintenance): a preemption, bounded by
  `max_preemptions`;
- a trainer that exits with an error: a failure;
- the hosts not placed within `placement_timeout_s` (no intact slice, or a
  bundle no host can hold): a failure reported as "unplaced";
- no new metrics line for `stall_timeout_s` (a hung collective, a stuck
  host), or no first one for `startup_timeout_s`: the gang is ended, a
  failure reported as "stalled".

Failures of every kind share `max_failures`. Past a bound the phase fails;
below it the gang starts again (a gang that ended early kills its other
trainers and releases its placement groups, the head's included) and the
trainer resumes from the run's last committed checkpoint.

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

# The modules a gang host runs: the trainer, and its TPU entry (libtpu, TPU devices only).
CPU_TRAINER = "services.trainer.api.main"
TPU_TRAINER = "services.trainer.api.main_tpu"


@dataclasses.dataclass(frozen=True)
class GangPolicy:
    """How gangs are placed and retried."""

    slice_resource: str = "code_lab_slice"
    host_bundle: dict = dataclasses.field(default_factory=lambda: {"CPU": 1})
    # Set both for TPU slices: the gang's hosts are one slice's hosts.
    tpu_topology: str = ""  # e.g. "4x4" (v5e-16)
    tpu_version: str = ""  # as Ray names it: "v4", "v5litepod" (v5e), "v5p", "v6e"
    # The module each host runs; "": TPU_TRAINER on TPU slices, else CPU_TRAINER.
    trainer_module: str = ""
    max_failures: int = 2
    max_preemptions: int = 20
    placement_timeout_s: float = 600.0
    # A gang whose metrics.jsonl has not grown for this long is ended and
    # restarted (0: never): longer than the time between two logged steps.
    # Until an attempt logs its first step (start-up, restore, compile), the
    # limit is startup_timeout_s.
    stall_timeout_s: float = 1800.0
    startup_timeout_s: float = 3600.0
    watch_interval_s: float = 10.0

    def accelerator_type(self) -> str:
        """Ray's name of the TPU type ("TPU-V5LITEPOD")."""
        return "TPU-" + self.tpu_version.upper()

    def trainer(self) -> str:
        """The module each host of a gang runs."""
        return self.trainer_module or (TPU_TRAINER if self.tpu_topology else CPU_TRAINER)


class _Unplaced(Exception):
    """The gang's hosts could not be placed in time."""


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
        module: str = CPU_TRAINER,
    ) -> tuple[int, str]:
        from libs.serving import process

        fd, spec_path = tempfile.mkstemp(prefix="run_spec-", suffix=".textproto")
        with os.fdopen(fd, "w") as f:
            f.write(spec_text)
        argv = process.module_command(module) + [f"--run_spec={spec_path}"]
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


def _place(policy: GangPolicy, hosts: int):
    """Reserves the gang's hosts, all at once: (placement group, bundles,
    release). Raises _Unplaced when they are not placed in time."""
    import ray

    timeout = policy.placement_timeout_s
    if policy.tpu_topology:
        from ray.util import tpu

        hosts, _ = tpu.get_tpu_worker_resources(policy.tpu_topology, policy.tpu_version)
        try:
            slice_pg = tpu.slice_placement_group(
                policy.tpu_topology,
                policy.tpu_version,
                # Bundle i on TPU worker i: process id i is the host's worker id.
                bundle_label_selector=[
                    {ray._raylet.RAY_NODE_TPU_WORKER_ID_KEY: str(i)} for i in range(hosts)
                ],
                head_reservation_timeout_s=timeout,
            )
        except (TimeoutError, RuntimeError) as e:
            raise _Unplaced(
                f"no {policy.tpu_version} {policy.tpu_topology} slice's head reserved in "
                f"{timeout:.0f}s: {str(e)[:300]}"
            ) from None
        pg, release = slice_pg.placement_group, slice_pg.shutdown
    else:
        bundles = [dict(policy.host_bundle)] * hosts
        pg = ray.util.placement_group(bundles, strategy="PACK" if hosts == 1 else "SPREAD")

        def release():
            ray.util.remove_placement_group(pg)

    try:
        ray.get(pg.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        release()
        raise _Unplaced(
            f"{len(pg.bundle_specs)} hosts of {pg.bundle_specs[0]} not placed in {timeout:.0f}s"
        ) from None
    return pg, pg.bundle_specs, release


def _hosts(pg) -> list[str]:
    """Where each bundle was placed: "slice-name/worker-id" on a TPU host,
    else the node id, in bundle (= process id) order."""
    import ray

    keys = ray._raylet
    placed = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    labels = {n["NodeID"]: n.get("Labels") or {} for n in ray.nodes()}
    out = []
    for i in sorted(placed):
        node = labels.get(placed[i], {})
        name = node.get(keys.RAY_NODE_TPU_SLICE_NAME_KEY)
        out.append(f"{name}/{node.get(keys.RAY_NODE_TPU_WORKER_ID_KEY)}" if name else placed[i])
    return out


class _Progress:
    """When a run last logged a step: the size of its metrics.jsonl, which
    process 0 appends to at every logged step."""

    def __init__(self, metrics_uri: str):
        self._uri = metrics_uri
        self._size = self._read()
        self._since = time.monotonic()
        self.started = False  # a step logged since this attempt began

    def _read(self) -> int:
        try:
            return storage.size(self._uri)
        except FileNotFoundError:
            return 0

    def idle_s(self) -> float:
        size = self._read()
        if size != self._size:
            self._size, self._since, self.started = size, time.monotonic(), True
        return time.monotonic() - self._since


def _run_gang(
    spec_text: str,
    hosts: int,
    policy: GangPolicy,
    flags: list[str],
    env: dict[str, str],
    log_dir: str,
    metrics_uri: str,
) -> dict:
    """The gang task: places N hosts all or none, runs a trainer on each, and
    returns how the gang ended: {"outcome": succeeded | failed | preempted |
    unplaced | stalled, ...}."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    host_actor = ray.remote(max_restarts=0)(TrainerHost)
    try:
        pg, bundles, release = _place(policy, hosts)
    except _Unplaced as e:
        return {"outcome": "unplaced", "detail": str(e)}
    started = time.time()
    workers = []
    placed = _hosts(pg)

    def end(outcome: str, **fields) -> dict:
        times = {"started_at": started, "ended_at": time.time()}
        return {"outcome": outcome, "hosts": placed, **times, **fields}

    try:
        for i, bundle in enumerate(bundles):
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
        hosts = len(workers)
        coordinator = ray.get(workers[0].coordinator.remote()) if hosts > 1 else ""
        refs = {
            w.train.remote(
                spec_text,
                coordinator,
                hosts,
                i,
                flags,
                env,
                os.path.join(log_dir, f"host-{i}.log"),
                module=policy.trainer(),
            ): i
            for i, w in enumerate(workers)
        }
        progress = _Progress(metrics_uri)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=policy.watch_interval_s)
            if not ready:
                idle = progress.idle_s()
                limit = policy.stall_timeout_s if progress.started else policy.startup_timeout_s
                if policy.stall_timeout_s and idle > limit:
                    what = "no step logged" if progress.started else "no first step"
                    return end("stalled", detail=f"{what} for {idle:.0f}s")
                continue
            i = refs.pop(ready[0])
            try:
                code, tail = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                return end("preempted", worker=i, detail=f"host lost: {e}")
            if code != 0:
                kind = "preempted" if code in _PREEMPTED_SIGNALS else "failed"
                return end(kind, worker=i, code=code, detail=tail)
        return end("succeeded")
    finally:
        # All or none: one worker down takes the others down with it.
        for w in workers:
            ray.kill(w)
        release()


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
            # None: a new local cluster, never one another process started here.
            ray.init(address=address or "local", **(init_kwargs or {}))
        self._ray = ray
        self.policy = policy
        self.capacity = _count_slices(policy)
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
        metrics_uri = storage.join(job.spec.checkpoint_dir, job.run_id, "metrics.jsonl")
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
            # On TPU the gang reserves its slice's head itself; elsewhere it
            # holds a unit of the slice resource while it runs.
            holds = {} if policy.tpu_topology else {policy.slice_resource: 1}
            ref = self._gang.options(resources=holds).remote(
                spec_text, job.hosts, policy, self._flags, self._env, log_dir, metrics_uri
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
                self._log(f"{job.name}: gang done on {', '.join(end['hosts'])}")
                break
            if end["outcome"] == "preempted":
                preemptions += 1
                over = preemptions > policy.max_preemptions
            else:
                failures += 1
                over = failures > policy.max_failures
            what = _describe_end(end)
            self._log(f"{job.name}: {what}")
            if over:
                raise PhaseFailed(
                    f"{job.name}: run {job.run_id} gave up after {preemptions} preemptions and "
                    f"{failures} failures (limits {policy.max_preemptions} and "
                    f"{policy.max_failures}); last: {what}:\n{end.get('detail', '')}"
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
            hosts=tuple(end["hosts"]),
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


def _describe_end(end: dict) -> str:
    """One line for a gang that did not succeed."""
    if end["outcome"] == "preempted":
        return f"worker {end.get('worker', '?')} preempted ({end.get('code', 'host lost')})"
    if end["outcome"] == "unplaced":
        return f"gang not placed: {end['detail']}"
    if end["outcome"] == "stalled":
        return f"gang stalled, ended: {end['detail']}"
    return f"worker {end.get('worker', '?')} failed (exit {end.get('code', '?')})"


def _count_slices(policy: GangPolicy) -> int:
    """The slices the cluster offers to the policy's gangs (see the module
    docstring). Raises ValueError naming the option when there are none."""
    import ray

    if policy.tpu_topology:
        from ray.util import tpu

        slices = tpu.get_num_tpu_slices(policy.tpu_topology, policy.accelerator_type())
        if slices < 1:
            raise ValueError(
                f"tpu_topology: the Ray cluster has no intact {policy.tpu_version} "
                f"{policy.tpu_topology} slice (hosts with TPU chips, ray.io/tpu-slice-name, "
                "-worker-id and -pod-type labels, the head resource on worker 0)"
            )
        return slices
    slices = int(ray.cluster_resources().get(policy.slice_resource, 0))
    if slices < 1:
        raise ValueError(
            f"slice_resource: the Ray cluster offers no {policy.slice_resource!r} "
            f"resource (one unit per slice); it has {sorted(ray.cluster_resources())}"
        )
    return slices


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
