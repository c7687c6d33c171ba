"""Held-out bits per byte per source on a real corpus's held-out slice."""

import math
import os

import numpy as np
import pytest

from services.data import corpus
from services.data.api import testing as data_testing
from libs import errors
from services.eval import heldout, lm as lm_lib, scoring, tasks, testing
from services.eval.harness import Harness
from services.eval.results_db import ResultsDB

ROOT = tasks.default_benchmarks_dir()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    paths = data_testing.write_source_files(os.path.join(root, "raw"))
    out = os.path.join(root, "corpus")
    config = corpus.BuildConfig(
        vocab_size=400, benchmarks_dir="", include_humaneval=False, heldout_per_mille=300
    )
    corpus.build(data_testing.source_specs(paths), out, config, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def lm(corpus_dir):
    # A model of the corpus: its tokenizer (what the trainer puts in checkpoints).
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(corpus_dir, "tokenizer.json"))
    model = testing.tiny_model(tok.get_vocab_size(), max_seq_len=64)
    return lm_lib.LanguageModel(model, tok, batch_size=4)


@pytest.fixture(scope="module")
def other_lm():
    # A model of another corpus (another tokenizer).
    tok = testing.train_tokenizer()
    return lm_lib.LanguageModel(testing.tiny_model(tok.get_vocab_size()), tok, batch_size=4)


def _direct_logprob(lm, ids):
    # log p(ids | <eos>) from the full logits of one unpadded row.
    tokens = np.asarray([[lm.eos_id] + ids[:-1]], np.int32)
    logits = np.asarray(lm.model(tokens), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(sum(logp[i, t] for i, t in enumerate(ids)))


def test_rolling_loglikelihood_scores_every_token_once(lm):
    short = "def add(a, b):\n    return a + b\n"
    ids = lm._encode(short)
    assert len(ids) < lm.max_length
    (got,) = lm.loglikelihood_rolling([short])
    assert got == pytest.approx(_direct_logprob(lm, ids), abs=1e-3)
    # Longer than the window: disjoint windows of 64, as lm-eval's rolling windows.
    long = "The man turned on the faucet therefore water flowed. " * 12
    ids = lm._encode(long)
    assert len(ids) > 2 * lm.max_length
    w = lm.max_length
    windows = [([lm.eos_id], ids[:w])]
    for first in range(w, len(ids), w):
        end = min(first + w, len(ids))
        windows.append((ids[end - w - 1 : first], ids[first:end]))
    want = sum(lp for lp, _, _ in scoring.score_each(lm.model, windows))
    assert sum(len(c) for _, c in windows) == len(ids)
    assert lm.loglikelihood_rolling([long, short])[0] == pytest.approx(want, abs=1e-3)
    assert lm.loglikelihood_rolling([""]) == [0.0]


def test_per_source_bits_per_byte(lm, corpus_dir):
    assert heldout.has_slice(corpus_dir)
    docs = heldout.load(corpus_dir, limit=6)
    assert docs and all(1 <= len(v) <= 6 for v in docs.values())
    served = corpus.Corpus(corpus_dir)
    for name, texts in docs.items():
        assert all(corpus.is_heldout(t, 300) for t in texts)
        assert served.source(name).num_documents > 0
    r = heldout.evaluate(lm, docs, seed=1, resamples=200)
    assert (r.task, r.category, r.metric) == ("heldout_bpb", "heldout", "bpb")
    assert r.num_examples == sum(map(len, docs.values()))
    logprobs = lm.loglikelihood_rolling([d for name in sorted(docs) for d in docs[name]])
    at = 0
    for name in sorted(docs):
        n = len(docs[name])
        nbytes = sum(len(d.encode()) for d in docs[name])
        want = -sum(logprobs[at : at + n]) / nbytes / math.log(2)
        at += n
        assert r.extra[name] == pytest.approx(want)
        assert r.extra[f"{name}/documents"] == n
        # Document by document: their ratio is the source's BPB.
        nll, doc_bytes = r.example_metrics[f"{name}/nll"], r.example_metrics[f"{name}/bytes"]
        assert len(nll) == len(doc_bytes) == n and sum(doc_bytes) == nbytes
        assert sum(nll) / sum(doc_bytes) / math.log(2) == pytest.approx(want)
        lo, hi = r.intervals[name]
        assert lo <= r.extra[name] <= hi
        assert r.extra[name] > 1.0  # a random model spends bits on every byte
    assert r.value == pytest.approx(np.mean([r.extra[n] for n in docs]))
    assert r.ci_low <= r.value <= r.ci_high


def test_suite_evaluations_report_heldout_bpb(lm, other_lm, corpus_dir, tmp_path):
    registry = testing.ModelRegistry()
    registry.add("mem://m", lm, step=3)
    registry.add("mem://other", other_lm, step=3)

    def harness(heldout_dir):
        return Harness(
            benchmarks_dir=ROOT,
            results_db=ResultsDB(),
            cache_dir=str(tmp_path / "cache"),
            loader=registry.load,
            bootstrap_resamples=50,
            heldout_corpus_dir=heldout_dir,
        )

    def scores(h, names, uri="mem://m"):
        return [s.result for s in h.evaluate(uri, task_names=names, limit=2)]

    with_slice = scores(harness(corpus_dir), ["copa", "cb", "heldout_bpb"])
    names = [r.task for r in with_slice]
    assert names.index("heldout_bpb") == names.index("aggregate/nl_reasoning") - 1
    without = scores(harness(corpus_dir), ["copa", "cb"])
    assert "heldout_bpb" not in [r.task for r in without]
    # A harness without a held-out corpus refuses the task, naming the field.
    with pytest.raises(errors.NotFound, match="tasks:"):
        scores(harness(""), ["copa", "heldout_bpb"])
    # The paper's aggregates do not count it.
    aggs = {r.task: r for r in with_slice if r.is_aggregate}
    for r in without:
        if r.is_aggregate:
            assert aggs[r.task].value == pytest.approx(r.value)
            assert aggs[r.task].num_examples == r.num_examples
    # A model of another corpus may have trained on these documents: not scored.
    assert heldout.same_tokenizer(corpus_dir, lm.tokenizer)
    assert not heldout.same_tokenizer(corpus_dir, other_lm.tokenizer)
    with pytest.raises(errors.FailedPrecondition, match="tokenizer"):
        scores(harness(corpus_dir), ["copa", "heldout_bpb"], uri="mem://other")
    # Named on its own, it is all that is scored.
    alone = [s.result for s in harness(corpus_dir).evaluate("mem://m", task_names=["heldout_bpb"])]
    assert [r.task for r in alone] == ["heldout_bpb"]
