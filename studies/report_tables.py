"""The report's tables: the header, Table 2, the relative change against the
baseline, each cooldown before and after, the continuous metrics and the
intervals of every score.
"""

from __future__ import annotations

import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proto import study_pb2  # noqa: E402
from studies import report_laws, report_rows  # noqa: E402
from studies import spec as spec_lib  # noqa: E402
from studies.plan import Plan  # noqa: E402
from studies.state import State  # noqa: E402


def header_section(study, plan: Plan, rows: list[report_rows.Row], state: State) -> list[str]:
    trained = sum(1 for p in plan.phases if state.phase(p.fingerprint) is not None)
    evaluated = sum(r.seeds for r in rows if r.owner)
    e = study.evaluation
    suite = f"suite `{e.suite}`" if not e.tasks else f"tasks {', '.join(e.tasks)}"
    lines = [
        f"# Study `{study.name}`",
        "",
        study.description.strip(),
        "",
        f"- Model preset `{study.preset}`; batch {study.global_batch_size} x {study.seq_len} "
        f"tokens; "
        + (
            f"{spec_lib.seeds(study)} seeds ({study.seed}..{study.seed + spec_lib.seeds(study) - 1}"
            "): every phase trains once per seed, scores are means over seeds."
            if spec_lib.seeds(study) > 1
            else f"seed {study.seed}."
        ),
        f"- Budgets at scale {study.scale:g}: the paper's 200B-token phase trains on "
        f"{report_rows.tok(int(math.ceil(spec_lib.PAPER_PRETRAIN_TOKENS * study.scale)))} tokens, its "
        f"40B cooldown on {report_rows.tok(int(math.ceil(spec_lib.PAPER_COOLDOWN_TOKENS * study.scale)))} "
        "(rounded up to whole batches).",
        f"- {len(study.arms)} arms, {len(rows)} arm phases, {len(plan.phases)} distinct "
        f"trainings ({trained} done); {evaluated} evaluated on {suite}"
        f"{f', at most {e.limit} examples per task' if e.limit else ''} (0-shot).",
        f"- Written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "Scores are percentages (accuracy, exact match, F1 or pass@1, averaged per "
        "category); a row marked *(= x)* is the same training as x.",
        "",
    ]
    return lines


def table2(rows: list[report_rows.Row]) -> list[str]:
    header = (
        ["Arm", "Phase"]
        + [t for _, t in report_rows.CATEGORIES]
        + ["Text tok.", "Code tok.", "Other tok."]
    )
    body = []
    for r in rows:
        phase = r.phase if r.owner else f"{r.phase} *(= {r.planned.refs[0]})*"
        scores = [
            report_rows.pct(r.scores[c][0]) if c in r.scores else "—"
            for c, _ in report_rows.CATEGORIES
        ]
        tokens = r.tokens or {}
        body.append(
            [r.arm, phase]
            + scores
            + [
                report_rows.tok(tokens.get("text")),
                report_rows.tok(tokens.get("code")),
                report_rows.tok(tokens.get("other")),
            ]
        )
    return (
        ["## Table 2: scores by arm and phase", ""]
        + report_rows.table(header, body)
        + [
            "",
            "Tokens count everything the model has seen along its chain (parents included); "
            "code tokens include markup, code-adjacent and synthetic code; other is the cooldown "
            "mix.",
            "",
        ]
    )


def relative_section(plan, rows, last_rows, baseline: report_rows.Row, figures: str) -> list[str]:
    lines = [f"## Relative change against the baseline `{baseline.arm}`", ""]
    body, data = [], []
    for r in last_rows:
        ref = report_rows.reference(plan, rows, r, baseline)
        if not r.scores or not ref.scores or r.planned is ref.planned:
            continue
        changes = [
            report_rows.relative(r.scores[c][0], ref.scores[c][0])
            if c in r.scores and c in ref.scores
            else math.nan
            for c, _ in report_rows.CATEGORIES
        ]
        body.append(
            [r.ref, ref.ref]
            + [
                report_rows.rel(v) + _paired_cell(r, ref, c)
                for v, (c, _) in zip(changes, report_rows.CATEGORIES)
            ]
        )
        data.append((r.arm, changes))
    if not body:
        return lines + ["Not evaluated yet.", ""]
    lines += report_rows.table(
        ["Arm (last phase)", "Against"] + [t for _, t in report_rows.CATEGORIES], body
    )
    lines += [
        "",
        "Each arm is compared with the baseline arm's phase of the same token budget "
        "(else its last phase). n/a: the baseline scores 0, so a relative change is "
        "undefined. In parentheses: the paired difference in points with its 95% "
        "interval over seeds and items; bold when the interval excludes zero.",
        "",
    ]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(data) + 1.5))
    cats = [0, 1, 3]  # NL reasoning, knowledge, code
    height = 0.8 / len(cats)
    y = np.arange(len(data))
    for k, ci in enumerate(cats):
        ax.barh(
            y + (k - 1) * height,
            [100 * np.nan_to_num(d[1][ci]) for d in data],
            height,
            label=report_rows.CATEGORIES[ci][1],
        )
    ax.set_yticks(y, [d[0] for d in data])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"relative change vs {baseline.arm} (%)")
    ax.legend(fontsize=8)
    report_rows.save(fig, os.path.join(figures, "relative_change.png"))
    return lines + ["![Relative change](figures/relative_change.png)", ""]


# ---------------------------------------------------------------- cooldown


def cooldown_section(study, plan: Plan, rows: list[report_rows.Row], figures: str) -> list[str]:
    groups: dict[str, list[report_rows.Row]] = {}
    for r in rows:
        if r.planned.kind == study_pb2.Phase.COOLDOWN and r.owner and r.planned.parent:
            groups.setdefault(r.planned.parent, []).append(r)
    if not groups:
        return []
    lines = ["## Cooldown", ""]
    owners = {r.planned.fingerprint: r for r in rows if r.owner}
    for parent_fp, children in groups.items():
        parent = owners[parent_fp]
        lines += [f"Starting from `{parent.ref}`:", ""]
        body = [
            [f"{parent.ref} (no cooldown)", "—"]
            + [
                report_rows.pct(parent.scores[c][0]) if c in parent.scores else "—"
                for c, _ in report_rows.CATEGORIES
            ]
        ]
        for c in children:
            body.append(
                [c.ref, report_rows.mixture_short(c.planned)]
                + [_against(c, parent, k) for k, _ in report_rows.CATEGORIES]
            )
        lines += report_rows.table(
            ["Model", "Cooldown mixture"] + [t for _, t in report_rows.CATEGORIES], body
        )
        lines += [
            "",
            "In square brackets: relative change against the model before its cooldown; in "
            "parentheses: the paired difference in points with its 95% interval over "
            "seeds and items (bold when it excludes zero).",
            "",
        ]
        models = [parent] + children
        if all(m.scores for m in models):
            cats = ["nl_reasoning", "world_knowledge", "code", "total"]
            fig, ax = plt.subplots(figsize=(7, 3.5))
            width = 0.8 / len(models)
            x = np.arange(len(cats))
            for i, m in enumerate(models):
                ax.bar(
                    x + (i - (len(models) - 1) / 2) * width,
                    [100 * m.scores[c][0] for c in cats],
                    width,
                    label=m.ref if m is not parent else f"{m.ref} (no cooldown)",
                )
            ax.set_xticks(x, [report_rows.TITLES[c] for c in cats])
            ax.set_ylabel("score (%)")
            ax.legend(fontsize=7)
            ax.set_title("Cooldown comparison")
            name = f"cooldown_{parent.arm}_{parent.phase}.png"
            report_rows.save(fig, os.path.join(figures, name))
            lines += [f"![Cooldown from {parent.ref}](figures/{name})", ""]
    return lines


def _against(row: report_rows.Row, before: report_rows.Row, cat: str) -> str:
    """A score with its relative change against `before` and the paired difference."""
    if cat not in row.scores:
        return "—"
    if cat not in before.scores:
        return report_rows.pct(row.scores[cat][0])
    change = report_rows.relative(row.scores[cat][0], before.scores[cat][0])
    return f"{report_rows.pct(row.scores[cat][0])} [{report_rows.rel(change)}]{_paired_cell(row, before, cat)}"


def _paired_cell(a: report_rows.Row, b: report_rows.Row, cat: str) -> str:
    """ " (d [lo, hi])": A's score minus B's in points, paired over seeds and items
    (not for the total, a mean of category means); bold when resolved."""
    gain = None if cat == "total" else report_rows.paired_gain(a, b, cat)
    if gain is None:
        return ""
    cell = report_rows.effect_text(report_rows.point_effect(gain), "{:+.1f}")
    return f" (**{cell}**)" if gain.resolved else f" ({cell})"


# ---------------------------------------------------------------- continuous metrics

# (category, metric in the aggregate's extra, column title, format)
CONTINUOUS_COLUMNS = [
    ("nl_reasoning", "bpb", "NL reasoning BPB", "{:.3f}"),
    ("nl_reasoning", "prob_correct", "NL reasoning p(gold)", "{:.3f}"),
    ("nl_reasoning", "margin", "NL reasoning margin", "{:+.3f}"),
    ("world_knowledge", "bpb", "World knowledge BPB", "{:.3f}"),
    ("code", "bpb", "Code BPB", "{:.3f}"),
]


def continuous_section(rows: list[report_rows.Row]) -> list[str]:
    evaluated = [r for r in rows if r.owner and r.seeds]
    if not evaluated:
        return []
    cells = {
        (r.ref, cat, name): r.metric(cat, name)
        for r in evaluated
        for cat, name, _, _ in CONTINUOUS_COLUMNS
    }
    columns = [c for c in CONTINUOUS_COLUMNS if any(cells[(r.ref, c[0], c[1])] for r in evaluated)]
    lines = ["## Continuous metrics", ""]
    if columns:
        body = [
            [r.ref]
            + [
                report_rows.effect_text(cells[(r.ref, cat, name)], fmt)
                if cells[(r.ref, cat, name)]
                else "—"
                for cat, name, _, fmt in columns
            ]
            for r in evaluated
        ]
        lines += report_rows.table(["Arm/phase"] + [title for _, _, title, _ in columns], body)
        lines += [
            "",
            "Means over each category's tasks of the per-example bits per byte of the gold "
            "answer (negative log-likelihood / UTF-8 bytes / ln 2; code: the canonical "
            "solution), the gold choice's probability normalised over the choices, and its "
            "margin over the best wrong choice, averaged over seeds, with 95% "
            "intervals over seeds and items (studies/compare.py). Lower BPB and higher p(gold) are better; unlike "
            "accuracy they move at sizes where every benchmark sits at chance.",
            "",
        ]
    sources = report_laws.heldout_sources(evaluated)
    if sources:
        body = []
        for r in evaluated:
            per_source = [r.metric("heldout", s) for s in sources]
            if any(per_source):
                body.append(
                    [r.ref]
                    + [report_rows.effect_text(m, "{:.3f}") if m else "—" for m in per_source]
                )
        lines += ["### Held-out bits per byte by source", ""]
        lines += report_rows.table(["Arm/phase"] + [f"`{s}`" for s in sources], body)
        lines += [
            "",
            "Bits per byte of each data source's held-out documents (chosen by content "
            "hash, never served by any mixture), Paloma-style: a model's loss on each "
            "domain, comparable across tokenizers, with a 95% interval over "
            "seeds and documents.",
            "",
        ]
    return lines


# ---------------------------------------------------------------- intervals, provenance


def intervals_section(rows: list[report_rows.Row]) -> list[str]:
    body = []
    for r in rows:
        if not r.scores or not r.owner:
            continue
        body.append(
            [r.ref]
            + [
                f"{report_rows.pct(r.scores[c][0])} [{report_rows.pct(r.scores[c][1])}, {report_rows.pct(r.scores[c][2])}]"
                if c in r.scores
                else "—"
                for c, _ in report_rows.CATEGORIES
            ]
        )
    if not body:
        return []
    return (
        ["## Bootstrap 95% intervals", ""]
        + report_rows.table(["Arm/phase"] + [t for _, t in report_rows.CATEGORIES], body)
        + [
            "",
            "Percentile bootstrap over examples (the eval service's; category scores "
            "resample every task together).",
            "",
        ]
    )
