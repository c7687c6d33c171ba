"""Scores one checkpoint on a suite and prints the table:

    bazel run //services/eval:evaluate -- --checkpoint=URI --suite=tiny [--baseline=URI]

Results go to the same results database as the service (reused when already there).
With --baseline, a last column gives the relative change against that checkpoint
(scored with the same tasks and settings), as the paper reports against its
text-only model.
"""

from __future__ import annotations

import math
import sys

from absl import app, flags

from libs import errors
from libs.cli import logs, paths
from services.eval import code_exec, evaluator, flag_defs, heldout
from services.eval.harness import Harness
from services.eval.results_db import ResultsDB

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "URI of the committed checkpoint to score.")
flags.DEFINE_string("suite", "tiny", "Named suite (smoke, tiny, paper).")
flags.DEFINE_list("tasks", [], "Explicit task names (override --suite).")
flags.DEFINE_integer("limit", 0, "Examples per task (0: the suite's default).")
flags.DEFINE_integer("num_samples", 1, "Samples per code problem (pass@k).")
flags.DEFINE_integer(
    "generation_limit",
    0,
    "Examples per generation or code task generated for (0: all); gold-answer BPB scores all.",
)
flags.DEFINE_integer("seed", 0, "Seed of sampling and of the bootstrap intervals.")
flags.DEFINE_string("baseline", "", "Checkpoint URI to report the relative change against.")


def _continuous(r: evaluator.TaskResult, name: str) -> str:
    return f"{r.extra[name]:.3f}" if name in r.extra else "-"


def format_table(rows: list[evaluator.TaskResult], baseline: dict[str, float]) -> str:
    """One line per task and aggregate: the headline with its interval, then the
    continuous metrics (bits per byte of the gold text, probability of the gold choice)."""
    lines = [
        f"{'task':<28}{'category':<17}{'metric':<13}{'value':>8}  {'95% CI':<17}"
        f"{'n':>7}{'bpb':>8}{'p(gold)':>9}" + ("  vs baseline" if baseline else "")
    ]
    for r in rows:
        ci = f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        line = (
            f"{r.task:<28}{r.category:<17}{r.metric:<13}{r.value:>8.4f}  {ci:<17}"
            f"{r.num_examples:>7}{_continuous(r, 'bpb'):>8}{_continuous(r, 'prob_correct'):>9}"
        )
        if baseline:
            change = baseline.get(r.task, math.nan)
            line += f"  {change * 100:+10.1f}%" if math.isfinite(change) else f"  {'n/a':>11}"
        lines.append(line)
        if r.task == heldout.TASK:  # one line per source: its held-out bits per byte
            for source, (lo, hi) in sorted(r.intervals.items()):
                ci = f"[{lo:.3f}, {hi:.3f}]"
                n = int(r.extra.get(f"{source}/documents", 0))
                lines.append(
                    f"  {source:<26}{r.category:<17}{r.metric:<13}{r.extra[source]:>8.4f}  "
                    f"{ci:<17}{n:>7}"
                )
    return "\n".join(lines)


def _score(harness: Harness, uri: str) -> list[evaluator.TaskResult]:
    results, step = [], None
    for scored in harness.evaluate(
        uri,
        suite=FLAGS.suite,
        task_names=FLAGS.tasks,
        limit=FLAGS.limit,
        num_samples=FLAGS.num_samples,
        generation_limit=FLAGS.generation_limit,
        seed=FLAGS.seed,
    ):
        step = scored.step
        results.append(scored.result)
        if not scored.result.is_aggregate:
            print(
                f"  {scored.result.task}: {scored.result.metric} = {scored.result.value:.4f}",
                file=sys.stderr,
                flush=True,
            )
    print(f"{uri} (step {step})", flush=True)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    logs.quiet_libraries()
    harness = Harness(
        benchmarks_dir=flag_defs.benchmarks_dir(),
        results_db=ResultsDB(flag_defs.results_db()),
        cache_dir=flag_defs.cache_dir(),
        source=FLAGS.task_source,
        code_runner=code_exec.CodeRunner(parallelism=flag_defs.sandbox_parallelism()),
        heldout_corpus_dir=flag_defs.heldout_corpus_dir(),
    )
    try:
        results = _score(harness, paths.resolve(FLAGS.checkpoint))
        change = {}
        if FLAGS.baseline:
            change = evaluator.relative_change(
                results, _score(harness, paths.resolve(FLAGS.baseline))
            )
    except errors.FieldError as e:
        sys.exit(f"error: {e}")
    print(format_table(results, change))


if __name__ == "__main__":
    app.run(main)
