"""Runs a study end to end: trains every planned phase once, evaluates it,
judges win rates, and writes the report.

The three services are separate processes reached over gRPC (studies/
service_processes.py starts them, or uses running ones). Trainings go to a backend
(studies/backends.py): the local trainer service, one at a time, or gangs on
a Ray cluster, as many at once as it has slices. Each phase is submitted as
soon as its parent's final checkpoint is recorded, and each finished phase
is evaluated on a worker thread while others train. Every finished step is
recorded in the output directory's state file (studies/state.py) before the
next begins, so a runner stopped at any point (SIGTERM, SIGKILL, a crash)
and started again skips what is done; a half-trained phase resumes from the
trainer's last committed checkpoint, because its run id and checkpoint
directory are the same, and a half-evaluated one reuses the tasks the eval
service already stored. The output directory may be a gs:// URI
(libs/storage).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import sys
import time

import grpc
from google.protobuf import json_format

from libs import storage
from libs.cli import paths
from libs.serving import credentials as credentials_lib
from proto import eval_pb2, study_pb2
from studies import compare
from studies import plan as plan_lib
from studies import report as report_lib
from studies import spec as spec_lib
from studies.backends import Backend, LocalBackend, PhaseFailed, PhaseJob, PhaseResult
from studies.plan import Plan, PlannedPhase
from studies.service_processes import Services
from studies.state import State


class StudyRunError(RuntimeError):
    """A phase failed; the message says which, why, and that a rerun resumes."""


@dataclasses.dataclass
class JudgeOverride:
    """A judge given on the command line, replacing the spec's."""

    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    checkpoint_uri: str = ""


def checkpoint_dir(study: study_pb2.Study, out_dir: str) -> str:
    return study.checkpoint_dir or storage.join(out_dir, "checkpoints")


def write_report(study: study_pb2.Study, plan: Plan, state: State, out_dir: str) -> str:
    """Writes report.md and its figures into `out_dir`; returns report.md's location.

    The report module draws into a local directory; for a gs:// output it
    draws into this machine's stand-in for it, then uploads the files."""
    if not storage.is_gcs(out_dir):
        return report_lib.write(study, plan, state, out_dir)
    staging = os.path.join(storage.local_dir(out_dir), "report")
    path = report_lib.write(study, plan, state, staging)
    storage.upload_tree(
        os.path.join(staging, report_lib.FIGURES), storage.join(out_dir, report_lib.FIGURES)
    )
    target = storage.join(out_dir, os.path.basename(path))
    with open(path, "rb") as f:
        storage.write_bytes(target, f.read())
    return target


class Runner:
    def __init__(
        self,
        study: study_pb2.Study,
        out_dir: str,
        services: Services,
        *,
        log=print,
        judge: JudgeOverride | None = None,
        parallel_eval: bool = True,
        backend: Backend | None = None,
        hosts: int = 1,
        data_replicas: list[str] | None = None,
    ):
        self.study = study
        self.out_dir = out_dir
        self.services = services
        self.log = log
        self.judge_override = judge or JudgeOverride()
        self.parallel_eval = parallel_eval
        self._backend = backend
        self.hosts = hosts
        # Further data services serving the same corpus as services' "data".
        self.data_replicas = list(data_replicas or [])
        self.plan: Plan = plan_lib.build(study)
        self.state = State(out_dir)
        # What this invocation did, for the summary and for tests.
        self.trained: list[str] = []
        self.reused: list[str] = []
        self.evaluated: list[str] = []

    # -- the whole study -------------------------------------------------------------

    def run(self) -> str:
        """Runs what is left and writes the report; returns the report's path."""
        started = time.monotonic()
        study, plan = self.study, self.plan
        self.log(
            f"study {study.name}: preset {study.preset}, scale {study.scale:g}, "
            f"{len(study.arms)} arms, {len(plan.phases)} distinct phases to train"
        )
        self.log(plan_lib.describe(plan))
        to_train = [p for p in plan.phases if self.state.phase(p.fingerprint) is None]
        settings = spec_lib.eval_settings(study)
        to_eval = [p for p in plan.phases if self.state.evaluation(p.fingerprint, settings) is None]
        to_judge = self._pending_judgements()
        if not (to_train or to_eval or to_judge):
            self.log("every phase is trained and evaluated: writing the report only")
        # Start what is needed from this thread: a service's parent-death
        # signal is tied to the thread that started it.
        if to_train:
            if self._backend is None or isinstance(self._backend, LocalBackend):
                self.services.address("trainer")
            self.services.address("data")
            self.state.set_sources(self.services.source_kinds())
            # Every planned run, by the trainer's rules and the data service's
            # verdict on its mixture, before the first one trains.
            try:
                plan_lib.validate(plan, check_mixture=self.services.check_mixture)
            except spec_lib.StudyError as e:
                raise StudyRunError(f"the study is refused before training: {e}") from None
        if to_eval or to_judge:
            self.services.address("eval")
        seeded = spec_lib.seeds(study) > 1
        labels = {
            p.fingerprint: f"[{i + 1}/{len(plan.phases)}] {p.name}"
            + (f" (seed {p.seed})" if seeded else "")
            for i, p in enumerate(plan.phases)
        }
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval")
        evaluations = []

        def evaluate(p):
            if self.state.evaluation(p.fingerprint, settings) is not None:
                return
            if self.parallel_eval:
                evaluations.append(pool.submit(self._evaluate, p, labels[p.fingerprint]))
            else:
                self._evaluate(p, labels[p.fingerprint])

        backend = self.backend() if to_train else None
        pending = []
        for p in plan.phases:
            if self.state.phase(p.fingerprint) is None:
                pending.append(p)
            else:
                self.reused.append(p.name)
                self.log(
                    f"{labels[p.fingerprint]}: finished before, reused "
                    f"({self.state.phase(p.fingerprint)['checkpoint_uri']})"
                )
                evaluate(p)
        running: dict[concurrent.futures.Future, PlannedPhase] = {}
        try:
            while pending or running:
                # Every phase whose parent's final checkpoint is committed, in
                # plan order, up to what the backend offers.
                for p in list(pending):
                    if len(running) >= backend.capacity:
                        break
                    if p.parent is None or self.state.phase(p.parent) is not None:
                        pending.remove(p)
                        running[self._submit(backend, p, labels[p.fingerprint])] = p
                if not running:
                    raise StudyRunError(
                        f"{pending[0].name}: its parent phase is neither trained nor planned"
                    )
                finished, _ = concurrent.futures.wait(
                    running, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    p = running.pop(future)
                    try:
                        result = future.result()
                    except PhaseFailed as e:
                        raise StudyRunError(str(e)) from None
                    self._record(p, labels[p.fingerprint], result)
                    self.trained.append(p.name)
                    evaluate(p)
                # A failed evaluation stops the study at once, not after training.
                for f in evaluations:
                    if f.done():
                        f.result()
            for f in evaluations:
                f.result()
        except BaseException:
            # Stopping: cancel the phases in flight (each resumes from its last
            # committed checkpoint) and do not wait for an evaluation; it ends
            # when its service is stopped.
            for p in running.values():
                backend.cancel(p.run_id)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        self._judge_all(to_judge)
        path = write_report(study, plan, self.state, self.out_dir)
        self.log(
            f"study {study.name}: trained {len(self.trained)}, reused {len(self.reused)}, "
            f"evaluated {len(self.evaluated)} phases in {time.monotonic() - started:.0f}s"
        )
        self.log(f"report: {path}")
        return path

    # -- training --------------------------------------------------------------------

    def backend(self) -> Backend:
        """The backend phases train on (made on first use: the local one
        reaches the trainer service through Services)."""
        if self._backend is None:
            steps = {p.run_id: p.steps for p in self.plan.phases}
            self._backend = LocalBackend(
                self.services.trainer,
                logs=lambda: self.services.logs("trainer"),
                log=self.log,
                total_steps=lambda job: steps.get(job.run_id, 0),
            )
        return self._backend

    def job(self, p: PlannedPhase) -> PhaseJob:
        parent_uri = ""
        if p.parent is not None:
            parent_uri = self.state.phase(p.parent)["checkpoint_uri"]
        run_spec = plan_lib.run_spec(
            self.study,
            p,
            parent_uri=parent_uri,
            data_address=self.services.address("data"),
            checkpoint_dir=checkpoint_dir(self.study, self.out_dir),
        )
        if self.data_replicas:
            # Replicas: trainer process i reads replica i mod R.
            run_spec.ClearField("data_address")
            run_spec.data_addresses[:] = [self.services.address("data")] + self.data_replicas
        return PhaseJob(name=p.name, spec=run_spec, hosts=self.hosts)

    def _submit(self, backend: Backend, p: PlannedPhase, label: str) -> concurrent.futures.Future:
        self.log(
            f"{label}: run {p.run_id}: {p.steps:,} steps, {p.tokens:,} tokens, "
            f"mixture {_mixture_words(p)}" + (f", {self.hosts} hosts" if self.hosts > 1 else "")
        )
        return backend.submit(self.job(p))

    def _record(self, p: PlannedPhase, label: str, result: PhaseResult) -> None:
        records = result.metrics
        self.state.write_curves(p.run_id, records)
        final = result.final
        lineage = final.lineage
        last = records[-1] if records else {}
        self.state.finish_phase(
            p.fingerprint,
            {
                "refs": p.refs,
                "run_id": p.run_id,
                "checkpoint_uri": final.uri,
                "step": final.step,
                "tokens_seen": lineage.tokens_seen,
                "tokens_per_source": dict(lineage.tokens_per_source),
                "parent_uri": lineage.parent_uri,
                "final_loss": last.get("loss"),
                "final_source_loss": last.get("source_loss", {}),
                "train_seconds": result.finished_at - result.started_at,
                "started_at": result.started_at,
                "trained_at": result.finished_at,
                "attempts": result.attempts,
                "preemptions": result.preemptions,
                "failures": result.failures,
            },
        )
        self.log(
            f"{label}: trained in {result.finished_at - result.started_at:.0f}s"
            + (f" ({result.attempts} attempts)" if result.attempts > 1 else "")
            + f", final loss {last.get('loss', float('nan')):.3f} -> {final.uri}"
        )

    # -- evaluation ------------------------------------------------------------------

    def _evaluate(self, p: PlannedPhase, label: str) -> None:
        uri = self.state.phase(p.fingerprint)["checkpoint_uri"]
        e = self.study.evaluation
        request = eval_pb2.EvaluateRequest(
            checkpoint_uri=uri,
            suite=e.suite,
            tasks=e.tasks,
            limit=e.limit,
            num_samples=e.num_samples,
            seed=e.seed,
            generation_limit=e.generation_limit,
        )
        started = time.monotonic()
        try:
            results = [
                json_format.MessageToDict(r, preserving_proto_field_name=True)
                for r in self.services.eval().Evaluate(request)
            ]
        except grpc.RpcError as err:
            raise StudyRunError(
                f"{p.name}: evaluating {uri} failed: {err.code().name} "
                f"{err.details()}\n{self.services.logs('eval')}"
            ) from None
        for r in results:  # proto3 JSON drops zeros; the report wants every number
            for key in ("value", "ci_low", "ci_high", "num_examples"):
                r.setdefault(key, 0)
        self.state.finish_evaluation(
            p.fingerprint,
            spec_lib.eval_settings(self.study),
            {"checkpoint_uri": uri, "results": results, "eval_seconds": time.monotonic() - started},
        )
        self.evaluated.append(p.name)
        scores = {
            r["task"].removeprefix(compare.AGGREGATE_PREFIX): r["value"]
            for r in results
            if r["task"].startswith(compare.AGGREGATE_PREFIX)
        }
        self.log(
            f"{label}: evaluated in {time.monotonic() - started:.0f}s: "
            + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        )

    # -- judge -----------------------------------------------------------------------

    def _judge_request(self) -> eval_pb2.Judge | None:
        """The judge of Compare requests; None: the eval service's default."""
        o = self.judge_override
        if o.base_url:
            return eval_pb2.Judge(
                openai=eval_pb2.OpenAIJudge(
                    base_url=o.base_url, model=o.model, api_key_env=o.api_key_env
                )
            )
        if o.checkpoint_uri:
            return eval_pb2.Judge(checkpoint_uri=o.checkpoint_uri)
        j = self.study.judge
        kind = j.WhichOneof("judge")
        if kind == "openai":
            return eval_pb2.Judge(openai=j.openai)
        if kind == "checkpoint_uri":
            return eval_pb2.Judge(checkpoint_uri=j.checkpoint_uri)
        if kind == "judge_phase":
            judge = self.state.phase(self.plan.lookup(j.judge_phase).fingerprint)
            return eval_pb2.Judge(checkpoint_uri=judge["checkpoint_uri"])
        return None

    def _judge_identity(self) -> bytes:
        """What makes two judges the same, known before any training."""
        o, j = self.judge_override, self.study.judge
        if o.base_url or o.checkpoint_uri:
            return f"override|{o.base_url}|{o.model}|{o.checkpoint_uri}".encode()
        if j.WhichOneof("judge") == "judge_phase":
            return b"phase|" + self.plan.lookup(j.judge_phase).fingerprint.encode()
        copy = study_pb2.JudgeSettings()
        copy.CopyFrom(j)
        copy.ClearField("compare")
        return copy.SerializeToString(deterministic=True)

    def _comparisons(self) -> list[tuple[PlannedPhase, PlannedPhase, str]]:
        """(phase A, baseline B, key) of every judged pair."""
        if not self.study.HasField("judge"):
            return []
        j = self.study.judge
        baseline = self.plan.lookup(self.study.baseline)
        # A twin repeats its original on other seeds: nothing for a judge to add.
        refs = list(j.compare) or [arm.name for arm in self.study.arms if not arm.twin_of]
        judge_identity = self._judge_identity()
        out, seen = [], set()
        for ref in refs:
            a = self.plan.lookup(ref)
            if a.fingerprint == baseline.fingerprint or a.fingerprint in seen:
                continue
            seen.add(a.fingerprint)
            key = hashlib.sha256(
                b"|".join([a.fingerprint.encode(), baseline.fingerprint.encode(), judge_identity])
            ).hexdigest()[:24]
            out.append((a, baseline, key))
        return out

    def _pending_judgements(self) -> list[tuple[PlannedPhase, PlannedPhase, str]]:
        return [c for c in self._comparisons() if self.state.judgement(c[2]) is None]

    def _judge_all(self, pending) -> None:
        j = self.study.judge
        for a, b, key in pending:
            judge = self._judge_request()
            uri_a = self.state.phase(a.fingerprint)["checkpoint_uri"]
            uri_b = self.state.phase(b.fingerprint)["checkpoint_uri"]
            request = eval_pb2.CompareRequest(
                checkpoint_a=uri_a,
                checkpoint_b=uri_b,
                prompt_set=j.prompt_set,
                limit=j.limit,
                max_new_tokens=j.max_new_tokens,
                seed=j.seed,
            )
            if judge is not None:
                request.judge.CopyFrom(judge)
            started = time.monotonic()
            try:
                c = self.services.eval().Compare(request)
            except grpc.RpcError as err:
                raise StudyRunError(
                    f"judging {a.name} against {b.name} failed: {err.code().name} {err.details()}"
                ) from None
            self.state.finish_judgement(
                key,
                {
                    "a": a.name,
                    "b": b.name,
                    "a_fingerprint": a.fingerprint,
                    "b_fingerprint": b.fingerprint,
                    "win_rate": c.win_rate,
                    "wins": c.wins,
                    "losses": c.losses,
                    "ties": c.ties,
                    "num_prompts": c.num_prompts,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                    "judge": json_format.MessageToDict(judge) if judge else "service default",
                    "seconds": time.monotonic() - started,
                },
            )
            self.log(
                f"win rate {a.name} vs {b.name}: {c.win_rate:.3f} "
                f"[{c.ci_low:.3f}, {c.ci_high:.3f}] over {c.num_prompts} prompts"
            )


def _mixture_words(p: PlannedPhase) -> str:
    stages = []
    for stage in p.mixture.stages:
        total = sum(w.weight for w in stage.weights)
        stages.append(
            " ".join(f"{w.source} {w.weight / total:.0%}" for w in stage.weights if w.weight > 0)
        )
    return (p.mixture.name + ": " if p.mixture.name else "") + " | ".join(stages)


def log_to_stdout(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    for line in str(text).splitlines() or [""]:
        print(f"{stamp} {line}", file=sys.stdout, flush=True)


@dataclasses.dataclass
class Options:
    """Everything the runner binary's flags say."""

    spec_path: str
    out_dir: str = ""  # default: /tmp/code_lab/studies/<study name>
    addresses: dict = dataclasses.field(default_factory=dict)  # data/trainer/eval -> host:port
    service_flags: dict = dataclasses.field(default_factory=dict)  # name -> extra flags
    judge: JudgeOverride = dataclasses.field(default_factory=JudgeOverride)
    report_only: bool = False
    plan_only: bool = False
    parallel_eval: bool = True
    echo_services: bool = False
    # The data service's bearer token and CA certificate, as files; passed on
    # to the trainer services the runner starts (given by address, a trainer
    # must have been started with them: --data_auth_token_file, --data_tls_ca).
    data_auth_token_file: str = ""
    data_tls_ca: str = ""
    # Where phases train: "local" (the trainer service) or "ray" (gangs on a
    # Ray cluster; see studies/backends_ray.py and docs/cluster.md).
    backend: str = "local"
    ray_address: str = ""  # "": start a local Ray cluster with ray_slices slices
    ray_slices: int = 1
    slice_resource: str = "code_lab_slice"
    tpu_topology: str = ""  # with tpu_version: a gang is one TPU slice's hosts
    tpu_version: str = ""
    hosts_per_phase: int = 1
    data_replicas: list = dataclasses.field(default_factory=list)  # more data services
    max_failures: int = 2
    max_preemptions: int = 20
    placement_timeout_s: float = 600.0
    stall_timeout_s: float = 1800.0
    startup_timeout_s: float = 3600.0


RUNNER_LOCK = "runner.lock"


def default_out_dir(study: study_pb2.Study) -> str:
    return os.path.join("/tmp", "code_lab", "studies", study.name)


def main(options: Options, log=log_to_stdout) -> int:
    """The runner binary's body; returns the exit status."""
    import fcntl
    import signal

    try:
        study = spec_lib.load(paths.resolve(options.spec_path))
    except spec_lib.StudyError as e:
        print(f"error: {paths.resolve(options.spec_path)}: {e}", file=sys.stderr)
        return 2
    out_dir = paths.resolve(options.out_dir) if options.out_dir else default_out_dir(study)
    try:
        plan_lib.validate(plan_lib.build(study))  # the trainer's rules, before anything starts
    except spec_lib.StudyError as e:
        print(f"error: {paths.resolve(options.spec_path)}: {e}", file=sys.stderr)
        return 2
    if options.plan_only:
        log(plan_lib.describe(plan_lib.build(study)))
        return 0
    storage.makedirs(out_dir)
    # Locks and the eval service's per-task database are local files: for a
    # gs:// output they live in this machine's stand-in directory for it (the
    # lock then guards against a second runner on this machine only).
    work_dir = storage.local_dir(out_dir)
    lock = open(os.path.join(work_dir, RUNNER_LOCK), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"error: another runner is working in {out_dir}", file=sys.stderr)
        return 1
    storage.write_text(storage.join(out_dir, "study.textproto"), text_format_of(study))
    if options.report_only:
        runner = Runner(study, out_dir, Services(work_dir), log=log)
        log(f"report: {write_report(study, runner.plan, runner.state, out_dir)}")
        return 0
    flags = {name: list(extra) for name, extra in options.service_flags.items()}
    try:
        data_credentials = credentials_lib.load(
            options.data_auth_token_file,
            options.data_tls_ca,
            token_flag="data_auth_token_file",
            ca_flag="data_tls_ca",
        )
    except credentials_lib.CredentialsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer_flags = flags.setdefault("trainer", [])
    if options.data_auth_token_file:
        trainer_flags.append(
            f"--data_auth_token_file={paths.resolve(options.data_auth_token_file)}"
        )
    if options.data_tls_ca:
        trainer_flags.append(f"--data_tls_ca={paths.resolve(options.data_tls_ca)}")
    eval_flags = flags.setdefault("eval", [])
    if not any(f.startswith("--results_db") for f in eval_flags):
        # Per-task results survive a killed evaluation, beside the study's state.
        eval_flags.append(f"--results_db={os.path.join(work_dir, 'eval_results.sqlite')}")
    services = Services(
        work_dir,
        addresses=options.addresses,
        flags=flags,
        log=log,
        echo=options.echo_services,
        data_credentials=data_credentials,
    )

    try:
        backend = make_backend(options, trainer_flags, log)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    try:
        Runner(
            study,
            out_dir,
            services,
            log=log,
            judge=options.judge,
            parallel_eval=options.parallel_eval,
            backend=backend,
            hosts=options.hosts_per_phase,
            data_replicas=options.data_replicas,
        ).run()
        return 0
    except KeyboardInterrupt as e:
        log(f"stopped ({e or 'SIGINT'}); run the same command again to continue where it left off")
        return 130
    except StudyRunError as e:
        log(f"error: {e}")
        return 1
    finally:
        if backend is not None:
            backend.close()
        services.close()


def make_backend(options: Options, trainer_flags: list[str], log) -> Backend | None:
    """The backend the options name (None: the local one, made by the Runner).
    Raises ValueError naming the option at fault."""
    if options.hosts_per_phase < 1:
        raise ValueError(f"hosts_per_phase: must be >= 1, got {options.hosts_per_phase}")
    if options.backend == "local":
        if options.hosts_per_phase > 1:
            raise ValueError("hosts_per_phase: more than one host needs --backend=ray")
        return None
    if options.backend != "ray":
        raise ValueError(f"backend: must be local or ray, got {options.backend!r}")
    from studies import backends_ray

    if bool(options.tpu_topology) != bool(options.tpu_version):
        raise ValueError("tpu_topology and tpu_version: give both or neither")
    policy = backends_ray.GangPolicy(
        slice_resource=options.slice_resource,
        tpu_topology=options.tpu_topology,
        tpu_version=options.tpu_version,
        max_failures=options.max_failures,
        max_preemptions=options.max_preemptions,
        placement_timeout_s=options.placement_timeout_s,
        stall_timeout_s=options.stall_timeout_s,
        startup_timeout_s=options.startup_timeout_s,
    )
    init = {}
    if not options.ray_address:
        # A cluster of this machine alone: its CPUs, and ray_slices slices.
        init = dict(
            num_cpus=os.cpu_count(),
            resources={options.slice_resource: options.ray_slices},
            include_dashboard=False,
        )
    # The trainer service's flags that a gang's trainers need too.
    flags = [f for f in trainer_flags if f.startswith(("--data_auth_token_file", "--data_tls_ca"))]
    return backends_ray.RayBackend(
        address=options.ray_address or None,
        policy=policy,
        trainer_flags=flags,
        log=log,
        init_kwargs=init,
    )


def text_format_of(study: study_pb2.Study) -> str:
    from google.protobuf import text_format

    return (
        "# proto-file: proto/study.proto\n# proto-message: codelab.study.v1.Study\n"
        "# The spec this output directory was last run with.\n" + text_format.MessageToString(study)
    )
