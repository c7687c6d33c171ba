"""The sharded corpus build: a pure function of its inputs, whatever the
workers, and after a kill; duplicates across sources, decontamination and
the held-out rule; the corpus it writes read as one."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from libs import errors
from services.data import corpus, mixture, pipeline, sources
from services.data.api import testing as data_testing

WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be has "
    "had it or not first one their its new after who they have her she two been other when there "
    "all during into school time may years more most only over city some world would where later "
    "up such used many can state about national out known university united then made river"
).split()
PLANT = (
    "Check if in given list of numbers, are any two numbers closer to each other than given "
    "threshold."
)  # a HumanEval sentence: more than 13 words


def _doc(r: random.Random, words: int = 300) -> str:
    return " ".join(r.choice(WORDS) for _ in range(words))


def _near(r: random.Random, text: str, changed: int) -> str:
    words = text.split()
    for i in r.sample(range(len(words)), changed):
        words[i] = "zebra"
    return " ".join(words)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two sources in five jsonl files, with planted duplicates across them."""
    root = tmp_path_factory.mktemp("raw")
    r = random.Random(0)
    text = [[_doc(r) for _ in range(60)] for _ in range(3)]
    code = [[_doc(r) for _ in range(50)] for _ in range(2)]
    planted = {
        # In text file 0 and, verbatim, in code file 1: kept in text.
        "exact": text[0][5],
        # In text file 2 and, 6 of 300 words changed, in code file 0.
        "near": text[2][7],
        # Code's own near duplicate, in its two files.
        "near_code": code[0][3],
        # In code file 1, sharing a 13-gram with HumanEval.
        "contaminated": _doc(r, 100) + " " + PLANT + " " + _doc(r, 100),
    }
    code[1].append(planted["exact"])
    planted["near_copy"] = _near(r, planted["near"], 6)
    code[0].append(planted["near_copy"])
    code[1].append(_near(r, planted["near_code"], 2))
    code[1].append(planted["contaminated"])
    for name, files in (("text", text), ("code", code)):
        for i, docs in enumerate(files):
            with open(root / f"{name}-{i}.jsonl", "w") as f:
                f.writelines(json.dumps({"content": d}) + "\n" for d in docs)
    # Text keeps documents of 50 words or more: a short one is planted.
    with open(root / "text-0.jsonl", "a") as f:
        f.write(json.dumps({"content": "a document of six words only"}) + "\n")
    specs = [
        sources.SourceSpec(
            name,
            name,
            f"{name} test files",
            (
                sources.Input(
                    path="json", data_files=(str(root / f"{name}-*.jsonl"),), text_field="content"
                ),
            ),
            filters={"min_words": 50} if name == "text" else {},
        )
        for name in ("text", "code")
    ]
    return specs, planted


CONFIG = corpus.BuildConfig(
    vocab_size=400, benchmarks_dir="", include_humaneval=True, heldout_per_mille=50
)


def _shards(manifest: dict) -> list:
    return [(s["name"], [x["sha256"] for x in s["shards"]]) for s in manifest["sources"]]


@pytest.fixture(scope="module")
def inline(inputs, tmp_path_factory):
    specs, _ = inputs
    out = str(tmp_path_factory.mktemp("inline") / "corpus")
    return out, pipeline.build_sharded(specs, out, CONFIG, log=print)


def test_duplicates_across_sources_and_contamination_are_dropped(inputs, inline):
    _, planted = inputs
    out, manifest = inline
    by_name = {s["name"]: s for s in manifest["sources"]}
    assert len(by_name["text"]["shards"]) == 3 and len(by_name["code"]["shards"]) == 2
    assert by_name["code"]["dropped"]["exact"] == 1
    assert by_name["text"]["dropped"]["exact"] == 0
    assert by_name["code"]["dropped"]["near_duplicate"] == 2
    assert by_name["text"]["dropped"]["near_duplicate"] == 0
    assert by_name["code"]["dropped"]["contaminated"] == 1
    assert by_name["text"]["dropped"]["filter:min_words"] == 1
    assert "filter:min_words" not in by_name["code"]["dropped"]
    c = corpus.Corpus(out)
    tok = c.tokenizer()
    served = {
        name: {tok.decode(c.document(name, i)[:-1]) for i in range(c.source(name).num_documents)}
        for name in ("text", "code")
    }
    heldout = {p for p in planted.values() if corpus.is_heldout(p, CONFIG.heldout_per_mille)}
    for key in ("exact", "near", "near_code"):
        if planted[key] in heldout:
            continue
        # Kept once, in the earlier source (text before code), or in code's first file.
        where = "code" if key == "near_code" else "text"
        assert planted[key] in served[where], key
    assert not any(PLANT in t for docs in served.values() for t in docs)
    # The planted pair is a near duplicate at Jaccard 0.8 on token 5-grams.
    a, b = (tok.encode(planted[k]) for k in ("near", "near_copy"))
    a, b = ({tuple(x[i : i + 5]) for i in range(len(x) - 4)} for x in (a, b))
    assert 0.78 < len(a & b) / len(a | b) < 0.85
    assert planted["exact"] not in served["code"]


def test_heldout_documents_follow_the_rule(inline):
    out, manifest = inline
    c = corpus.Corpus(out)
    tok = c.tokenizer()
    for s in manifest["sources"]:
        held = c.heldout(s["name"])
        assert held and len(held) == s["heldout"]["num_documents"] == s["dropped"]["heldout"]
        assert all(corpus.is_heldout(t, CONFIG.heldout_per_mille) for t in held)
        for i in range(s["num_documents"]):
            text = tok.decode(c.document(s["name"], i)[:-1])
            assert not corpus.is_heldout(text, CONFIG.heldout_per_mille)


def test_the_same_corpus_from_one_and_two_ray_workers(inputs, inline, tmp_path):
    specs, _ = inputs
    _, reference = inline
    for workers in (1, 2):
        manifest = pipeline.build_sharded(
            specs, str(tmp_path / f"w{workers}"), CONFIG, workers=workers, log=print
        )
        assert manifest["corpus_id"] == reference["corpus_id"]
        assert _shards(manifest) == _shards(reference)


def test_a_killed_build_resumes_without_redoing_finished_tasks(inputs, inline, tmp_path):
    specs, _ = inputs
    _, reference = inline
    out = tmp_path / "corpus"
    code = (
        "import json, sys\n"
        "from services.data import corpus, pipeline, sources\n"
        "specs = [sources.source_from_json(d) for d in json.loads(sys.argv[1])]\n"
        "config = corpus.BuildConfig(**json.loads(sys.argv[2]))\n"
        "pipeline.build_sharded(specs, sys.argv[3], config)\n"
    )
    config = {k: getattr(CONFIG, k) for k in ("vocab_size", "benchmarks_dir", "include_humaneval")}
    config["heldout_per_mille"] = CONFIG.heldout_per_mille
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            json.dumps([s.to_json() for s in specs]),
            json.dumps(config),
            str(out),
        ],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    encoded = out / pipeline.WORK / "encoded"
    deadline = time.monotonic() + 300
    while not (encoded.exists() and any(p.suffix == ".json" for p in encoded.rglob("*.json"))):
        assert child.poll() is None, "the build ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / corpus.MANIFEST).exists()
    lines = []
    manifest = pipeline.build_sharded(specs, str(out), CONFIG, log=lines.append)
    assert manifest["corpus_id"] == reference["corpus_id"]
    assert _shards(manifest) == _shards(reference)
    assert any(line.startswith("clean: 5 tasks (5 done before)") for line in lines), lines
    assert not (out / pipeline.WORK).exists()


def test_another_recipe_in_the_same_place_is_refused(inputs, inline):
    specs, _ = inputs
    out, _ = inline
    other = corpus.BuildConfig(vocab_size=700, benchmarks_dir="")
    with pytest.raises(errors.FieldError) as e:
        pipeline.build_sharded(specs, out, other, log=print)
    assert e.value.field == "out"


def test_a_vocabulary_the_sample_cannot_reach_is_refused(inputs, tmp_path):
    specs, _ = inputs
    config = corpus.BuildConfig(vocab_size=60000, benchmarks_dir="", include_humaneval=False)
    with pytest.raises(errors.FieldError, match="reached") as e:
        pipeline.build_sharded(specs, str(tmp_path / "c"), config, log=print)
    assert e.value.field == "vocab_size"


def test_batches_read_across_shard_boundaries(inline, tmp_path):
    """A sharded source serves the batches of the same documents in one file."""
    out, manifest = inline
    c = corpus.Corpus(out)
    docs = {
        name: [c.document(name, i)[:-1].tolist() for i in range(c.source(name).num_documents)]
        for name in ("text", "code")
    }
    flat = data_testing.write_token_corpus(str(tmp_path / "flat"), docs, vocab_size=c.vocab_size)
    spec = mixture.Mixture.parse("text=0.5,code=0.5")
    geometry = dict(seed=3, global_batch_size=4, seq_len=256)
    a, b = mixture.BatchReader(c, spec, **geometry), mixture.BatchReader(flat, spec, **geometry)
    for step in range(0, 120, 7):  # through several epochs of both sources
        np.testing.assert_array_equal(a.batch(step).tokens, b.batch(step).tokens)


def test_concatenated_indexes_as_one_array():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 100, n).astype(np.uint32) for n in (5, 1, 17, 9)]
    whole = np.concatenate(parts)
    view = corpus.Concatenated(parts)
    assert len(view) == whole.size
    for start in range(whole.size):
        for stop in range(start, whole.size + 1, 3):
            np.testing.assert_array_equal(view[start:stop], whole[start:stop])
        assert view[start] == whole[start]
    idx = rng.integers(0, whole.size, 50)
    np.testing.assert_array_equal(view[idx], whole[idx])


def test_uri_inputs_expand_with_their_excludes(tmp_path):
    from libs.storage import testing as storage_testing

    with storage_testing.gcs_emulator(bucket="bkt") as gcs:
        for name in ("a-0.jsonl", "a-1.jsonl", "b-0.jsonl"):
            from libs import storage

            storage.write_text(gcs.uri(f"in/{name}"), "{}\n")
        inp = sources.Input(path="json", data_files=(gcs.uri("in/*.jsonl"),), exclude=("*/b-*",))
        assert pipeline._expand(inp) == [gcs.uri("in/a-0.jsonl"), gcs.uri("in/a-1.jsonl")]


def _plain_band_hashes(tokens, offsets, keys):
    """band_hashes written out one document and one hash function at a time."""
    a, b = pipeline._permutations()
    m64, out = (1 << 64) - 1, []
    for d in range(offsets.size - 1):
        doc = [int(t) for t in tokens[offsets[d] : offsets[d + 1]]]
        windows = len(doc) - pipeline.NGRAM + 1
        if windows <= 0:
            out.append([int(keys[d]) * pipeline.BANDS + i for i in range(pipeline.BANDS)])
            continue
        shingles = []
        for s in range(windows):
            h = doc[s] * 0x9E3779B97F4A7C15 & m64
            for j in range(1, pipeline.NGRAM):
                h = (h ^ doc[s + j]) * 0x100000001B3 & m64
            shingles.append(((h >> 32) ^ h) & 0xFFFFFFFF)
        sig = [min((int(ak) * x + int(bk)) & 0xFFFFFFFF for x in shingles) for ak, bk in zip(a, b)]
        bands = []
        for band in range(pipeline.BANDS):
            v = 0
            for r in sig[band * pipeline.ROWS : (band + 1) * pipeline.ROWS]:
                v = (v * 0x100000001B3 + r) & m64
            bands.append(v)
        out.append(bands)
    return np.array(out, np.uint64).reshape(-1, pipeline.BANDS)


def test_minhash_bands_equal_the_plain_computation(monkeypatch):
    rng = np.random.default_rng(0)
    # Short documents (no window, one window), ordinary ones, and one longer
    # than a chunk of windows.
    lengths = [0, 3, 4, 5, 6, 40, 1, 200, 77, 900, 2, 333]
    tokens = rng.integers(0, 50_000, sum(lengths)).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    keys = np.arange(len(lengths), dtype=np.uint64) + np.uint64(7 << 28)
    want = _plain_band_hashes(tokens, offsets, keys)
    for chunk in (256, 1 << 14):  # documents across and within chunks
        monkeypatch.setattr(pipeline, "_CHUNK", chunk)
        np.testing.assert_array_equal(pipeline.band_hashes(tokens, offsets, keys), want)
