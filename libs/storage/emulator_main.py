"""A GCS emulator for trying gs:// by hand: the tests' patched gcp-storage-emulator.

    bazel run //libs/storage:emulator -- --port=9023 --bucket=bkt

Prints the environment that points every client at it, then serves until stopped.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from libs.storage import testing

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 9023, "Loopback port to serve on.")
flags.DEFINE_string("bucket", "bkt", "The one bucket it holds (in memory).")


def main(argv):
    del argv
    url = f"http://127.0.0.1:{FLAGS.port}"
    print("export " + " ".join(f"{k}={v}" for k, v in testing.client_env(url).items()), flush=True)
    os.execv(sys.executable, [sys.executable, "-c", testing.SERVE, str(FLAGS.port), FLAGS.bucket])


if __name__ == "__main__":
    app.run(main)
