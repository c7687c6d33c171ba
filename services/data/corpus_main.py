"""Corpus CLI: `bazel run //services/data:corpus -- build|inspect [flags]`.

build    builds the default corpus (real material on this machine, in this
         process), or the corpus of a source-spec file (--sources=spec.json;
         see sources.load_spec_file and services/data/recipes/) with the
         sharded build (pipeline.py): its input files spread over Ray
         workers (--workers on this machine, or --ray_address), written to
         a folder or gs://, resumed when run again after a stop; then prints
         the decontamination report.
inspect  prints a corpus's sources and, with --mixture, the mixture's
         token plan (tokens and epochs per source), the sources of one
         sample batch and its first row decoded, segment by segment.
"""

import dataclasses
import json
import sys

from absl import app, flags

from libs import errors
from libs.cli import logs, paths
from services.data import corpus, mixture, sources

_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir",
    None,
    "Corpus directory (default: $CODE_LAB_CORPUS_DIR or ~/.cache/code_lab/corpus/default).",
)
_SOURCES = flags.DEFINE_string(
    "sources", None, "build: a source-spec JSON file; default: the default corpus's sources."
)
_SCALE = flags.DEFINE_float("scale", 1.0, "build: multiplier of the default sources' token caps.")
_VOCAB = flags.DEFINE_integer(
    "vocab_size", 8192, "build: tokenizer vocabulary size (the paper's is 256k)."
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "build: reuse this tokenizer.json instead of training one."
)
_BENCHMARKS = flags.DEFINE_string(
    "benchmarks_dir",
    None,
    "build: benchmarks to decontaminate against ('' for none but HumanEval).",
)
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "build --sources: Ray workers on this machine (0: build in this process)."
)
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", "", "build --sources: a running Ray cluster to build on (e.g. auto)."
)
_SAMPLE = flags.DEFINE_integer(
    "tokenizer_sample_chars", 2_000_000, "build: characters the tokenizer is trained on, in all."
)
_MIXTURE = flags.DEFINE_string(
    "mixture", None, 'inspect: "text=0.75,code=0.25", or a mixture JSON file (Mixture.from_json).'
)
_BUDGET = flags.DEFINE_integer(
    "token_budget", 0, "inspect: tokens to plan for (0: end of the last bounded stage)."
)
_BATCH = flags.DEFINE_integer("batch_size", 4, "inspect: global batch size of the sample batch.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "inspect: sequence length of the sample batch.")
_SEED = flags.DEFINE_integer("seed", 0, "inspect: shuffle seed.")
_STEP = flags.DEFINE_integer("step", 0, "inspect: step of the sample batch.")
_SHOW = flags.DEFINE_integer("show_chars", 600, "inspect: characters of decoded text to print.")


def _build(path: str) -> None:
    config = corpus.BuildConfig(
        vocab_size=_VOCAB.value,
        tokenizer_file=paths.resolve(_TOKENIZER.value),
        tokenizer_sample_chars=_SAMPLE.value,
        benchmarks_dir=paths.resolve(_BENCHMARKS.value),
    )
    log = lambda s: print(s, flush=True)  # noqa: E731
    if not _SOURCES.value:
        specs = sources.default_sources(_SCALE.value)
        config = dataclasses.replace(
            config, recipe=corpus.default_recipe(_SCALE.value, _VOCAB.value)
        )
        corpus.build(specs, path, config, log=log)
        return
    from services.data import pipeline

    specs = sources.load_spec_file(paths.resolve(_SOURCES.value))
    try:
        manifest = pipeline.build_sharded(
            specs, path, config, workers=_WORKERS.value, ray_address=_RAY_ADDRESS.value, log=log
        )
    except errors.FieldError as e:
        sys.exit(f"error ({type(e).__name__}): {e}")
    from services.data import decontam

    print(decontam.format_report(manifest["decontamination"]))
    for s in manifest["sources"]:
        print(f"{s['name']}: {s['num_tokens']} tokens, dropped {s['dropped']}")


def _load_mixture(text: str) -> mixture.Mixture:
    if text.endswith(".json"):
        with open(paths.resolve(text)) as f:
            return mixture.Mixture.from_json(json.load(f))
    return mixture.Mixture.parse(text)


def _inspect(path: str) -> None:
    c = corpus.Corpus(path)
    print(f"corpus {c.corpus_id} at {c.path}")
    print(f"tokenizer: vocab {c.vocab_size}, eos {c.eos_id}, pad {c.pad_id}")
    print(f"{'source':<16}{'kind':<16}{'tokens':>12}{'documents':>11}  content hash")
    for s in c.sources:
        print(
            f"{s.name:<16}{s.kind:<16}{s.num_tokens:>12}{s.num_documents:>11}  {s.content_hash[:16]}"
        )
    report = c.manifest.get("decontamination")
    if report:
        from services.data import decontam

        print(decontam.format_report(report))
    if not _MIXTURE.value:
        return
    mix = _load_mixture(_MIXTURE.value)
    available = {s.name: s.num_tokens for s in c.sources}
    try:
        budget, plan = mixture.plan(mix, available, _BUDGET.value)
        reader = mixture.BatchReader(
            c, mix, seed=_SEED.value, global_batch_size=_BATCH.value, seq_len=_SEQ.value
        )
        batch = reader.batch(_STEP.value)
    except errors.FieldError as e:
        sys.exit(f"error ({type(e).__name__}): {e}")
    print(f"\nmixture {mix.name or _MIXTURE.value}: plan over {budget} tokens")
    for name, (tokens, epochs) in plan.items():
        print(f"  {name:<16}{tokens:>14} tokens {epochs:>10.3f} epochs")
    print(
        f"\nsample batch: step {batch.step}, stage {batch.stage}, {batch.batch_size} x {batch.seq_len}, "
        f"tokens per source {batch.source_token_counts()}"
    )
    print(
        "epochs after this step: "
        + ", ".join(f"{n} {e:.4f}" for n, e in zip(batch.source_names, batch.epochs))
    )
    tok = c.tokenizer()
    row = 0
    shown = 0
    segments = batch.segment_ids[row]
    for seg in range(1, int(segments.max()) + 1):
        cols = (segments == seg).nonzero()[0]
        source = batch.source_names[batch.source_ids[row, cols[0]]]
        text = tok.decode(batch.tokens[row, cols].tolist())
        print(f"--- row {row} segment {seg} ({source}, {cols.size} tokens) ---")
        print(text[: max(0, _SHOW.value - shown)])
        shown += len(text)
        if shown >= _SHOW.value:
            break


def main(argv):
    if len(argv) != 2 or argv[1] not in ("build", "inspect"):
        raise app.UsageError("usage: corpus build|inspect [--flags]")
    logs.quiet_libraries()
    path = paths.resolve(_CORPUS_DIR.value) or corpus.default_corpus_dir()
    (_build if argv[1] == "build" else _inspect)(path)


if __name__ == "__main__":
    app.run(main)
