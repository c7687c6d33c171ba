"""The default corpus, from this machine's real material (at 2% of its token
caps): every source of the paper's kinds is non-empty, decontaminated against
the benchmarks, and servable."""

import pytest

from services.data import corpus, mixture, sources


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("default") / "corpus")
    manifest = corpus.ensure_default_corpus(path, scale=0.02)
    return path, manifest


def test_every_kind_has_real_documents(built):
    path, manifest = built
    c = corpus.Corpus(path)
    assert list(dict.fromkeys(s.kind for s in c.sources)) == list(sources.KINDS)
    for s in c.sources:
        assert s.num_documents > 0 and s.num_tokens > 0, s.name
    synthetic = next(e for e in manifest["sources"] if e["name"] == "synthetic_code")["synthetic"]
    assert (
        synthetic["kept"] > 0 and not synthetic["error"] and sum(synthetic["rejected"].values()) > 0
    )
    tok = c.tokenizer()
    code = tok.decode(c.document("code", 0).tolist())
    assert code.endswith("<eos>") and ("def " in code or "import " in code or "class " in code)


def test_decontamination_report_covers_benchmarks(built):
    _, manifest = built
    report = manifest["decontamination"]
    assert "humaneval" in report["benchmarks"]
    assert set(report["sources"]) == {s.name for s in sources.default_sources()}


def test_cached_and_servable(built):
    path, manifest = built
    assert corpus.ensure_default_corpus(path, scale=0.02, log=lambda s: None) == manifest
    c = corpus.Corpus(path)
    m = mixture.Mixture.staged(
        [
            (
                10_000,
                {
                    "text": 0.5,
                    "code": 0.3,
                    "markup": 0.1,
                    "code_adjacent": 0.05,
                    "synthetic_code": 0.05,
                },
            ),
            (0, {"cooldown": 0.8, "code": 0.2}),
        ]
    )
    reader = mixture.BatchReader(c, m, seed=0, global_batch_size=2, seq_len=512)
    assert reader.batch(0).stage == 0 and reader.batch(10).stage == 1
