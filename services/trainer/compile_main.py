"""Does a run's training step fit a TPU slice? Compile it ahead of time and see.

    bazel run //services/trainer:compile -- --preset=470m --topology=v5e-16 \\
        --global_batch_size=512 --seq_len=8192 [--microbatches=K | --auto]
    bazel run //services/trainer:compile -- --spec=studies/specs/470m.textproto --topology=v5e-16

Prints per-chip memory against the chip's usable HBM, the step's FLOPs, the mesh, the
microbatches and the remat policy, and ends with one JSON line. Exits 1 when the step does
not fit. Runs on a CPU-only host (libtpu compiles for the topology); see libs/tpu/aot.py.
"""

from __future__ import annotations

from libs.tpu import aot

aot.use_libtpu()  # before JAX starts any backend

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from libs import errors  # noqa: E402
from libs.cli import logs, paths  # noqa: E402
from proto import trainer_pb2  # noqa: E402
from services.trainer import compile_report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("topology", "v5e-16", f"TPU slice: one of {', '.join(aot.TOPOLOGY_SHAPES)}.")
flags.DEFINE_string("spec", "", "A study spec (textproto): take preset, batch, mesh, ... from it.")
flags.DEFINE_string("preset", "470m", "Model preset.")
flags.DEFINE_integer("global_batch_size", 512, "Sequences per step, all devices together.")
flags.DEFINE_integer("seq_len", 8192, "Tokens per sequence.")
flags.DEFINE_integer("microbatches", 0, "Gradient-accumulation microbatches (0: the spec's, or 1).")
flags.DEFINE_bool("auto", False, "Pick the fewest microbatches that fit.")
flags.DEFINE_enum("remat", "", ["", "none", "full", "save_dots"], "Remat policy ('': preset's).")
flags.DEFINE_enum("attention", "", ["", "xla", "splash"], "Attention ('': splash on TPU).")
flags.DEFINE_list("mesh", [], "data,fsdp,tensor (default: the spec's, or fsdp over every chip).")
flags.DEFINE_string("dtype", "bfloat16", "Compute dtype (a spec's own wins).")
flags.DEFINE_float("min_headroom", 0.0, "Fail unless at least this fraction of HBM is left.")


def _run_spec(num_devices: int) -> trainer_pb2.RunSpec:
    """The RunSpec whose step is compiled: from --spec and the flags, flags winning."""
    spec = trainer_pb2.RunSpec(
        run_id="compile",
        preset=FLAGS.preset,
        global_batch_size=FLAGS.global_batch_size,
        seq_len=FLAGS.seq_len,
        compute_dtype=FLAGS.dtype,
        mesh=trainer_pb2.Mesh(data=1, fsdp=num_devices, tensor=1),
        microbatches=1,
    )
    if FLAGS.spec:
        spec = compile_report.spec_from_study(paths.resolve(FLAGS.spec), num_devices)
    for flag in ("preset", "global_batch_size", "seq_len"):
        if FLAGS[flag].present:
            setattr(spec, flag, FLAGS[flag].value)
    if FLAGS.microbatches:
        spec.microbatches = FLAGS.microbatches
    if FLAGS.remat:
        spec.remat = trainer_pb2.Remat.Value(f"REMAT_{FLAGS.remat.upper()}")
    if FLAGS.attention:
        spec.attention = trainer_pb2.Attention.Value(f"ATTENTION_{FLAGS.attention.upper()}")
    if FLAGS.mesh:
        data, fsdp, tensor = (int(x) for x in FLAGS.mesh)
        spec.mesh.CopyFrom(trainer_pb2.Mesh(data=data, fsdp=fsdp, tensor=tensor))
    return spec


def main(argv):
    del argv
    logs.quiet_libraries()
    devices = aot.topology_devices(FLAGS.topology)
    spec = _run_spec(len(devices))
    try:
        ok = compile_report.report(
            spec,
            devices,
            topology=FLAGS.topology,
            auto=FLAGS.auto,
            min_headroom=FLAGS.min_headroom,
        )
    except errors.FieldError as e:
        raise app.UsageError(str(e)) from None
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    app.run(main)
