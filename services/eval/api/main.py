"""The eval service binary: serves EvalService until SIGTERM.

Prints `EvalService listening on HOST:PORT` once it serves. Only wires flags to the
harness; see harness.py for what the service does.
"""

from __future__ import annotations

import os

from absl import app, flags

from libs.cli import logs
from libs.serving import server as serving
from proto import eval_pb2_grpc
from services.eval import code_exec, flag_defs
from services.eval.harness import Harness, JudgeSpec
from services.eval.results_db import ResultsDB
from services.eval.api.servicer import SERVICE_NAME, EvalServicer

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "judge_base_url", "", "Default judge for Compare: an OpenAI-compatible base URL (.../v1)."
)
flags.DEFINE_string("judge_model", "", "Model name sent to the default judge.")
flags.DEFINE_string(
    "judge_api_key_env",
    "OPENAI_API_KEY",
    "Environment variable holding the default judge's API key.",
)
flags.DEFINE_string(
    "judge_checkpoint", "", "Default judge for Compare: a local checkpoint URI (likelihood judge)."
)
flags.DEFINE_integer("max_loaded_models", 2, "Checkpoints kept loaded between requests.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logs.quiet_libraries()
    api_key_env = FLAGS.judge_api_key_env if FLAGS.judge_api_key_env in os.environ else ""
    db = ResultsDB(flag_defs.results_db())
    harness = Harness(
        benchmarks_dir=flag_defs.benchmarks_dir(),
        results_db=db,
        cache_dir=flag_defs.cache_dir(),
        source=FLAGS.task_source,
        code_runner=code_exec.CodeRunner(parallelism=flag_defs.sandbox_parallelism()),
        heldout_corpus_dir=flag_defs.heldout_corpus_dir(),
        default_judge=JudgeSpec(
            openai_base_url=FLAGS.judge_base_url,
            openai_model=FLAGS.judge_model,
            openai_api_key_env=api_key_env,
            checkpoint_uri=FLAGS.judge_checkpoint,
        ),
        max_loaded_models=FLAGS.max_loaded_models,
    )
    serving.serve_from_flags(
        "EvalService",
        [(eval_pb2_grpc.add_EvalServiceServicer_to_server, EvalServicer(harness))],
        [SERVICE_NAME],
        on_stop=db.close,
    )


if __name__ == "__main__":
    app.run(main)
