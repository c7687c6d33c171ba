"""Does evaluating a preset fit a TPU host? Compile its scoring and generation and see.

    bazel run //services/eval:compile -- --preset=2.8b --topology=v5e-8

Compiles the eval service's scoring (rows of --seq_len tokens, every position
scored) and generation (prefill of --prompt_len tokens and a KV-cache decode loop
of --new_tokens) on the eval mesh of the topology's chips, each at the largest
power-of-two batch that fits; prints bytes a chip against the chip's usable HBM
and ends with one JSON line. Exits 1 when either does not fit at one row a chip.
Runs on a CPU-only host (libtpu compiles for the topology; libs/tpu/aot.py).
"""

from __future__ import annotations

import os

from libs.tpu import aot

# Compiling needs no chip: another process holding libtpu (a trainer's compile tool,
# tests run in parallel) is no reason to refuse.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
aot.use_libtpu()  # before JAX starts any backend

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from libs import errors  # noqa: E402
from libs.cli import logs  # noqa: E402
from services.eval import compile_report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("topology", "v5e-8", f"TPU slice: one of {', '.join(aot.TOPOLOGY_SHAPES)}.")
flags.DEFINE_string("preset", "2.8b", "Model preset.")
flags.DEFINE_integer("seq_len", 0, "Tokens a scoring row (0: the preset's max_seq_len).")
flags.DEFINE_integer("prompt_len", 1024, "Prompt tokens of a generation batch.")
flags.DEFINE_integer("new_tokens", 512, "New tokens a generated row.")
flags.DEFINE_string("dtype", "bfloat16", "Compute dtype (a checkpoint carries its run's).")
flags.DEFINE_integer("max_batch", 1024, "Stop doubling the batch here.")


def main(argv):
    del argv
    logs.quiet_libraries()
    devices = aot.topology_devices(FLAGS.topology)
    try:
        ok = compile_report.report(
            FLAGS.preset,
            devices,
            topology=FLAGS.topology,
            seq_len=FLAGS.seq_len,
            prompt_len=FLAGS.prompt_len,
            new_tokens=FLAGS.new_tokens,
            dtype=FLAGS.dtype,
            max_batch=FLAGS.max_batch,
        )
    except errors.FieldError as e:
        raise app.UsageError(str(e)) from None
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    app.run(main)
