"""The paper's findings, as comparisons a study can measure, and the verdict rule.

Each finding of "To Code, or Not To Code?" (arXiv 2408.10914) is written once here
as claims: arm A beats arm B on a category, by the paper's number. The arms are
named as in studies/specs/ (tiny, 470m and 2.8b share their arms); a claim whose
arms a study lacks is skipped.

A claim is measured twice, on the same checkpoints, as a paired difference over
seeds and eval items (studies/compare.py), signed so that a positive gain is the
paper's direction:

- on the category's continuous metric: bits per byte of the gold answers (code:
  of the canonical solutions), gain = BPB(B) - BPB(A), since lower is better;
- on the category's accuracy (accuracy, exact match, F1 or pass@1, as the paper
  scores it), gain = score(A) - score(B).

The verdict: *reproduced in direction* when a gain's 95% interval lies above zero
and none lies below; *contradicted* when one lies below and none above; *mixed*
when one lies on each side; *not resolved at this scale* when every interval
crosses zero (*not evaluated yet* before both arms are). Nothing is called a
finding when its interval crosses zero.
"""

from __future__ import annotations

import dataclasses

from studies.compare import Effect

REPRODUCED = "reproduced in direction"
CONTRADICTED = "contradicted"
MIXED = "mixed: the metrics disagree"
UNRESOLVED = "not resolved at this scale"
PENDING = "not evaluated yet"


@dataclasses.dataclass(frozen=True)
class Claim:
    finding: str  # the paper's finding, in its words
    paper: str  # the paper's number for this comparison
    a: str  # "arm" (its last phase) or "arm/phase" the paper finds better...
    b: str  # ...than this one
    category: str  # nl_reasoning, world_knowledge or code


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
    Claim(
        "About 25% code is best for NL reasoning",
        "25% code above 0%",
        "code25",
        "code0",
        "nl_reasoning",
    ),
    Claim(
        "About 25% code is best for NL reasoning",
        "25% code above 75%",
        "code25",
        "code75",
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


def verdict(*gains: Effect | None) -> str:
    """The verdict of a claim from its gains (positive: the paper's direction;
    None: not measured)."""
    if all(g is None for g in gains):
        return PENDING
    signs = {g.sign for g in gains if g is not None}
    if 1 in signs and -1 in signs:
        return MIXED
    if 1 in signs:
        return REPRODUCED
    if -1 in signs:
        return CONTRADICTED
    return UNRESOLVED
