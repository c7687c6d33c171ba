"""Small corpora for tests: written directly in the on-disk format, or built
through the real pipeline from files in a temporary directory."""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Mapping, Sequence

import numpy as np

from proto import data_pb2
from services.data import corpus, sources

EOS, PAD = 1, 0


def one_stage_mixture(**weights: float) -> data_pb2.MixtureSpec:
    """A mixture of one stage: one_stage_mixture(text=0.5, code=0.5)."""
    return data_pb2.MixtureSpec(
        stages=[
            data_pb2.MixtureStage(
                weights=[data_pb2.SourceWeight(source=k, weight=v) for k, v in weights.items()]
            )
        ]
    )


def write_token_corpus(
    path: str, docs: Mapping[str, Sequence[Sequence[int]]], *, vocab_size: int = 1 << 30
) -> corpus.Corpus:
    """A corpus whose sources hold exactly `docs` (token lists without the
    <eos>, which is appended), written without a tokenizer."""
    os.makedirs(os.path.join(path, "sources"), exist_ok=True)
    entries = []
    for name, source_docs in docs.items():
        rel = os.path.join("sources", name)
        os.makedirs(os.path.join(path, rel), exist_ok=True)
        arrays = [np.asarray(list(d) + [EOS], corpus.TOKEN_DTYPE) for d in source_docs]
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, corpus.TOKEN_DTYPE)
        offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(
            corpus.OFFSET_DTYPE
        )
        tokens.tofile(os.path.join(path, rel, "tokens.u32"))
        offsets.tofile(os.path.join(path, rel, "offsets.i64"))
        entries.append(
            {
                "name": name,
                "kind": "text",
                "description": f"test source {name}",
                "num_tokens": int(tokens.size),
                "num_documents": len(arrays),
                "content_hash": hashlib.sha256(tokens.tobytes() + offsets.tobytes()).hexdigest(),
                "tokens_file": os.path.join(rel, "tokens.u32"),
                "offsets_file": os.path.join(rel, "offsets.i64"),
            }
        )
    manifest = {
        "format": corpus.FORMAT,
        "tokenizer": {
            "file": corpus.TOKENIZER,
            "vocab_size": vocab_size,
            "eos_id": EOS,
            "pad_id": PAD,
            "sha256": "none",
        },
        "sources": entries,
    }
    manifest["corpus_id"] = corpus.corpus_id(manifest)
    with open(os.path.join(path, corpus.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return corpus.Corpus(path)


def numbered_corpus(path: str, sizes: Mapping[str, Sequence[int]]) -> corpus.Corpus:
    """Sources of documents with the given lengths (<eos> excluded) whose
    tokens are all distinct, so a served token identifies its source,
    document and position: source k's tokens start at (k + 1) * 10**7."""
    docs = {}
    for k, (name, lengths) in enumerate(sizes.items()):
        base = (k + 1) * 10**7
        source_docs, t = [], base
        for n in lengths:
            source_docs.append(list(range(t, t + n)))
            t += n
        docs[name] = source_docs
    return write_token_corpus(path, docs)


_WORDS = (
    "the model reads code and text in equal measure while the tokenizer keeps every "
    "byte of whitespace so that programs survive the round trip intact and the data "
    "service serves them in packed rows of documents"
).split()


def write_source_files(root: str, seed: int = 0) -> dict[str, str]:
    """Files of every local format the ingest path reads, under `root`."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    r = random.Random(seed)
    sentence = lambda n: " ".join(r.choice(_WORDS) for _ in range(n)).capitalize() + "."  # noqa: E731
    os.makedirs(os.path.join(root, "code"), exist_ok=True)
    os.makedirs(os.path.join(root, "docs"), exist_ok=True)
    paths = {}
    paths["jsonl"] = os.path.join(root, "text.jsonl")
    with open(paths["jsonl"], "w") as f:
        for i in range(40):
            f.write(
                json.dumps(
                    {
                        "id": i,
                        "content": " ".join(
                            sentence(r.randint(5, 25)) for _ in range(r.randint(2, 8))
                        ),
                    }
                )
                + "\n"
            )
    paths["parquet"] = os.path.join(root, "qa.parquet")
    qa = [f"Q: how do I fix error {i}?\nA: {sentence(12)}\n" for i in range(30)]
    pq.write_table(pa.table({"text": qa}), paths["parquet"])
    code = [
        "def add(a, b):\n\treturn a + b   \n",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
        "import os\n\n\nfor name in sorted(os.listdir('.')):\n    print(name)  # trailing spaces   \n\n\n",
    ]
    for i, text in enumerate(code * 4):
        with open(os.path.join(root, "code", f"m{i}.py"), "w") as f:
            f.write(
                text.replace("add", f"add{i}")
                .replace("Stack", f"Stack{i}")
                .replace("name", f"name{i}")
            )
    paths["code"] = os.path.join(root, "code", "*.py")
    for i in range(6):
        with open(os.path.join(root, "docs", f"d{i}.md"), "w") as f:
            f.write(f"# Title {i}\n\n{sentence(10)}\n\n* item\n* `code` item\n")
    paths["markdown"] = os.path.join(root, "docs", "*.md")
    paths["gz"] = os.path.join(root, "notes.txt.gz")
    with gzip.open(paths["gz"], "wt") as f:
        f.write("\n\n".join(sentence(15) for _ in range(20)))
    return paths


def source_specs(paths: Mapping[str, str]) -> list[sources.SourceSpec]:
    """One source per kind of the paper, from write_source_files' files."""
    I, S = sources.Input, sources.SourceSpec  # noqa: N806
    return [
        S(
            "text",
            "text",
            "sentences (jsonl) and a gzipped text file",
            (
                I(path="json", data_files=(paths["jsonl"],), text_field="content"),
                I(path="text", data_files=(paths["gz"],), sample_by="paragraph", group_chars=400),
            ),
        ),
        S("code", "code", "small Python files", (I(path="text", data_files=(paths["code"],)),)),
        S("markup", "markup", "Markdown files", (I(path="text", data_files=(paths["markdown"],)),)),
        S(
            "code_adjacent",
            "code_adjacent",
            "Q&A pairs (parquet)",
            (I(path="parquet", data_files=(paths["parquet"],)),),
        ),
    ]


def build_small_corpus(
    root: str,
    *,
    vocab_size: int = 400,
    benchmarks_dir: str = "",
    include_humaneval: bool = False,
    specs: Sequence[sources.SourceSpec] | None = None,
) -> corpus.Corpus:
    """Builds a corpus of the four file-backed kinds through the real
    pipeline (datasets -> decontamination -> BPE -> shards) under root."""
    paths = write_source_files(os.path.join(root, "raw"))
    out = os.path.join(root, "corpus")
    corpus.build(
        specs or source_specs(paths),
        out,
        corpus.BuildConfig(
            vocab_size=vocab_size,
            benchmarks_dir=benchmarks_dir,
            include_humaneval=include_humaneval,
        ),
        log=lambda s: None,
    )
    return corpus.Corpus(out)
