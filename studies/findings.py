"""The paper's findings, as comparisons a study can measure, and the verdict rule.

Each finding of "To Code, or Not To Code?" (arXiv 2408.10914) is written once here
as claims: arm A beats arm B on a category (`Claim`), or one arm of a code-proportion
sweep beats every other arm of it (`Optimum`, the paper's "about 25% code is best").
The arms are named as in studies/specs/ (tiny, 470m and 2.8b share their arms); a
claim whose arms a study lacks is skipped.

A claim is decided on one metric, its category's primary metric, declared in the
study before anything trains (Study.primary_metrics, studies/spec_verdicts.py): gold
bits per byte (code: of the canonical solutions), the gold choice's probability
normalised over the choices or its margin, or the task's own score. The gain is a
paired difference over seeds and eval items (studies/compare.py), signed so that a
positive gain is the paper's direction: B - A for bits per byte (lower is better),
A - B otherwise. The other metrics are secondary: shown beside it with 95% intervals,
never deciding.

The claims of a study are one family, corrected with Holm's step-down (`holm`), by
sequential confidence levels rather than p-values: with r claims decided so far and
m - r left, every remaining claim's interval is computed at confidence
1 - alpha / (m - r); those that exclude zero are decided, and the next step widens
the level again, until a step decides nothing. That is Holm's procedure on the
p-values of the same t-intervals (a claim's interval excludes zero at 1 - a exactly
when its p-value is below a). A claim the study can test but has not evaluated yet
holds its share of alpha (m counts it). Each claim is reported with the confidence
its interval was judged at.

An optimum is one hypothesis of the family. It is *reproduced* when the best arm's
gain over every other arm of the sweep lies above zero at the claim's level (an
intersection-union test: each comparison at the level, since every one must hold);
*contradicted* when some other arm beats it at the Bonferroni level over the
comparisons (any one suffices, so their number divides the error); else not
resolved.

The verdict: *reproduced in direction* when the primary gain's adjusted interval lies
above zero, *contradicted* below, *not resolved at this scale* when it crosses zero,
*not evaluated yet* before both arms are. A secondary metric whose 95% interval lies
on the other side of zero from a decided primary is named beside the verdict (*a
secondary metric disagrees*); it does not change it.

`null_rate` counts the A/A null comparisons (twin arms against their originals,
Arm.twin_of) whose 95% interval excludes zero: the false-positive rate measured on
the study's own seeds and items.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from studies import compare
from studies.compare import Effect

REPRODUCED = "reproduced in direction"
CONTRADICTED = "contradicted"
UNRESOLVED = "not resolved at this scale"
PENDING = "not evaluated yet"
DISAGREES = "a secondary metric disagrees"

ALPHA = 0.05  # family-wise error of a study's claims
SECONDARY_CONFIDENCE = 0.95  # secondary metrics and null comparisons, unadjusted
CATEGORIES = ("nl_reasoning", "world_knowledge", "code")
NL_CATEGORIES = ("nl_reasoning", "world_knowledge")
# Every per-example metric of a category's tasks (services/eval); "headline" is the
# task's own score.
METRICS = (compare.HEADLINE, "bpb", "prob_correct", "margin")
LOWER_BETTER = frozenset({"bpb"})


@dataclasses.dataclass(frozen=True)
class Claim:
    finding: str  # the paper's finding, in its words
    paper: str  # the paper's number for this comparison
    a: str  # "arm" (its last phase) or "arm/phase" the paper finds better...
    b: str  # ...than this one
    category: str  # nl_reasoning, world_knowledge or code


@dataclasses.dataclass(frozen=True)
class Optimum:
    finding: str
    paper: str
    best: str  # the arm the paper finds best, compared with every other arm of its sweep
    category: str


_INIT = "balanced->text against text-only"
CLAIMS = (
    Claim(
        "Code lifts NL reasoning",
        f"+8.2% relative ({_INIT})",
        "balanced-to-text",
        "text-only",
        "nl_reasoning",
    ),
    Claim(
        "Code lifts world knowledge",
        f"+4.2% relative ({_INIT})",
        "balanced-to-text",
        "text-only",
        "world_knowledge",
    ),
    Claim("Code lifts code", f"12x ({_INIT})", "balanced-to-text", "text-only", "code"),
    Optimum(
        "About 25% code is best for NL reasoning",
        "25% code above every other share of the sweep",
        "code25",
        "nl_reasoning",
    ),
    Claim(
        "Synthetic code helps beyond its share",
        "+9% relative (10% synthetic in the code)",
        "quality-synthetic",
        "code-to-text",
        "nl_reasoning",
    ),
    Claim(
        "Synthetic code helps beyond its share",
        "+44.9% relative (10% synthetic in the code)",
        "quality-synthetic",
        "code-to-text",
        "code",
    ),
    Claim(
        "Markup and code-adjacent data help",
        "a lift over web code alone",
        "quality-markup",
        "code-to-text",
        "nl_reasoning",
    ),
    Claim(
        "Markup and code-adjacent data help",
        "a lift over web code alone",
        "quality-code-adjacent",
        "code-to-text",
        "nl_reasoning",
    ),
    Claim(
        "Code in the cooldown helps",
        "+3.6% relative (against a cooldown without code)",
        "cooldown-code20",
        "cooldown-nocode",
        "nl_reasoning",
    ),
    Claim(
        "Code in the cooldown helps",
        "+10.1% relative",
        "cooldown-code20",
        "cooldown-nocode",
        "world_knowledge",
    ),
    Claim(
        "Code in the cooldown helps", "+20% relative", "cooldown-code20", "cooldown-nocode", "code"
    ),
)


# ---------------------------------------------------------------- deciding


# A claim's test: the sign its gain resolves to at a confidence level (+1: the
# paper's direction, -1: against it, 0: not resolved).
Test = Callable[[float], int]


@dataclasses.dataclass(frozen=True)
class Decision:
    sign: int | None  # +1, -1, 0; None: not evaluated yet
    confidence: float  # the level the claim's interval was judged at


def gain(diff: Sequence[compare.Unit] | None, confidence: float) -> Effect | None:
    """The mean of signed differences with its interval at `confidence`."""
    return compare.interval(diff, confidence=confidence) if diff else None


def claim_test(diff: Sequence[compare.Unit]) -> Test:
    """A Claim's test on its signed primary differences."""
    return lambda confidence: gain(diff, confidence).sign


def optimum_test(diffs: Sequence[Sequence[compare.Unit]]) -> Test:
    """An Optimum's test on the best arm's signed primary differences against each
    other arm: +1 when every gain lies above zero at the level, -1 when one lies
    below zero at the Bonferroni level over the comparisons, else 0."""

    def test(confidence: float) -> int:
        if all(gain(d, confidence).low > 0 for d in diffs):
            return 1
        strict = 1 - (1 - confidence) / len(diffs)
        return -1 if any(gain(d, strict).high < 0 for d in diffs) else 0

    return test


def holm(tests: Sequence[Test | None], alpha: float = ALPHA) -> list[Decision]:
    """Every claim's decision under Holm's step-down at family-wise error `alpha`
    (see the module docstring); None: a claim not evaluated yet, never decided."""
    decisions: dict[int, Decision] = {}
    left = list(range(len(tests)))
    while left:
        level = 1 - alpha / len(left)
        signs = {i: tests[i](level) if tests[i] else 0 for i in left}
        if not any(signs.values()):
            break
        decisions.update({i: Decision(signs[i], level) for i in left if signs[i]})
        left = [i for i in left if not signs[i]]
    for i in left:
        decisions[i] = Decision(None if tests[i] is None else 0, 1 - alpha / len(left))
    return [decisions[i] for i in range(len(tests))]


def verdict(sign: int | None, secondary: Sequence[Effect | None] = ()) -> str:
    """The verdict of a claim from its primary decision and its secondary gains."""
    if sign is None:
        return PENDING
    if sign == 0:
        return UNRESOLVED
    text = REPRODUCED if sign > 0 else CONTRADICTED
    if any(e is not None and e.sign == -sign for e in secondary):
        return f"{text}; {DISAGREES}"
    return text


def null_rate(effects: Sequence[Effect | None]) -> tuple[int, int]:
    """(k, n): k of the n measured null comparisons are called resolved."""
    measured = [e for e in effects if e is not None]
    return sum(e.resolved for e in measured), len(measured)
