"""Our scores against lm-evaluation-harness's on one checkpoint:

    bazel run //services/eval:agreement -- --checkpoint=PATH --tasks=arc_easy,boolq,piqa,copa --limit=N

Prints, per task, the largest per-example log-likelihood difference and both
accuracies, then one JSON line: {"max_abs_loglik_diff": ..., "agree": ..., "tasks":
{task: {"acc_ours", "acc_lm_eval", ...}}}. Exits 1 when a task disagrees.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from libs.cli import logs, paths
from services.eval import agreement, checkpoints, flag_defs, lm_eval_harness

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "URI of the committed checkpoint to score.")
flags.DEFINE_list(
    "tasks", list(lm_eval_harness.LM_EVAL_TASKS), "Tasks (those with an lm-eval counterpart)."
)
flags.DEFINE_integer("limit", 100, "The first N examples of each task.")
flags.DEFINE_float("tolerance", 1e-4, "Largest log-likelihood difference that agrees.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    logs.quiet_libraries()
    model = checkpoints.load_checkpoint(paths.resolve(FLAGS.checkpoint)).model
    try:
        results = agreement.agree(
            model,
            FLAGS.tasks,
            limit=FLAGS.limit,
            benchmarks_dir=flag_defs.benchmarks_dir(),
            cache_dir=flag_defs.cache_dir(),
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    for r in results:
        norm = (
            f", acc_norm ours {r.acc_norm_ours:.4f} lm-eval {r.acc_norm_lm_eval:.4f}"
            if r.acc_norm_ours is not None
            else ""
        )
        print(
            f"{r.task:<12} n={r.num_examples:<5} max |loglik diff| {r.max_abs_loglik_diff:.2e}  "
            f"acc ours {r.acc_ours:.4f} lm-eval {r.acc_lm_eval:.4f}{norm}"
            f"{'' if r.agrees(FLAGS.tolerance) else '  DISAGREE'}"
            + (
                f" (requests differ on examples {r.mismatched_requests[:5]})"
                if r.mismatched_requests
                else ""
            ),
            flush=True,
        )
    ok = all(r.agrees(FLAGS.tolerance) for r in results)
    summary = {
        "max_abs_loglik_diff": max(r.max_abs_loglik_diff for r in results),
        "agree": ok,
        "limit": FLAGS.limit,
        "tasks": {r.task: r.to_json() for r in results},
    }
    print(json.dumps(summary, sort_keys=True))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
