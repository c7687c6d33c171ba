"""The paper's findings as verdicts: each claim's paired gain with its
interval (studies/findings.py), the findings table and the effects figure.
"""

from __future__ import annotations

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studies import compare, report_laws, report_rows  # noqa: E402
from studies import findings as findings_lib  # noqa: E402

# ---------------------------------------------------------------- the paper's findings


@dataclasses.dataclass
class Measured:
    """One claim of studies/findings.py, measured on this study's rows."""

    claim: findings_lib.Claim
    a: report_rows.Row
    b: report_rows.Row
    bpb: compare.Effect | None  # gain on gold BPB: BPB(B) - BPB(A)
    accuracy: compare.Effect | None  # gain on the category score: A - B

    @property
    def verdict(self) -> str:
        return findings_lib.verdict(self.bpb, self.accuracy)


def measure_findings(study, by_ref: dict[str, report_rows.Row]) -> list[Measured]:
    """Every claim whose arms the study has, measured where both are evaluated."""
    arm_names = {a.name for a in study.arms}
    out = []
    for claim in findings_lib.CLAIMS:
        if claim.a.split("/")[0] not in arm_names or claim.b.split("/")[0] not in arm_names:
            continue
        a, b = (
            by_ref[report_rows.ref_name(study, claim.a)],
            by_ref[report_rows.ref_name(study, claim.b)],
        )
        out.append(
            Measured(
                claim,
                a,
                b,
                report_rows.paired_gain(a, b, claim.category, "bpb", lower_better=True),
                report_rows.paired_gain(a, b, claim.category),
            )
        )
    return out


def findings_section(
    study, by_ref, laws: dict[str, report_laws.SweepLaw], figures: str
) -> list[str]:
    measured = measure_findings(study, by_ref)
    if not measured:
        return []
    lines = ["## The paper's findings, measured here", ""]
    body = []
    for m in measured:
        rel = ""
        if m.claim.category in m.a.scores and m.claim.category in m.b.scores:
            rel = f" ({report_rows.rel(report_rows.relative(m.a.scores[m.claim.category][0], m.b.scores[m.claim.category][0]))})"
        body.append(
            [
                m.claim.finding,
                m.claim.paper,
                f"`{m.a.ref}` vs `{m.b.ref}`: {report_rows.TITLES[m.claim.category]}",
                report_rows.effect_text(m.bpb, "{:+.4f}") if m.bpb else "—",
                (report_rows.effect_text(report_rows.point_effect(m.accuracy), "{:+.1f}") + rel)
                if m.accuracy
                else "—",
                str(m.bpb.seeds if m.bpb else m.accuracy.seeds if m.accuracy else 0),
                m.verdict
                if m.verdict in (findings_lib.UNRESOLVED, findings_lib.PENDING)
                else f"**{m.verdict}**",
            ]
        )
    lines += report_rows.table(
        [
            "Finding",
            "Paper",
            "Compared",
            "Gold-BPB gain [95%]",
            "Score gain, points [95%] (relative)",
            "Seeds",
            "Verdict",
        ],
        body,
    )
    lines += [
        "",
        "Gains are paired differences on the same eval items and seeds, signed so that "
        "positive is the paper's direction: gold-answer bits per byte of A below B's "
        "(code: of the canonical solutions), and A's category score above B's. Each "
        "interval is a 95% bootstrap over seeds and items together (studies/compare.py). "
        f"A verdict is *{findings_lib.REPRODUCED}* only when an interval lies above zero "
        f"and none below; *{findings_lib.UNRESOLVED}* when every interval crosses zero.",
        "",
    ]
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
    measurable = [m for m in measured if m.bpb or m.accuracy]
    if measurable:
        _effects_figure(measurable, os.path.join(figures, "effects.png"))
        lines += ["![Effects of the paper's findings](figures/effects.png)", ""]
    return lines


def _effects_figure(measured: list[Measured], path: str) -> None:
    labels = [
        f"{m.claim.finding}\n{m.a.arm} vs {m.b.arm} ({report_rows.TITLES[m.claim.category]})"
        for m in measured
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(measured) + 1.8), sharey=True)
    y = np.arange(len(measured))[::-1]
    for ax, key, xlabel in (
        (axes[0], "bpb", "gold-BPB gain (bits per byte)"),
        (axes[1], "accuracy", "score gain (points)"),
    ):
        for yi, m in zip(y, measured):
            e = getattr(m, key)
            if e is None:
                continue
            if key == "accuracy":
                e = report_rows.point_effect(e)
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
        "Paired effects with 95% intervals over seeds and items (green: resolved with the paper, red: against)",
        fontsize=9,
    )
    report_rows.save(fig, path)
