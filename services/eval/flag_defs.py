"""Flags shared by the eval binaries (service, CLI, benchmark), defined once."""

from __future__ import annotations

from typing import Optional

from absl import flags

from libs.benchmarks import benchmarks
from libs.cli import paths
from services.eval import tasks

flags.DEFINE_string(
    "benchmarks_dir",
    "",
    benchmarks.FLAG_HELP,
)
flags.DEFINE_string(
    "cache_dir",
    "",
    "Converted task files and datasets' cache; default "
    "$CODE_LAB_EVAL_CACHE_DIR or <tmp>/code_lab_eval_cache.",
)
flags.DEFINE_string(
    "results_db",
    "~/.cache/code_lab/eval/results.sqlite",
    "SQLite file holding every result, FollowRun progress and lineage.",
)
flags.DEFINE_enum(
    "task_source",
    "local",
    ["local", "hub"],
    "Where task data comes from: the benchmarks directory, or the Hugging Face "
    "datasets named in the registry (needs the network).",
)
flags.DEFINE_integer(
    "sandbox_parallelism", 0, "Generated programs run at once in the sandbox (0: one per CPU)."
)

flags.DEFINE_string(
    "heldout_corpus_dir",
    "default",
    "Corpus (services/data) whose held-out slice suite evaluations score as per-source "
    "bits per byte; 'default': $CODE_LAB_HELDOUT_CORPUS_DIR or the data service's default "
    "corpus; '': none. A corpus without a held-out slice is ignored.",
)

FLAGS = flags.FLAGS


def benchmarks_dir() -> str:
    return paths.resolve(FLAGS.benchmarks_dir) or tasks.default_benchmarks_dir()


def cache_dir() -> str:
    return paths.resolve(FLAGS.cache_dir) or tasks.default_cache_dir()


def sandbox_parallelism() -> Optional[int]:
    return FLAGS.sandbox_parallelism or None


def results_db() -> str:
    return paths.resolve(FLAGS.results_db)


def heldout_corpus_dir() -> str:
    if FLAGS.heldout_corpus_dir == "default":
        from services.eval import heldout

        return heldout.default_corpus_dir()
    return paths.resolve(FLAGS.heldout_corpus_dir)
