"""The paper's findings as verdicts (studies/findings.py): each claim's gain on its
category's primary metric with its Holm-adjusted interval, the secondary metrics
beside it, and beside every NL claim the held-out text BPB gain and the text tokens
each arm saw; the findings table, the optimum's comparisons and the effects figure.
"""

from __future__ import annotations

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studies import compare, report_laws, report_rows, spec_verdicts  # noqa: E402
from studies import findings as findings_lib  # noqa: E402

METRIC_NAMES = {
    compare.HEADLINE: "score",
    "bpb": "gold BPB",
    "prob_correct": "p(gold)",
    "margin": "margin",
}

# ---------------------------------------------------------------- the paper's findings


@dataclasses.dataclass
class Comparison:
    """Arm A of a claim against one B: signed differences (positive: the paper's
    direction) of every metric of the claim's category, and of held-out text BPB."""

    b: report_rows.Row
    diffs: dict[str, list[compare.Unit] | None]
    heldout_text: list[compare.Unit] | None

    def gain(self, metric: str, confidence: float = findings_lib.SECONDARY_CONFIDENCE):
        return findings_lib.gain(self.diffs.get(metric), confidence)


@dataclasses.dataclass
class Measured:
    """One claim of studies/findings.py, measured on this study's rows."""

    claim: findings_lib.Claim | findings_lib.Optimum
    a: report_rows.Row
    against: list[Comparison]  # one for a Claim; each other arm of the sweep for an Optimum
    metric: str  # the category's primary metric
    decision: findings_lib.Decision = findings_lib.Decision(None, 1 - findings_lib.ALPHA)

    @property
    def test(self) -> findings_lib.Test | None:
        diffs = [c.diffs.get(self.metric) for c in self.against]
        if not all(diffs):
            return None
        if isinstance(self.claim, findings_lib.Optimum):
            return findings_lib.optimum_test(diffs)
        return findings_lib.claim_test(diffs[0])

    @property
    def shown(self) -> Comparison:
        """The comparison the table shows: an optimum's closest other arm."""
        gains = [c.gain(self.metric) for c in self.against]
        if len(gains) == 1 or not all(gains):
            return self.against[0]
        return self.against[int(np.argmin([g.value for g in gains]))]

    @property
    def primary(self) -> compare.Effect | None:
        """The shown comparison's primary gain at the claim's Holm level."""
        return self.shown.gain(self.metric, self.decision.confidence)

    @property
    def secondary(self) -> dict[str, compare.Effect | None]:
        return {
            m: self.shown.gain(m)
            for m in spec_verdicts.PRIMARY_CHOICES[self.claim.category]
            if m != self.metric
        }

    @property
    def verdict(self) -> str:
        return findings_lib.verdict(self.decision.sign, list(self.secondary.values()))


def _comparison(a: report_rows.Row, b: report_rows.Row, category: str) -> Comparison:
    diffs = {
        m: report_rows.paired_units(a, b, category, m, lower_better=m in findings_lib.LOWER_BETTER)
        for m in spec_verdicts.PRIMARY_CHOICES[category]
    }
    text = None
    if category in findings_lib.NL_CATEGORIES:
        text = report_rows.paired_units(a, b, "heldout", "text", lower_better=True)
    return Comparison(b, diffs, text)


def _arms(study, claim) -> tuple[str, list[str]] | None:
    """The refs of a claim's A and of its Bs; None when the study lacks an arm."""
    names = {a.name for a in study.arms}
    if isinstance(claim, findings_lib.Optimum):
        sweep = next((s for s in study.sweeps if claim.best in s.arms), None)
        if sweep is None:
            return None
        ref = (lambda arm: f"{arm}/{sweep.phase}") if sweep.phase else (lambda arm: arm)
        return ref(claim.best), [ref(arm) for arm in sweep.arms if arm != claim.best]
    if claim.a.split("/")[0] not in names or claim.b.split("/")[0] not in names:
        return None
    return claim.a, [claim.b]


def measure_findings(study, by_ref: dict[str, report_rows.Row]) -> list[Measured]:
    """Every claim whose arms the study has, measured where its arms are evaluated,
    and decided together under Holm's correction."""
    out = []
    for claim in findings_lib.CLAIMS:
        arms = _arms(study, claim)
        if arms is None:
            continue
        a = by_ref[report_rows.ref_name(study, arms[0])]
        against = [
            _comparison(a, by_ref[report_rows.ref_name(study, b)], claim.category) for b in arms[1]
        ]
        metric = spec_verdicts.primary_metric(study, claim.category)
        out.append(Measured(claim, a, against, metric))
    for m, decision in zip(out, findings_lib.holm([m.test for m in out])):
        m.decision = decision
    return out


def _primary_text(m: Measured) -> str:
    e = m.primary
    if e is None:
        return "—"
    if m.metric == compare.HEADLINE:
        text = report_rows.effect_text(report_rows.point_effect(e), "{:+.1f}") + " points"
    else:
        text = report_rows.effect_text(e, "{:+.4f}")
    return f"{METRIC_NAMES[m.metric]} {text} at {100 * m.decision.confidence:.2f}%"


def _accuracy_text(m: Measured) -> str:
    if m.metric == compare.HEADLINE:
        return "(primary)"
    e, c = m.secondary.get(compare.HEADLINE), m.claim.category
    if e is None:
        return "—"
    rel = ""
    if c in m.a.scores and c in m.shown.b.scores:
        rel = (
            f" ({report_rows.rel(report_rows.relative(m.a.scores[c][0], m.shown.b.scores[c][0]))})"
        )
    return report_rows.effect_text(report_rows.point_effect(e), "{:+.1f}") + rel


def _others_text(m: Measured) -> str:
    parts = [
        f"{METRIC_NAMES[k]} {report_rows.effect_text(e, '{:+.4f}')}"
        for k, e in m.secondary.items()
        if k != compare.HEADLINE and e is not None
    ]
    return "; ".join(parts) or "—"


def _text_cells(m: Measured) -> list[str]:
    """Held-out text BPB gain and text tokens A / B, beside an NL claim."""
    if m.claim.category not in findings_lib.NL_CATEGORIES:
        return ["—", "—"]
    e = findings_lib.gain(m.shown.heldout_text, findings_lib.SECONDARY_CONFIDENCE)
    ta, tb = (r.tokens["text"] if r.tokens else None for r in (m.a, m.shown.b))
    return [
        report_rows.effect_text(e, "{:+.4f}") if e else "—",
        f"{report_rows.tok(ta)} / {report_rows.tok(tb)}",
    ]


def _compared_text(m: Measured) -> str:
    title = report_rows.TITLES[m.claim.category]
    if isinstance(m.claim, findings_lib.Optimum):
        others = ", ".join(f"`{c.b.ref}`" for c in m.against)
        return f"`{m.a.ref}` vs each of {others}: {title} (shown: `{m.shown.b.ref}`)"
    return f"`{m.a.ref}` vs `{m.shown.b.ref}`: {title}"


def findings_section(
    study, by_ref, laws: dict[str, report_laws.SweepLaw], figures: str
) -> list[str]:
    measured = measure_findings(study, by_ref)
    if not measured:
        return []
    lines = ["## The paper's findings, measured here", ""]
    body = []
    for m in measured:
        seeds = min((e.seeds for e in [m.primary, *m.secondary.values()] if e), default=0)
        decided = m.decision.sign not in (None, 0)
        body.append(
            [m.claim.finding, m.claim.paper, _compared_text(m), _primary_text(m)]
            + [_accuracy_text(m), _others_text(m)]
            + _text_cells(m)
            + [str(seeds), report_rows.bold_text(m.verdict, decided)]
        )
    lines += report_rows.table(
        [
            "Finding",
            "Paper",
            "Compared",
            "Primary gain [Holm-adjusted interval]",
            "Score gain, points [95%] (relative)",
            "Other gains [95%]",
            "Held-out text BPB gain [95%]",
            "Text tokens A / B",
            "Seeds",
            "Verdict",
        ],
        body,
    )
    primaries = ", ".join(
        f"{report_rows.TITLES[c]}: {METRIC_NAMES[spec_verdicts.primary_metric(study, c)]}"
        for c in findings_lib.CATEGORIES
    )
    lines += [
        "",
        "Gains are paired differences on the same eval items and seeds, signed so that "
        "positive is the paper's direction (bits per byte of A below B's; A's p(gold), "
        "margin and score above B's). Each claim is decided on its category's primary "
        f"metric, declared in the study before anything trained ({primaries}); gold BPB "
        "is of the gold answer (code: of the canonical solution), p(gold) the gold "
        "choice's probability normalised over the choices. The claims are one family "
        f"under Holm's step-down at {findings_lib.ALPHA:.0%} family-wise error: each "
        "primary interval is a seeds-and-items t-interval (studies/compare.py) at the "
        "confidence its claim was decided at, the levels stepping down from "
        f"1 - {findings_lib.ALPHA:g}/m as claims are decided. A verdict is "
        f"*{findings_lib.REPRODUCED}* only when that interval lies above zero, "
        f"*{findings_lib.UNRESOLVED}* when it crosses zero. The score and the other "
        "metrics are secondary, at 95% unadjusted, and decide nothing; one resolved "
        f"against a decided primary is marked *{findings_lib.DISAGREES}*. Beside each NL "
        "claim, the held-out text BPB gain (lower held-out text BPB of A: positive) and "
        "the text tokens each arm saw over its chain tell transfer from code apart from "
        "a model that saw more or less text. An optimum is reproduced only when the best "
        "arm beats every other arm of its sweep, each at the claim's level, and "
        "contradicted when another arm beats it at the Bonferroni level over them.",
        "",
    ]
    lines += _optimum_lines(measured)
    for name, law in laws.items():
        s = law.laws.get(("nl_reasoning", "bpb"))
        if s is not None and not isinstance(s, str):
            monotone = (
                " The exp form is monotone, so its optimum lies at an end of the sweep; the "
                "paired comparisons above measure the 25% arm directly."
                if s.fit.form == "exp"
                else ""
            )
            lines += [
                f"The mixture law of sweep `{name}` puts the lowest NL-reasoning gold BPB at "
                f"{s.best_fraction:.0%} code ({s.fit.form} form, held-out RMSE "
                f"{s.held_out_rmse:.3f}); the paper's NL-reasoning optimum is about 25%."
                + monotone,
                "",
            ]
    measurable = [m for m in measured if m.primary or m.secondary.get(compare.HEADLINE)]
    if measurable:
        _effects_figure(measurable, os.path.join(figures, "effects.png"))
        lines += ["![Effects of the paper's findings](figures/effects.png)", ""]
    return lines


def _optimum_lines(measured: list[Measured]) -> list[str]:
    """Each optimum's gain over every other arm of its sweep."""
    lines = []
    for m in measured:
        if not isinstance(m.claim, findings_lib.Optimum):
            continue
        body = []
        for c in m.against:
            e, score = c.gain(m.metric, m.decision.confidence), c.gain(compare.HEADLINE)
            body.append(
                [
                    f"`{c.b.ref}` ({report_rows.mixture_short(c.b.planned)})",
                    report_rows.effect_text(e, "{:+.4f}") if e else "—",
                    report_rows.effect_text(report_rows.point_effect(score), "{:+.1f}")
                    if score
                    else "—",
                ]
            )
        lines += [f"### {m.claim.finding}: `{m.a.ref}` against every other share", ""]
        lines += report_rows.table(
            [
                "Against",
                f"Primary ({METRIC_NAMES[m.metric]}) gain at {100 * m.decision.confidence:.2f}%",
                "Score gain, points [95%]",
            ],
            body,
        )
        lines += [
            "",
            f"Verdict: {m.verdict}. Reproduced only when every row's primary interval lies "
            "above zero.",
            "",
        ]
    return lines


def _effects_figure(measured: list[Measured], path: str) -> None:
    labels = [
        f"{m.claim.finding}\n{m.a.arm} vs {m.shown.b.arm} ({report_rows.TITLES[m.claim.category]})"
        for m in measured
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(measured) + 1.8), sharey=True)
    y = np.arange(len(measured))[::-1]
    for ax, key, xlabel in (
        (axes[0], "primary", "primary-metric gain (each claim's metric; Holm-adjusted interval)"),
        (axes[1], "score", "score gain (points; 95% interval)"),
    ):
        for yi, m in zip(y, measured):
            if key == "primary":
                e = m.primary
            else:
                e = m.secondary.get(compare.HEADLINE) or (
                    m.primary if m.metric == compare.HEADLINE else None
                )
                e = e and report_rows.point_effect(e)
            if e is None:
                continue
            color = {1: "C2", -1: "C3", 0: "gray"}[e.sign]
            ax.errorbar(
                [e.value],
                [yi],
                xerr=report_rows.err(e),
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        lo, hi = ax.get_xlim()
        ax.axvspan(0, max(hi, 0), color="C2", alpha=0.07)
        ax.set_xlim(lo, hi)
        ax.set_xlabel(xlabel + "; shaded: the paper's direction", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(y, labels, fontsize=7)
    fig.suptitle(
        "Paired effects over seeds and items (green: resolved with the paper, red: against)",
        fontsize=9,
    )
    report_rows.save(fig, path)
