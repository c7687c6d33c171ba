"""The trainer on a TPU VM: main.py's binary with libtpu from @libtpu_wheel.

libtpu is kept out of the main environment, so that JAX on a CPU machine starts no TPU
runtime; this entry points JAX at the libtpu.so in its runfiles (or at TPU_LIBRARY_PATH)
before JAX is imported, and makes --require_platform=tpu the default: a host whose JAX
devices are not TPUs stops with an error instead of training on its CPU.

    ./bazelw run //services/trainer:trainer_tpu -- --run_spec=...
    python -m services.trainer.api.main_tpu ...   (the study runner's TPU gangs)
"""

from __future__ import annotations

import sys

from libs.tpu import aot

try:
    aot.use_libtpu_runtime()
except RuntimeError as e:
    sys.exit(f"error: {e}")

from absl import app, flags  # noqa: E402

from services.trainer.api import main  # noqa: E402

flags.FLAGS.set_default("require_platform", "tpu")

if __name__ == "__main__":
    app.run(main.main)
