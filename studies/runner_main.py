"""The study runner: `bazel run //studies:run -- --spec=studies/specs/tiny.textproto`.

Trains, evaluates and reports a Study (proto/study.proto) through the data,
trainer and eval services, starting them unless given their addresses.
Stopped and run again, it continues where it left off. Only wires flags to
studies/runner.py.
"""

import sys

from absl import app, flags

from libs.cli import logs
from studies import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("spec", None, "Study text proto (relative paths: from where bazel ran).")
flags.DEFINE_string(
    "out",
    "",
    "Output directory: state, curves, report, checkpoints "
    "(default /tmp/code_lab/studies/<study name>).",
)
flags.DEFINE_string("data_address", "", "host:port of a running DataService; default: start one.")
flags.DEFINE_string(
    "trainer_address", "", "host:port of a running TrainerService; default: start one."
)
flags.DEFINE_string("eval_address", "", "host:port of a running EvalService; default: start one.")
flags.DEFINE_multi_string(
    "data_flag", [], "Flag for a started data service, e.g. --data_flag=--corpus_dir=/data/corpus."
)
flags.DEFINE_multi_string("trainer_flag", [], "Flag for a started trainer service.")
flags.DEFINE_multi_string("eval_flag", [], "Flag for a started eval service.")
flags.DEFINE_string(
    "judge_base_url",
    "",
    "Judge win rates with this OpenAI-compatible endpoint (.../v1) instead of the spec's judge.",
)
flags.DEFINE_string("judge_model", "", "Model name for --judge_base_url.")
flags.DEFINE_string(
    "judge_api_key_env",
    "OPENAI_API_KEY",
    "Environment variable holding the judge endpoint's API key.",
)
flags.DEFINE_string(
    "judge_checkpoint", "", "Judge with this checkpoint URI instead of the spec's judge."
)
flags.DEFINE_bool("report_only", False, "Rewrite the report from recorded results; start nothing.")
flags.DEFINE_bool("plan_only", False, "Print the plan (trainings, budgets, sharing) and exit.")
flags.DEFINE_bool("parallel_eval", True, "Evaluate a finished phase while the next one trains.")
flags.DEFINE_bool("echo_services", False, "Echo the services' own output.")
flags.DEFINE_string(
    "data_auth_token_file",
    "",
    "File holding the data service's bearer token; the runner and its trainers send it.",
)
flags.DEFINE_string(
    "data_tls_ca", "", "PEM CA certificate of the data service's TLS certificate; enables TLS."
)
flags.DEFINE_enum(
    "backend", "local", ["local", "ray"], "Where phases train: the trainer service, or Ray gangs."
)
flags.DEFINE_string(
    "ray_address", "", "Ray cluster to use (e.g. auto); empty starts one on this machine."
)
flags.DEFINE_integer("ray_slices", 1, "Slices of a Ray cluster started on this machine.")
flags.DEFINE_string(
    "slice_resource", "code_lab_slice", "Ray custom resource with one unit per slice."
)
flags.DEFINE_string(
    "tpu_topology", "", "With --tpu_version: each gang is one TPU slice of this topology (4x4)."
)
flags.DEFINE_string("tpu_version", "", "TPU generation as Ray names it (v5litepod, v6e, ...).")
flags.DEFINE_list(
    "data_replicas",
    [],
    "host:port of further data services serving the data service's corpus; "
    "trainer process i reads replica i mod R of all of them.",
)
flags.DEFINE_integer("hosts_per_phase", 1, "Trainer processes (hosts) of each phase's gang.")
flags.DEFINE_integer("max_failures", 2, "Restarts of a phase after trainer errors, at most.")
flags.DEFINE_integer("max_preemptions", 20, "Restarts of a phase after lost hosts, at most.")
flags.DEFINE_float(
    "placement_timeout_s", 600, "Ray backend: a gang not placed in this time fails (unplaced)."
)
flags.DEFINE_float(
    "stall_timeout_s",
    1800,
    "Ray backend: a gang that logs no step for this long is ended and restarted "
    "(0: never); longer than the time between logged steps.",
)
flags.DEFINE_float(
    "startup_timeout_s",
    3600,
    "Ray backend: the same for a gang's first step (start-up, restore, compile).",
)
flags.mark_flag_as_required("spec")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logs.quiet_libraries()
    options = runner.Options(
        spec_path=FLAGS.spec,
        out_dir=FLAGS.out,
        addresses={
            "data": FLAGS.data_address,
            "trainer": FLAGS.trainer_address,
            "eval": FLAGS.eval_address,
        },
        service_flags={
            "data": FLAGS.data_flag,
            "trainer": FLAGS.trainer_flag,
            "eval": FLAGS.eval_flag,
        },
        judge=runner.JudgeOverride(
            base_url=FLAGS.judge_base_url,
            model=FLAGS.judge_model,
            api_key_env=FLAGS.judge_api_key_env if FLAGS.judge_base_url else "",
            checkpoint_uri=FLAGS.judge_checkpoint,
        ),
        report_only=FLAGS.report_only,
        plan_only=FLAGS.plan_only,
        parallel_eval=FLAGS.parallel_eval,
        echo_services=FLAGS.echo_services,
        data_auth_token_file=FLAGS.data_auth_token_file,
        data_tls_ca=FLAGS.data_tls_ca,
        backend=FLAGS.backend,
        ray_address=FLAGS.ray_address,
        ray_slices=FLAGS.ray_slices,
        slice_resource=FLAGS.slice_resource,
        tpu_topology=FLAGS.tpu_topology,
        tpu_version=FLAGS.tpu_version,
        hosts_per_phase=FLAGS.hosts_per_phase,
        data_replicas=FLAGS.data_replicas,
        max_failures=FLAGS.max_failures,
        max_preemptions=FLAGS.max_preemptions,
        placement_timeout_s=FLAGS.placement_timeout_s,
        stall_timeout_s=FLAGS.stall_timeout_s,
        startup_timeout_s=FLAGS.startup_timeout_s,
    )
    sys.exit(runner.main(options))


if __name__ == "__main__":
    app.run(main)
