"""Corpus builds through the real pipeline: formats, manifest, storage,
decontamination, determinism."""

import json
import os

import numpy as np
import pytest

from services.data import corpus, sources
from services.data.api import testing

LEAKED = (
    "Which planet in our solar system has the longest day measured against "
    "its own orbital year around the sun and why does it spin backwards"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    bench = root / "bench" / "trivia"
    bench.mkdir(parents=True)
    (bench / "dev.jsonl").write_text(json.dumps({"question": LEAKED, "answer": "Venus"}) + "\n")
    paths = testing.write_source_files(str(root / "raw"))
    # A leaked benchmark item inside the text source, and an exact duplicate.
    with open(paths["jsonl"], "a") as f:
        f.write(json.dumps({"content": "Trivia: " + LEAKED.upper() + "?"}) + "\n")
        f.write(json.dumps({"content": "Trivia: " + LEAKED.upper() + "?"}) + "\n")
    specs = testing.source_specs(paths)
    config = corpus.BuildConfig(
        vocab_size=400, benchmarks_dir=str(root / "bench"), include_humaneval=False
    )
    logs = []
    manifest = corpus.build(specs, str(root / "corpus"), config, log=logs.append)
    return root, specs, config, manifest, logs


def test_manifest_counts_match_the_arrays(built):
    root, specs, _, manifest, _ = built
    c = corpus.Corpus(str(root / "corpus"))
    assert [s.name for s in c.sources] == [s.name for s in specs]
    assert c.corpus_id == manifest["corpus_id"] and len(c.corpus_id) == 64
    for s in c.sources:
        tokens, offsets = c.tokens(s.name), c.offsets(s.name)
        assert tokens.dtype == np.uint32 and offsets.dtype == np.int64
        assert tokens.size == s.num_tokens == offsets[-1] and offsets.size == s.num_documents + 1
        assert s.num_documents > 0
        # Every document ends with <eos>, and only there.
        ends = offsets[1:] - 1
        assert (tokens[ends] == c.eos_id).all() and (tokens == c.eos_id).sum() == s.num_documents
        assert isinstance(tokens, np.ndarray) and not tokens.flags.writeable


def test_a_block_size_of_part_of_a_token_is_refused(built):
    root = built[0]
    for bad in (0, -4, 6):
        with pytest.raises(ValueError, match="block_bytes"):
            corpus.Corpus(str(root / "corpus"), block_bytes=bad)


def test_documents_decode_to_the_source_text(built):
    root, specs, *_ = built
    c = corpus.Corpus(str(root / "corpus"))
    tok = c.tokenizer()
    code = [
        tok.decode(c.document("code", i)[:-1].tolist())
        for i in range(c.source("code").num_documents)
    ]
    originals = sorted(open(p).read() for p in sources.expand_files(specs[1].inputs[0].data_files))
    assert sorted(code) == originals  # whitespace, tabs and trailing spaces included
    qa = [tok.decode(c.document("code_adjacent", i)[:-1].tolist()) for i in range(3)]
    assert all(q.startswith("Q: how do I fix error") for q in qa)


def test_contaminated_and_duplicate_documents_are_dropped_and_reported(built):
    root, _, _, manifest, logs = built
    c = corpus.Corpus(str(root / "corpus"))
    text = c.manifest["sources"][0]
    assert text["dropped"]["contaminated"] == 1 and text["dropped"]["duplicate"] == 1
    report = manifest["decontamination"]
    assert report["ngram"] == 13 and list(report["benchmarks"]) == ["trivia"]
    assert report["sources"]["text"]["overlap"]["trivia"]["documents"] == 1
    assert report["sources"]["code"]["documents_dropped"] == 0
    tok = c.tokenizer()
    everything = tok.decode(c.tokens("text").tolist()).lower()
    assert "longest day measured" not in everything
    assert any("decontamination" in line for line in logs) and any(
        "trivia: 1 docs" in line for line in logs
    )


def test_builds_are_deterministic(built, tmp_path):
    root, specs, config, manifest, _ = built
    again = corpus.build(specs, str(tmp_path / "again"), config, log=lambda s: None)
    assert again["corpus_id"] == manifest["corpus_id"]
    assert [s["content_hash"] for s in again["sources"]] == [
        s["content_hash"] for s in manifest["sources"]
    ]


def test_token_cap_reuse_tokenizer_and_rebuild_in_place(built, tmp_path):
    root, specs, config, manifest, _ = built
    capped = [
        sources.SourceSpec(s.name, s.kind, s.description, s.inputs, max_tokens=300) for s in specs
    ]
    out = str(tmp_path / "capped")
    m = corpus.build(
        capped,
        out,
        corpus.BuildConfig(
            tokenizer_file=str(root / "corpus" / corpus.TOKENIZER),
            benchmarks_dir="",
            include_humaneval=False,
        ),
        log=lambda s: None,
    )
    assert all(0 < s["num_tokens"] <= 300 for s in m["sources"])
    assert m["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    assert sum(s["dropped"].get("over_cap", 0) for s in m["sources"]) > 0
    # Building over an existing corpus replaces it atomically.
    m2 = corpus.build(
        capped[:1],
        out,
        corpus.BuildConfig(vocab_size=300, benchmarks_dir="", include_humaneval=False),
        log=lambda s: None,
    )
    assert [s.name for s in corpus.Corpus(out).sources] == ["text"] and m2["corpus_id"] != m[
        "corpus_id"
    ]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


def test_a_dataset_name_goes_through_the_same_path(tmp_path):
    """`path` that is not a builder is handed to datasets.load_dataset as a
    dataset name; a local dataset folder stands in for a Hub name here (no
    network)."""
    folder = tmp_path / "my_dataset" / "data"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"hub style document {i}"}) + "\n" for i in range(5))
    )
    spec = sources.SourceSpec(
        "hub", "text", "a dataset by name", (sources.Input(path=str(tmp_path / "my_dataset")),)
    )
    m = corpus.build(
        [spec],
        str(tmp_path / "c"),
        corpus.BuildConfig(vocab_size=300, benchmarks_dir="", include_humaneval=False),
        log=lambda s: None,
    )
    assert m["sources"][0]["num_documents"] == 5


def test_missing_corpus_and_default_dir(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        corpus.Corpus(str(tmp_path))
    monkeypatch.setenv("CODE_LAB_CORPUS_DIR", str(tmp_path / "x"))
    assert corpus.default_corpus_dir() == str(tmp_path / "x")


def test_ensure_default_corpus_leaves_other_corpora_alone(built):
    root, *_ = built
    before = json.load(open(root / "corpus" / corpus.MANIFEST))
    m = corpus.ensure_default_corpus(str(root / "corpus"), log=lambda s: None)
    assert m == before


def test_sources_larger_than_memory_are_streamed_twice(built, tmp_path):
    root, specs, config, manifest, _ = built
    import dataclasses

    small_memory = dataclasses.replace(config, memory_chars=500)
    again = corpus.build(specs, str(tmp_path / "streamed"), small_memory, log=lambda s: None)
    # Same documents, same counts; only the tokenizer sample differs.
    assert [(s["num_documents"], s["dropped"]) for s in again["sources"]] == [
        (s["num_documents"], s["dropped"]) for s in manifest["sources"]
    ]
    assert again["decontamination"]["sources"] == manifest["decontamination"]["sources"]


def test_each_source_holds_out_a_slice_no_mixture_serves(built, tmp_path):
    root, specs, config, _, _ = built
    import dataclasses

    config = dataclasses.replace(config, heldout_per_mille=250)
    m = corpus.build(specs, str(tmp_path / "held"), config, log=lambda s: None)
    c = corpus.Corpus(str(tmp_path / "held"))
    assert m["heldout"]["per_mille"] == 250 and "sha256" in m["heldout"]["rule"]
    tok = c.tokenizer()
    held_total = 0
    for s in c.sources:
        entry = next(e for e in m["sources"] if e["name"] == s.name)
        held = c.heldout(s.name)
        assert entry["heldout"]["num_documents"] == len(held) == entry["heldout"]["num_held_out"]
        assert s.heldout_documents == len(held)
        assert entry["heldout"]["num_bytes"] == sum(len(t.encode()) for t in held)
        # Chosen by content alone, and never among the served documents.
        assert all(corpus.is_heldout(t, 250) for t in held)
        served = {tok.decode(c.document(s.name, i)[:-1].tolist()) for i in range(s.num_documents)}
        assert not served & set(held)
        assert not any(corpus.is_heldout(t, 250) for t in served)
        held_total += len(held)
    assert held_total > 0
    # The same slice in every build; a larger fraction keeps a superset of documents.
    again = corpus.build(specs, str(tmp_path / "again"), config, log=lambda s: None)
    assert [e["heldout"] for e in again["sources"]] == [e["heldout"] for e in m["sources"]]
    more = corpus.build(
        specs,
        str(tmp_path / "more"),
        dataclasses.replace(config, heldout_per_mille=500),
        log=lambda s: None,
    )
    wider = corpus.Corpus(str(tmp_path / "more"))
    for s in c.sources:
        assert set(c.heldout(s.name)) <= set(wider.heldout(s.name))
    assert more["corpus_id"] != m["corpus_id"]
    with pytest.raises(ValueError, match="heldout_per_mille"):
        corpus.BuildConfig(heldout_per_mille=1000)
