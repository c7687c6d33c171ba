"""The DataService binary: `bazel run //services/data -- --corpus_dir=...`.

Serves a built corpus, from a folder or gs:// (by default the default
corpus, built into its cache on first use) and prints `DataService listening on HOST:PORT`. The shared
flags (--host, --port, --auth_token_file, --tls_cert, --tls_key) come from
libs/serving/server.py.
"""

from absl import app, flags

from libs.benchmarks import benchmarks
from libs.cli import logs, paths
from libs.serving import server
from services.data import batch, corpus
from services.data.api import servicer

_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir",
    None,
    "Corpus to serve (default: $CODE_LAB_CORPUS_DIR or ~/.cache/code_lab/corpus/default).",
)
_BUILD = flags.DEFINE_boolean(
    "build_default_corpus",
    True,
    "If --corpus_dir holds no corpus (or an outdated default one), build the default corpus there first.",
)
_SCALE = flags.DEFINE_float(
    "default_corpus_scale", 1.0, "Multiplier of the default corpus's token caps."
)
_BENCHMARKS = flags.DEFINE_string(
    "benchmarks_dir",
    None,
    "Benchmarks to decontaminate the default corpus against. " + benchmarks.FLAG_HELP,
)
_CACHE_MB = flags.DEFINE_integer(
    "cache_mb", 512, "A corpus on gs://: megabytes of token blocks kept in memory."
)
_BLOCK_KB = flags.DEFINE_integer(
    "block_kb",
    64,
    "A corpus on gs:// read by range: kilobytes a block (one ranged read; a step's "
    "blocks are read at once, the next step's in the background).",
)
_STAGE_DIR = flags.DEFINE_string(
    "stage_dir",
    "",
    "A corpus on gs://: copy each source's shards here when a mixture first reads the "
    "source, and serve them from there (empty: read by range through --cache_mb).",
)
_READ_AHEAD = flags.DEFINE_integer(
    "read_ahead",
    0,
    "Batches each stream assembles ahead on a thread (0: in the gRPC thread, as sent).",
)


def main(argv):
    del argv
    logs.quiet_libraries()
    batch.keep_freed_memory()
    path = paths.resolve(_CORPUS_DIR.value) or corpus.default_corpus_dir()
    if _BUILD.value:
        corpus.ensure_default_corpus(
            path,
            scale=_SCALE.value,
            benchmarks_dir=paths.resolve(_BENCHMARKS.value),
            log=lambda s: print(s, flush=True),
        )
    data = servicer.DataServicer(
        corpus.Corpus(
            path,
            cache_bytes=_CACHE_MB.value << 20,
            stage_dir=paths.resolve(_STAGE_DIR.value),
            block_bytes=_BLOCK_KB.value << 10,
        ),
        read_ahead=_READ_AHEAD.value,
    )
    server.serve_from_flags(
        "DataService", [(servicer.add_to_server, data)], [servicer.SERVICE_NAME]
    )


if __name__ == "__main__":
    app.run(main)
