"""The trainer binary: trains a RunSpec, or serves TrainerService with --serve.

With no flags it runs the README's main job (runs/tiny.textproto): the tiny
model on the default corpus, starting a local data service. On a TPU VM the
entry is main_tpu.py (//services/trainer:trainer_tpu), which brings libtpu.
"""

from __future__ import annotations

import sys

# --compile_only compiles for a TPU topology with libtpu, which JAX must be pointed
# at before it is imported.
if "--compile_only" in sys.argv[1:]:
    from libs.tpu import aot

    aot.use_libtpu()

import os  # noqa: E402
import signal  # noqa: E402

from absl import app, flags  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from libs import errors  # noqa: E402
from libs.cli import logs, paths  # noqa: E402
from libs.serving import credentials as credentials_lib  # noqa: E402
from libs.serving import server as serving  # noqa: E402
from libs.tpu import aot  # noqa: E402
from proto import trainer_pb2, trainer_pb2_grpc  # noqa: E402
from services.trainer import compile_report, data_link  # noqa: E402
from services.trainer.api.servicer import SERVICE_NAME, TrainerServicer  # noqa: E402
from services.trainer.runs import STOPPED_EXIT_STATUS, Runs  # noqa: E402

DEFAULT_SPEC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "tiny.textproto"
)

PLATFORMS = ["cpu", "gpu", "tpu"]

FLAGS = flags.FLAGS
flags.DEFINE_string("run_spec", DEFAULT_SPEC, "RunSpec text proto to train.")
flags.DEFINE_string("preset", None, "Override the spec's model preset (tiny, small, 470m, 2.8b).")
flags.DEFINE_string("run_id", None, "Override the spec's run_id.")
flags.DEFINE_string("data_address", None, "host:port of a data service; default: start one.")
flags.DEFINE_list(
    "data_addresses",
    None,
    "Comma-separated host:port replicas of the data service (process i reads replica i mod R).",
)
flags.DEFINE_string("checkpoint_dir", None, "Override the spec's checkpoint_dir (path or gs://).")
flags.DEFINE_string("mesh", None, "Device mesh as data,fsdp,tensor (e.g. 1,8,1).")
flags.DEFINE_bool("serve", False, "Serve TrainerService instead of training one spec.")
flags.DEFINE_multi_string("data_flag", [], "Flag passed to a locally started data service.")
flags.DEFINE_string(
    "data_auth_token_file",
    None,
    "File holding the data service's bearer token (sent on every call).",
)
flags.DEFINE_string(
    "data_tls_ca", None, "PEM CA certificate of the data service's TLS certificate; enables TLS."
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run with jax.distributed (TPU/GPU slices detect the "
    "rest; on CPUs give the three flags below).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
flags.DEFINE_bool(
    "compile_only",
    False,
    "Run the start-up for --topology on this host and stop: spec checks, the mesh of the "
    "topology's devices, the sharded initialisation and the step compiled by libtpu; prints "
    "the compile tool's report. The run is --spec (a study) or --run_spec.",
)
flags.DEFINE_string("topology", "v5e-16", "--compile_only: the TPU slice (v5e-16, v4-8, ...).")
flags.DEFINE_string("spec", None, "--compile_only: a study spec whose step to compile.")
flags.DEFINE_integer("num_processes", None, "Processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_enum(
    "require_platform",
    None,
    PLATFORMS,
    "Stop before training or serving unless JAX's devices are all of this platform "
    "(trainer_tpu sets tpu: a TPU run never trains on a host's CPU).",
)


def load_spec(path: str) -> trainer_pb2.RunSpec:
    path = paths.resolve(path)
    try:
        with open(path) as f:
            return text_format.Parse(f.read(), trainer_pb2.RunSpec())
    except OSError as e:
        raise app.UsageError(f"--run_spec: cannot read {path}: {e.strerror}")
    except text_format.ParseError as e:
        raise app.UsageError(f"--run_spec: {path}: {e}")


def _spec_from_flags() -> trainer_pb2.RunSpec:
    spec = load_spec(FLAGS.run_spec)  # load_spec resolves it
    for name in ("preset", "run_id", "data_address"):
        if FLAGS[name].value is not None:
            setattr(spec, name, FLAGS[name].value)
    if FLAGS.checkpoint_dir is not None:
        spec.checkpoint_dir = paths.resolve(FLAGS.checkpoint_dir)
    if FLAGS.data_addresses:
        spec.ClearField("data_address")
        spec.data_addresses[:] = FLAGS.data_addresses
    if FLAGS.mesh:
        try:
            data, fsdp, tensor = (int(x) for x in FLAGS.mesh.split(","))
        except ValueError:
            raise app.UsageError(f"--mesh: expected data,fsdp,tensor integers, got {FLAGS.mesh!r}")
        spec.mesh.CopyFrom(trainer_pb2.Mesh(data=data, fsdp=fsdp, tensor=tensor))
    return spec


def _credentials() -> credentials_lib.ClientCredentials:
    try:
        return credentials_lib.load(
            paths.resolve(FLAGS.data_auth_token_file),
            paths.resolve(FLAGS.data_tls_ca),
            token_flag="data_auth_token_file",
            ca_flag="data_tls_ca",
        )
    except credentials_lib.CredentialsError as e:
        raise app.UsageError(str(e))


def _connect(spec):
    import jax

    # Each process pulls its own shard of every global batch, from replica
    # process_index mod R when the spec lists several.
    return data_link.connect(
        spec,
        data_flags=FLAGS.data_flag,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
        credentials=_credentials(),
    )


def _init_distributed() -> None:
    import jax

    # Only CPU devices use it; set before any backend starts.
    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
    )


def platform_error(required: str, devices) -> str | None:
    """Why `devices` cannot serve a run that asked for `required` devices (None: they can)."""
    found = sorted({d.platform for d in devices})
    if found == [required]:
        return None
    shown = ", ".join(map(str, devices[:4])) + (", ..." if len(devices) > 4 else "")
    # A TPU VM whose runtime did not start looks like a CPU host to JAX.
    library = f"; TPU_LIBRARY_PATH={os.environ.get('TPU_LIBRARY_PATH', 'unset')}"
    return (
        f"--require_platform={required}: JAX's devices here are {len(devices)} "
        f"{'+'.join(found)} ({shown}), not {required}"
        f"{library if required == 'tpu' else ''}; these devices train with "
        "//services/trainer and no --require_platform"
    )


def _check_platform(required: str) -> None:
    import jax

    error = platform_error(required, jax.devices())
    if error:
        sys.exit(f"error: {error}")


def main(argv):
    # Orbax logs every step of every save at INFO; the trainer reports commits itself.
    logs.quiet_libraries()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.compile_only:
        sys.exit(_compile_only())
    _credentials()  # a bad credentials flag fails at start, not at the first run
    if FLAGS.distributed:
        _init_distributed()
    if FLAGS.require_platform:
        _check_platform(FLAGS.require_platform)
    if FLAGS.serve:
        runs = Runs(_connect, console=True)
        serving.serve_from_flags(
            "TrainerService",
            [(trainer_pb2_grpc.add_TrainerServiceServicer_to_server, TrainerServicer(runs))],
            [SERVICE_NAME],
            on_stop=lambda: runs.stop_all(timeout=60),
        )
        return
    spec = _spec_from_flags()
    runs = Runs(_connect, console=True)
    try:
        run_id, resumed = runs.start(spec)
    except errors.FieldError as e:
        sys.exit(f"error: spec.{e}")
    except data_link.DataAuthError as e:
        sys.exit(f"error: {e}")
    print(
        f"run {run_id}: {'resumed from its last checkpoint' if resumed else 'started'}", flush=True
    )
    # SIGTERM/Ctrl-C: stop after the current step with a checkpoint, so a later start
    # resumes there, and let the run close its data service.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runs.request_stop_all())
    status = runs.wait(run_id)
    _summarise(runs, run_id, status)
    if status.state == trainer_pb2.STOPPED:
        print(
            f"run {run_id} stopped at step {status.step}; start it again to resume", file=sys.stderr
        )
        sys.exit(STOPPED_EXIT_STATUS)
    if status.state != trainer_pb2.SUCCEEDED:
        sys.exit(f"run {run_id} ended {trainer_pb2.RunState.Name(status.state)}: {status.error}")


def _compile_only() -> int:
    """The trainer's start-up for a topology, compiled on this host (0: it fits)."""
    aot.use_libtpu()  # before JAX starts a backend
    devices = aot.topology_devices(FLAGS.topology)
    if FLAGS.spec:
        spec = compile_report.spec_from_study(paths.resolve(FLAGS.spec), len(devices))
    else:
        spec = _spec_from_flags()
    try:
        fits = compile_report.report(spec, devices, topology=FLAGS.topology, startup=True)
    except errors.FieldError as e:
        raise app.UsageError(f"spec.{e}") from None
    return 0 if fits else 1


def _summarise(runs: Runs, run_id: str, status) -> None:
    checkpoints, last_metrics = [], {}
    for event in runs.watch(run_id):
        kind = event.WhichOneof("event")
        if kind == "checkpoint":
            checkpoints.append(event.checkpoint)
        elif kind == "metrics":
            last_metrics[event.metrics.phase] = event.metrics
    print(f"\nrun {run_id} {trainer_pb2.RunState.Name(status.state)} at step {status.step}")
    for phase, m in last_metrics.items():
        per_source = ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.source_loss.items()))
        print(f"  {phase:<10} final loss {m.loss:.3f} ({per_source})")
    for c in checkpoints:
        print(
            f"  checkpoint step {c.step:>5} phase {c.lineage.phase:<10} {c.uri}"
            + ("  [phase end]" if c.phase_end else "")
        )


if __name__ == "__main__":
    app.run(main)
