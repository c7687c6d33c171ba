"""Per-domain held-out bits per byte (Paloma-style) on the corpus's held-out slice.

Every source of a corpus built by services/data keeps a held-out slice of documents,
chosen by content hash, that no mixture ever serves (services/data/corpus.py). This
module reads that slice and scores a model on it: for each source, the bits per byte
of its held-out documents,

    sum over documents of -log p(document) / sum of their UTF-8 bytes / ln 2,

each document scored whole (rolling windows of the model's context, the first token
conditioned on the end-of-document token, as the model saw documents in training).
Bits per byte do not depend on the tokenizer, so models with different vocabularies
compare. A source's interval is a paired percentile bootstrap over its documents of
that ratio (scipy.stats.bootstrap); the mean's resamples every source independently.

Only a model trained on the corpus is scored on its slice: `same_tokenizer` checks that
its tokenizer is the corpus's (a model of another corpus may have trained on these
documents).

The result is one TaskResult, task "heldout_bpb", category "heldout" (outside the
paper's aggregates): `extra[source]` is that source's BPB with its interval in
`intervals[source]`, `extra[source + "/documents"]` the documents scored, and `example_metrics` each
document's negative log-likelihood (`source + "/nll"`, nats) and UTF-8 bytes
(`source + "/bytes"`), so that two models compare document by document; its value is
the mean over sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import numpy as np

from services.eval.evaluator import TaskResult

TASK = "heldout_bpb"
CATEGORY = "heldout"
METRIC = "bpb"
CORPUS_DIR_ENV = "CODE_LAB_HELDOUT_CORPUS_DIR"


def default_corpus_dir() -> str:
    """$CODE_LAB_HELDOUT_CORPUS_DIR, else the data service's default corpus."""
    from services.data import corpus

    return os.environ.get(CORPUS_DIR_ENV) or corpus.default_corpus_dir()


def has_slice(corpus_dir: str) -> bool:
    """Whether `corpus_dir` holds a corpus whose sources record a held-out slice."""
    try:
        with open(os.path.join(corpus_dir, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return any(s.get("heldout", {}).get("num_documents") for s in manifest.get("sources", []))


def same_tokenizer(corpus_dir: str, tokenizer) -> bool:
    """Whether a model's tokenizer is the corpus's (same vocabulary): the sign that the
    model was trained on this corpus, so that its held-out slice is held out for it. A
    model of another corpus may have seen these documents in training."""
    from tokenizers import Tokenizer

    with open(os.path.join(corpus_dir, "manifest.json")) as f:
        manifest = json.load(f)
    path = os.path.join(corpus_dir, manifest["tokenizer"].get("file", "tokenizer.json"))
    try:
        theirs = Tokenizer.from_file(path)
    except Exception:  # noqa: BLE001  (a corpus without a readable tokenizer)
        return False
    return theirs.get_vocab() == tokenizer.get_vocab()


def fingerprint(corpus_dir: str) -> str:
    """What decides the held-out documents: each source's held-out content hash."""
    with open(os.path.join(corpus_dir, "manifest.json")) as f:
        manifest = json.load(f)
    parts = [(s["name"], s.get("heldout", {}).get("content_hash", "")) for s in manifest["sources"]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def scoring_fingerprint() -> str:
    """The source of the code that turns documents into this module's scores."""
    import inspect

    from services.eval import lm, scoring

    h = hashlib.sha256()
    for module in (inspect.getmodule(scoring_fingerprint), lm, scoring):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:20]


def load(corpus_dir: str, limit: int = 0) -> dict[str, list[str]]:
    """Source -> its held-out documents (the first `limit` of each; 0: all)."""
    from services.data import corpus

    c = corpus.Corpus(corpus_dir)
    out = {}
    for s in c.sources:
        docs = [d for d in c.heldout(s.name) if d]
        if docs:
            out[s.name] = docs[:limit] if limit > 0 else docs
    return out


def _ratio_interval(
    nll: np.ndarray, nbytes: np.ndarray, *, seed: int, resamples: int
) -> tuple[float, float]:
    value = float(nll.sum() / nbytes.sum() / math.log(2))
    if nll.size < 2:
        return value, value
    from scipy import stats

    res = stats.bootstrap(
        (nll, nbytes),
        lambda a, b, axis=-1: a.sum(axis=axis) / b.sum(axis=axis) / math.log(2),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def evaluate(
    model,
    documents: dict[str, list[str]],
    *,
    seed: int = 0,
    resamples: int = 1000,
) -> TaskResult:
    """The per-source held-out BPB of `model` (a TextModel with loglikelihood_rolling)."""
    if not documents:
        raise ValueError("documents: no held-out documents to score")
    names = sorted(documents)
    flat = [d for name in names for d in documents[name]]
    logprobs = model.loglikelihood_rolling(flat)
    extra, intervals, per_source, replicates, per_document = {}, {}, [], [], {}
    rng = np.random.default_rng(seed)
    at = 0
    for name in names:
        docs = documents[name]
        nll = -np.asarray(logprobs[at : at + len(docs)], np.float64)
        nbytes = np.asarray([len(d.encode("utf-8")) for d in docs], np.float64)
        at += len(docs)
        bpb = float(nll.sum() / nbytes.sum() / math.log(2))
        extra[name] = bpb
        extra[f"{name}/documents"] = float(len(docs))
        intervals[name] = _ratio_interval(nll, nbytes, seed=seed, resamples=resamples)
        per_source.append(bpb)
        per_document[f"{name}/nll"] = nll.tolist()
        per_document[f"{name}/bytes"] = nbytes.tolist()
        # Replicates of this source's ratio, sources resampled independently.
        idx = rng.integers(0, len(docs), size=(resamples, len(docs)))
        replicates.append(nll[idx].sum(axis=1) / nbytes[idx].sum(axis=1) / math.log(2))
    value = float(np.mean(per_source))
    mean_reps = np.mean(replicates, axis=0)
    return TaskResult(
        task=TASK,
        category=CATEGORY,
        metric=METRIC,
        value=value,
        ci_low=float(np.quantile(mean_reps, 0.025)),
        ci_high=float(np.quantile(mean_reps, 0.975)),
        num_examples=len(flat),
        extra=extra,
        intervals=intervals,
        example_metrics=per_document,
    )
