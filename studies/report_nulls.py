"""A/A null comparisons: each twin arm (Arm.twin_of) against its original, phase by
phase, on every metric, as if they were two arms; per metric, how many of these
comparisons a 95% interval calls resolved (studies/findings.py `null_rate`).

Twin and original differ only in their seeds, so every resolved comparison is a
false positive; the rate is the one the study's verdicts run at, measured on its
own seeds and items rather than assumed.
"""

from __future__ import annotations

from studies import report_laws, report_rows, report_verdicts, spec_verdicts
from studies import findings as findings_lib


def null_pairs(study, by_ref) -> list[tuple[report_rows.Row, report_rows.Row]]:
    """(twin, original) rows of every phase of every twin arm."""
    out = []
    for twin, original in spec_verdicts.twins(study):
        arm = next(a for a in study.arms if a.name == twin)
        out += [(by_ref[f"{twin}/{p.name}"], by_ref[f"{original}/{p.name}"]) for p in arm.phases]
    return out


def null_rates(study, by_ref) -> list[tuple[str, int, int]]:
    """(metric, k, n) for every metric some null comparison measures: k of its n
    comparisons resolved at 95%."""
    pairs = null_pairs(study, by_ref)
    metrics = [
        (c, m, f"{report_rows.TITLES[c]} {report_verdicts.METRIC_NAMES[m]}")
        for c in findings_lib.CATEGORIES
        for m in findings_lib.METRICS
    ]
    sources = report_laws.heldout_sources([row for pair in pairs for row in pair])
    metrics += [("heldout", s, f"held-out `{s}` BPB") for s in sources]
    out = []
    for category, metric, title in metrics:
        gains = [report_rows.paired_gain(t, o, category, metric) for t, o in pairs]
        k, n = findings_lib.null_rate(gains)
        if n:
            out.append((title, k, n))
    return out


def nulls_section(study, by_ref) -> list[str]:
    pairs = null_pairs(study, by_ref)
    if not pairs:
        return []
    rates = null_rates(study, by_ref)
    lines = ["### A/A null comparisons", ""]
    names = ", ".join(f"`{t.ref}` vs `{o.ref}`" for t, o in pairs)
    if not rates:
        return lines + [f"Twins not evaluated yet ({names}).", ""]
    k, n = sum(r[1] for r in rates), sum(r[2] for r in rates)
    body = [[title, f"{k_} of {n_}", f"{k_ / n_:.0%}"] for title, k_, n_ in rates]
    body.append(["**every metric**", f"**{k} of {n}**", f"**{k / n:.0%}**"])
    lines += report_rows.table(["Metric", "Called resolved", "Rate"], body)
    lines += [
        "",
        f"Each twin arm against its original ({names}): the same mixtures and phases on "
        "other seeds, compared as two arms on every metric with the paired 95% interval "
        "of the findings' secondary metrics. Every comparison called resolved is a false "
        "positive, so the rate should sit near 5%; a rate well above it says the "
        "intervals are too narrow for this study's seed noise. The primary verdicts run "
        "at Holm-adjusted levels above 95%.",
        "",
    ]
    return lines
