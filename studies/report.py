"""The study report: Markdown tables and PNG figures from recorded results.

Everything here reads the plan and the state file (studies/state.py) only,
so a report can be rewritten at any time, from partial results too, without
a service. Sections, after the paper:

- Table 2: per arm and phase, NL reasoning, world knowledge, NL average,
  code, total, and the text / code tokens the model has seen in its chain;
- relative change of every arm against the baseline (text-only);
- code-proportion curves with a fitted response surface (studies/fit.py),
  its predicted best code fraction, and its error on a held-out arm;
- cooldown: each model before and after each cooldown;
- judge win rates against the baseline;
- continuous metrics (../shared/DESIGN.md "Small-scale signal"): per category the
  bits per byte of the gold answers, the probability of the correct choice
  normalised over the choices and its margin, and the bits per byte of every data
  source's held-out documents, each with its bootstrap interval;
- per-source training loss curves;
- the bootstrap 95% intervals of every score;
- what ran: run ids, steps, tokens, seconds, checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proto import study_pb2  # noqa: E402
from studies import fit as fit_lib  # noqa: E402
from studies import spec as spec_lib  # noqa: E402
from studies.plan import Plan, PlannedPhase  # noqa: E402
from studies.state import State  # noqa: E402

REPORT = "report.md"
FIGURES = "figures"

# (aggregate name in EvalResult.task without "aggregate/", column title)
CATEGORIES = [
    ("nl_reasoning", "NL reasoning"),
    ("world_knowledge", "World knowledge"),
    ("nl_average", "NL avg."),
    ("code", "Code"),
    ("total", "Total"),
]
TITLES = dict(CATEGORIES)
# Source kinds counted as code tokens (the paper's code-quality variants are
# all code data); "text" is text; the rest (the cooldown mix) is "other".
CODE_KINDS = {"code", "markup", "code_adjacent", "synthetic_code"}

Score = tuple  # (value, ci_low, ci_high)


@dataclasses.dataclass
class Row:
    """One "arm/phase" of the study with whatever is recorded for it."""

    ref: str
    arm: str
    phase: str
    planned: PlannedPhase
    record: dict | None  # the finished phase, or None
    scores: dict[str, Score]  # category -> score; empty when not evaluated
    tasks: list[dict]  # per-task EvalResults
    aggregates: dict[str, dict]  # category -> the aggregate EvalResult (extra, intervals)
    tokens: dict[str, int] | None  # text / code / other over the chain
    eval_seconds: float | None

    @property
    def owner(self) -> bool:
        return self.planned.refs[0] == self.ref


def collect(study: study_pb2.Study, plan: Plan, state: State) -> list[Row]:
    """A row per arm and phase, in the study's order."""
    kinds = state.sources()
    settings = spec_lib.eval_settings(study)
    rows = []
    for ref in spec_lib.all_refs(study):
        name = ref.name(study)
        planned = plan.by_ref[name]
        record = state.phase(planned.fingerprint)
        evaluation = state.evaluation(planned.fingerprint, settings)
        scores, tasks, aggregates = {}, [], {}
        if evaluation:
            for r in evaluation["results"]:
                if r["task"].startswith("aggregate/"):
                    scores[r["task"].removeprefix("aggregate/")] = (
                        r["value"],
                        r.get("ci_low", r["value"]),
                        r.get("ci_high", r["value"]),
                    )
                    aggregates[r["task"].removeprefix("aggregate/")] = r
                else:
                    tasks.append(r)
        rows.append(
            Row(
                ref=name,
                arm=study.arms[ref.arm].name,
                phase=spec_lib.phase(study, ref).name,
                planned=planned,
                record=record,
                scores=scores,
                tasks=tasks,
                aggregates=aggregates,
                tokens=_chain_tokens(plan, state, planned, kinds),
                eval_seconds=evaluation.get("eval_seconds") if evaluation else None,
            )
        )
    return rows


def _kind(source: str, kinds: dict[str, str]) -> str:
    kind = kinds.get(source, source)
    if kind == "text":
        return "text"
    return "code" if kind in CODE_KINDS else "other"


def _chain_tokens(plan: Plan, state: State, p: PlannedPhase, kinds) -> dict[str, int] | None:
    out = {"text": 0, "code": 0, "other": 0}
    for fp in p.chain + [p.fingerprint]:
        record = state.phase(fp)
        if record is None:
            return None
        for source, n in record.get("tokens_per_source", {}).items():
            out[_kind(source, kinds)] += int(n)
    return out


# ---------------------------------------------------------------- formatting


def _pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _rel(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _tok(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def relative(value: float, base: float) -> float:
    """(value - base) / base; NaN when the base is 0."""
    return (value - base) / base if base else math.nan


# ---------------------------------------------------------------- the report


def write(study: study_pb2.Study, plan: Plan, state: State, out_dir: str) -> str:
    """Writes report.md and figures/*.png under out_dir; returns report.md's path."""
    figures = os.path.join(out_dir, FIGURES)
    os.makedirs(figures, exist_ok=True)
    rows = collect(study, plan, state)
    by_ref = {r.ref: r for r in rows}
    last_rows = [by_ref[f"{arm.name}/{arm.phases[-1].name}"] for arm in study.arms]
    baseline = by_ref[_ref_name(study, study.baseline)] if study.baseline else None
    lines = _header(study, plan, rows)
    lines += _table2(rows)
    lines += _figure_scores(last_rows, figures)
    if baseline is not None:
        lines += _relative_section(plan, rows, last_rows, baseline, figures)
    surfaces = {sweep.name: sweep_surfaces(study, sweep, by_ref) for sweep in study.sweeps}
    for sweep in study.sweeps:
        lines += _sweep_section(study, sweep, surfaces[sweep.name], figures)
    lines += _cooldown_section(study, plan, rows, figures)
    lines += _headline_section(study, plan, rows, last_rows, baseline, surfaces)
    if study.HasField("judge"):
        lines += _win_rate_section(state, figures)
    lines += _continuous_section(rows)
    lines += _loss_section(plan, state, figures)
    lines += _intervals_section(rows)
    lines += _provenance_section(plan, state, rows)
    path = os.path.join(out_dir, REPORT)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path


def _ref_name(study, ref: str) -> str:
    return spec_lib.resolve(study, ref, "ref").name(study)


def _header(study, plan: Plan, rows: list[Row]) -> list[str]:
    trained = sum(1 for p in plan.phases if rows and _done(rows, p))
    evaluated = sum(1 for r in rows if r.scores and r.owner)
    e = study.evaluation
    suite = f"suite `{e.suite}`" if not e.tasks else f"tasks {', '.join(e.tasks)}"
    lines = [
        f"# Study `{study.name}`",
        "",
        study.description.strip(),
        "",
        f"- Model preset `{study.preset}`; batch {study.global_batch_size} x {study.seq_len} "
        f"tokens; seed {study.seed}.",
        f"- Budgets at scale {study.scale:g}: the paper's 200B-token phase trains on "
        f"{_tok(int(math.ceil(spec_lib.PAPER_PRETRAIN_TOKENS * study.scale)))} tokens, its "
        f"40B cooldown on {_tok(int(math.ceil(spec_lib.PAPER_COOLDOWN_TOKENS * study.scale)))} "
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


def _done(rows: list[Row], p: PlannedPhase) -> bool:
    return any(r.planned is p and r.record is not None for r in rows)


def _table2(rows: list[Row]) -> list[str]:
    header = (
        ["Arm", "Phase"] + [t for _, t in CATEGORIES] + ["Text tok.", "Code tok.", "Other tok."]
    )
    body = []
    for r in rows:
        phase = r.phase if r.owner else f"{r.phase} *(= {r.planned.refs[0]})*"
        scores = [_pct(r.scores[c][0]) if c in r.scores else "—" for c, _ in CATEGORIES]
        tokens = r.tokens or {}
        body.append(
            [r.arm, phase]
            + scores
            + [_tok(tokens.get("text")), _tok(tokens.get("code")), _tok(tokens.get("other"))]
        )
    return (
        ["## Table 2: scores by arm and phase", ""]
        + _table(header, body)
        + [
            "",
            "Tokens count everything the model has seen along its chain (parents included); "
            "code tokens include markup, code-adjacent and synthetic code; other is the cooldown "
            "mix.",
            "",
        ]
    )


def _figure_scores(last_rows: list[Row], figures: str) -> list[str]:
    rows = [r for r in last_rows if r.scores]
    if not rows:
        return []
    cats = [c for c, _ in CATEGORIES if c != "nl_average"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4))
    width = 0.8 / len(cats)
    x = np.arange(len(rows))
    for i, cat in enumerate(cats):
        values = np.array([r.scores.get(cat, (np.nan,) * 3) for r in rows], dtype=float)
        err = np.abs(np.stack([values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]]))
        ax.bar(
            x + (i - (len(cats) - 1) / 2) * width,
            100 * values[:, 0],
            width,
            yerr=100 * err,
            capsize=2,
            label=TITLES[cat],
        )
    ax.set_xticks(x, [r.arm for r in rows], rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_title("Final scores by arm (bootstrap 95% intervals)")
    ax.legend(fontsize=8)
    _save(fig, os.path.join(figures, "scores.png"))
    return ["![Final scores by arm](figures/scores.png)", ""]


def chain_paper_tokens(plan: Plan, p: PlannedPhase) -> float:
    """The paper tokens a model has seen: its phase and every ancestor."""
    return p.paper_tokens + sum(plan.get(fp).paper_tokens for fp in p.chain)


def reference(plan: Plan, rows: list[Row], row: Row, baseline: Row) -> Row:
    """What `row` is compared with: the baseline arm's phase with the same
    budget (a 200B sweep arm against text-only's 200B init, a 400B arm
    against its 400B continuation), else the baseline itself."""
    budget = chain_paper_tokens(plan, row.planned)
    for r in rows:
        if r.arm == baseline.arm and math.isclose(chain_paper_tokens(plan, r.planned), budget):
            return r
    return baseline


def _relative_section(plan, rows, last_rows, baseline: Row, figures: str) -> list[str]:
    lines = [f"## Relative change against the baseline `{baseline.arm}`", ""]
    body, data = [], []
    for r in last_rows:
        ref = reference(plan, rows, r, baseline)
        if not r.scores or not ref.scores or r.planned is ref.planned:
            continue
        changes = [
            relative(r.scores[c][0], ref.scores[c][0])
            if c in r.scores and c in ref.scores
            else math.nan
            for c, _ in CATEGORIES
        ]
        body.append([r.ref, ref.ref] + [_rel(v) for v in changes])
        data.append((r.arm, changes))
    if not body:
        return lines + ["Not evaluated yet.", ""]
    lines += _table(["Arm (last phase)", "Against"] + [t for _, t in CATEGORIES], body)
    lines += [
        "",
        "Each arm is compared with the baseline arm's phase of the same token budget "
        "(else its last phase). n/a: the baseline scores 0, so a relative change is "
        "undefined.",
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
            label=CATEGORIES[ci][1],
        )
    ax.set_yticks(y, [d[0] for d in data])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"relative change vs {baseline.arm} (%)")
    ax.legend(fontsize=8)
    _save(fig, os.path.join(figures, "relative_change.png"))
    return lines + ["![Relative change](figures/relative_change.png)", ""]


# ---------------------------------------------------------------- sweeps and fits


def sweep_surfaces(study, sweep, by_ref) -> tuple[list, dict]:
    """The sweep's points [(arm, fraction, row)] and per category the fitted
    Surface or the reason there is none."""
    points = []
    for arm, ref, fraction in spec_lib.sweep_points(study, sweep):
        points.append((arm, fraction, by_ref[ref.name(study)]))
    held = spec_lib.held_out_arm(study, sweep)
    surfaces = {}
    for cat, _ in CATEGORIES:
        data = [(arm, f, row.scores[cat][0]) for arm, f, row in points if cat in row.scores]
        if len(data) < len(points):
            surfaces[cat] = f"{len(points) - len(data)} arms not evaluated yet"
            continue
        if len({round(y, 12) for _, _, y in data}) == 1:
            surfaces[cat] = f"every arm scores {_pct(data[0][2])}: nothing to fit"
            continue
        try:
            surfaces[cat] = fit_lib.response_surface(data, held_out=held)
        except ValueError as e:
            surfaces[cat] = str(e)
    return points, surfaces


def _sweep_section(study, sweep, fitted, figures: str) -> list[str]:
    points, surfaces = fitted
    lines = [f"## Code proportion: sweep `{sweep.name}`", ""]
    header = ["Arm", "Code fraction"] + [t for _, t in CATEGORIES]
    body = [
        [arm, f"{f:.0%}"]
        + [_pct(row.scores[c][0]) if c in row.scores else "—" for c, _ in CATEGORIES]
        for arm, f, row in points
    ]
    lines += _table(header, body) + [""]
    held = spec_lib.held_out_arm(study, sweep)
    lines += [
        f"Response surface per category, fitted without `{held}` (held out); the form "
        "is chosen by leave-one-out error: "
        + "; ".join(f"{f.name}: {f.formula}" for f in fit_lib.FORMS.values())
        + ".",
        "",
    ]
    fit_rows = []
    for cat, title in CATEGORIES:
        s = surfaces[cat]
        if isinstance(s, str):
            fit_rows.append([title, "—", s, "—", "—", "—", "—"])
            continue
        h = s.held_out
        fit_rows.append(
            [
                title,
                s.fit.form,
                s.fit.describe(),
                "—" if math.isnan(s.loo_rmse[s.fit.form]) else _pct(s.loo_rmse[s.fit.form]),
                f"{s.best_fraction:.0%}",
                _pct(s.best_score),
                f"{_pct(h.actual)} vs {_pct(h.predicted)} ({100 * h.error:+.1f})" if h else "—",
            ]
        )
    lines += _table(
        [
            "Category",
            "Form",
            "Parameters",
            "LOO RMSE",
            "Best code fraction",
            "Predicted score",
            f"Held out `{held}`: actual vs fit (error)",
        ],
        fit_rows,
    )
    lines += [""]
    if any(row.scores for _, _, row in points):
        path = f"code_proportion_{sweep.name}.png"
        _sweep_figure(points, surfaces, held, sweep.name, os.path.join(figures, path))
        lines += [f"![Code proportion sweep {sweep.name}](figures/{path})", ""]
    return lines


def _sweep_figure(points, surfaces, held, name, path):
    cats = ["nl_reasoning", "world_knowledge", "code", "total"]
    fig, axes = plt.subplots(1, len(cats), figsize=(4 * len(cats), 3.4))
    grid = np.linspace(min(p[1] for p in points), max(p[1] for p in points), 200)
    for ax, cat in zip(axes, cats):
        xs, ys, lo, hi, is_held = [], [], [], [], []
        for arm, f, row in points:
            if cat in row.scores:
                v, a, b = row.scores[cat]
                xs.append(100 * f), ys.append(100 * v)
                lo.append(100 * (v - a)), hi.append(100 * (b - v))
                is_held.append(arm == held)
        xs, ys = np.array(xs), np.array(ys)
        mask = np.array(is_held, dtype=bool)
        if len(xs):
            ax.errorbar(
                xs, ys, yerr=np.abs(np.array([lo, hi])), fmt="none", ecolor="gray", capsize=2
            )
            ax.plot(xs[~mask], ys[~mask], "o", color="C0", label="fitted arms")
            if mask.any():
                ax.plot(xs[mask], ys[mask], "o", mfc="white", color="C3", label="held out")
        s = surfaces[cat]
        if not isinstance(s, str):
            ax.plot(
                100 * grid, 100 * s.fit.predict(grid), "--", color="C1", label=f"{s.fit.form} fit"
            )
            ax.axvline(
                100 * s.best_fraction,
                color="C2",
                linewidth=0.8,
                label=f"best {s.best_fraction:.0%}",
            )
        ax.set_title(TITLES[cat])
        ax.set_xlabel("code in the mixture (%)")
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Score vs code fraction ({name})")
    _save(fig, path)


# ---------------------------------------------------------------- cooldown


def _cooldown_section(study, plan: Plan, rows: list[Row], figures: str) -> list[str]:
    groups: dict[str, list[Row]] = {}
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
            + [_pct(parent.scores[c][0]) if c in parent.scores else "—" for c, _ in CATEGORIES]
        ]
        for c in children:
            body.append(
                [c.ref, _mixture_short(c.planned)] + [_against(c, parent, k) for k, _ in CATEGORIES]
            )
        lines += _table(["Model", "Cooldown mixture"] + [t for _, t in CATEGORIES], body)
        lines += ["", "In brackets: relative change against the model before its cooldown.", ""]
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
            ax.set_xticks(x, [TITLES[c] for c in cats])
            ax.set_ylabel("score (%)")
            ax.legend(fontsize=7)
            ax.set_title("Cooldown comparison")
            name = f"cooldown_{parent.arm}_{parent.phase}.png"
            _save(fig, os.path.join(figures, name))
            lines += [f"![Cooldown from {parent.ref}](figures/{name})", ""]
    return lines


def _against(row: Row, before: Row, cat: str) -> str:
    """A score with its relative change against `before` in brackets."""
    if cat not in row.scores:
        return "—"
    if cat not in before.scores:
        return _pct(row.scores[cat][0])
    change = relative(row.scores[cat][0], before.scores[cat][0])
    return f"{_pct(row.scores[cat][0])} ({_rel(change)})"


def _mixture_short(p: PlannedPhase) -> str:
    stage = p.mixture.stages[0]
    total = sum(w.weight for w in stage.weights)
    return ", ".join(f"{w.source} {w.weight / total:.0%}" for w in stage.weights if w.weight > 0)


def _code_share(p: PlannedPhase, kinds=None) -> float:
    stage = p.mixture.stages[0]
    total = sum(w.weight for w in stage.weights)
    return (
        sum(w.weight for w in stage.weights if (kinds or {}).get(w.source, w.source) in CODE_KINDS)
        / total
    )


# ---------------------------------------------------------------- headline claims


def _headline_section(
    study, plan, rows, last_rows, baseline: Row | None, surfaces_by_sweep
) -> list[str]:
    """The paper's headline findings next to what this study measured."""
    if baseline is None:
        return []
    body = []
    pairs = [(r, reference(plan, rows, r, baseline)) for r in last_rows]
    pairs = [(r, b) for r, b in pairs if r.scores and b.scores and r.planned is not b.planned]
    for cat, claim in (
        ("nl_reasoning", "code lifts NL reasoning: +8.2% relative"),
        ("world_knowledge", "code lifts world knowledge: +4.2% relative"),
        ("code", "code lifts code performance 12x"),
    ):
        scored = [(r, b) for r, b in pairs if cat in r.scores and cat in b.scores]
        if not scored:
            continue
        if len({round(x.scores[cat][0], 12) for pair in scored for x in pair}) == 1:
            body.append(
                [
                    claim,
                    f"every arm and the baseline score "
                    f"{_pct(scored[0][0].scores[cat][0])}: no difference to measure",
                ]
            )
            continue
        r, b = max(scored, key=lambda rb: rb[0].scores[cat][0] - rb[1].scores[cat][0])
        v, base = r.scores[cat][0], b.scores[cat][0]
        if cat == "code":
            measured = f"{v / base:.1f}x" if base else f"{_pct(v)} vs {_pct(base)} (baseline 0)"
        else:
            measured = _rel(relative(v, base))
        body.append([claim, f"best arm `{r.arm}` against `{b.ref}`: {measured}"])
    for sweep in study.sweeps:
        _, surfaces = surfaces_by_sweep[sweep.name]
        s = surfaces.get("nl_reasoning")
        if s is not None and not isinstance(s, str):
            body.append(
                [
                    "~25% code is the NL-reasoning sweet spot",
                    f"sweep `{sweep.name}` fit: best at {s.best_fraction:.0%} code",
                ]
            )
    by_parent: dict[str, list[Row]] = {}
    for r in rows:
        if r.planned.kind == study_pb2.Phase.COOLDOWN and r.owner and r.scores:
            by_parent.setdefault(r.planned.parent, []).append(r)
    for group in by_parent.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: _code_share(r.planned))
        lo, hi = group[0], group[-1]
        changes = ", ".join(
            f"{TITLES[c]} {_rel(relative(hi.scores[c][0], lo.scores[c][0]))}"
            for c in ("nl_reasoning", "world_knowledge", "code", "total")
            if c in hi.scores and c in lo.scores
        )
        body.append(
            ["code in the cooldown lifts everything", f"`{hi.arm}` against `{lo.arm}`: {changes}"]
        )
    if not body:
        return []
    return (
        ["## The paper's headline findings, measured here", ""]
        + _table(["Paper", "This study"], body)
        + [
            "",
            "At small scale most scores sit near chance: read directions with the intervals below.",
            "",
        ]
    )


# ---------------------------------------------------------------- win rates


def _win_rate_section(state: State, figures: str) -> list[str]:
    judged = sorted(state.data.get("judgements", {}).values(), key=lambda j: j["a"])
    lines = ["## Win rates (LLM-as-judge)", ""]
    if not judged:
        return lines + ["No comparisons judged yet.", ""]
    body = [
        [
            j["a"],
            j["b"],
            f"{100 * j['win_rate']:.1f}",
            f"[{100 * j['ci_low']:.1f}, {100 * j['ci_high']:.1f}]",
            f"{j['wins']}/{j['losses']}/{j['ties']}",
            str(j["num_prompts"]),
        ]
        for j in judged
    ]
    lines += _table(
        ["Model A", "Against B", "Win rate of A (%)", "95% interval", "W/L/T", "Prompts"], body
    )
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(judged) + 1.5))
    y = np.arange(len(judged))
    rates = np.array([100 * j["win_rate"] for j in judged])
    err = np.abs(
        np.array(
            [
                [100 * (j["win_rate"] - j["ci_low"]) for j in judged],
                [100 * (j["ci_high"] - j["win_rate"]) for j in judged],
            ]
        )
    )
    ax.barh(y, rates, xerr=err, capsize=2)
    ax.axvline(50, color="black", linewidth=0.8)
    ax.set_yticks(y, [j["a"] for j in judged])
    ax.set_xlabel(f"win rate against {judged[0]['b']} (%)")
    _save(fig, os.path.join(figures, "win_rates.png"))
    return lines + ["", "![Win rates](figures/win_rates.png)", ""]


# ---------------------------------------------------------------- loss curves


def _loss_section(plan: Plan, state: State, figures: str) -> list[str]:
    done = [(p, state.phase(p.fingerprint)) for p in plan.phases]
    done = [(p, r) for p, r in done if r is not None]
    if not done:
        return []
    lines = ["## Training loss per source", ""]
    body = []
    for p, r in done:
        losses = r.get("final_source_loss") or {}
        final = r.get("final_loss")
        body.append(
            [
                p.name,
                "—" if final is None else f"{final:.3f}",
                ", ".join(f"{k} {v:.3f}" for k, v in sorted(losses.items())),
            ]
        )
    lines += _table(["Phase", "Final loss", "Final loss per source (nats)"], body) + [""]
    cols = min(4, len(done))
    rows_n = math.ceil(len(done) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    colors: dict[str, str] = {}
    for ax, (p, r) in zip(axes.flat, done):
        offset = sum(plan.get(fp).tokens for fp in p.chain)
        curves = state.read_curves(r["run_id"])
        sources = sorted({s for c in curves for s in c.get("source_loss", {})})
        for s in sources:
            pts = [
                (offset + c["tokens_seen"], c["source_loss"][s])
                for c in curves
                if s in c.get("source_loss", {})
            ]
            color = colors.setdefault(s, f"C{len(colors) % 10}")
            ax.plot(
                [x / 1e6 for x, _ in pts], [y for _, y in pts], color=color, label=s, linewidth=1
            )
        ax.set_title(p.name, fontsize=8)
        ax.set_xlabel("tokens in chain (M)", fontsize=7)
        ax.set_ylabel("loss (nats)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(done) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=s) for s, c in colors.items()]
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _save(fig, os.path.join(figures, "loss_curves.png"), tight=False)
    return lines + ["![Per-source training loss](figures/loss_curves.png)", ""]


# ---------------------------------------------------------------- continuous metrics

# (category, metric in the aggregate's extra, column title, format)
CONTINUOUS_COLUMNS = [
    ("nl_reasoning", "bpb", "NL reasoning BPB", "{:.3f}"),
    ("nl_reasoning", "prob_correct", "NL reasoning p(gold)", "{:.3f}"),
    ("nl_reasoning", "margin", "NL reasoning margin", "{:+.3f}"),
    ("world_knowledge", "bpb", "World knowledge BPB", "{:.3f}"),
    ("code", "bpb", "Code BPB", "{:.3f}"),
]
HELDOUT_TASK = "heldout_bpb"  # services/eval's per-source held-out bits per byte


def _metric_cell(result: dict | None, name: str, fmt: str) -> str:
    """ "v [lo, hi]" of a metric in an EvalResult dict's extra and intervals."""
    if not result or name not in result.get("extra", {}):
        return "—"
    value = result["extra"][name]
    interval = result.get("intervals", {}).get(name)
    if interval is None:
        return fmt.format(value)
    # Proto3 JSON leaves out zeros.
    lo, hi = interval.get("low", 0.0), interval.get("high", 0.0)
    return f"{fmt.format(value)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _continuous_section(rows: list[Row]) -> list[str]:
    evaluated = [r for r in rows if r.owner and r.aggregates]
    if not evaluated:
        return []
    columns = [
        c
        for c in CONTINUOUS_COLUMNS
        if any(c[1] in r.aggregates.get(c[0], {}).get("extra", {}) for r in evaluated)
    ]
    lines = ["## Continuous metrics", ""]
    if columns:
        body = [
            [r.ref]
            + [_metric_cell(r.aggregates.get(cat), name, fmt) for cat, name, _, fmt in columns]
            for r in evaluated
        ]
        lines += _table(["Arm/phase"] + [title for _, _, title, _ in columns], body)
        lines += [
            "",
            "Means over each category's tasks of the per-example bits per byte of the gold "
            "answer (negative log-likelihood / UTF-8 bytes / ln 2; code: the canonical "
            "solution), the gold choice's probability normalised over the choices, and its "
            "margin over the best wrong choice, with bootstrap 95% intervals. Lower BPB and "
            "higher p(gold) are better; unlike accuracy they move at sizes where every "
            "benchmark sits at chance.",
            "",
        ]
    heldout = {
        r.ref: next((t for t in r.tasks if t["task"] == HELDOUT_TASK), None) for r in evaluated
    }
    sources = sorted({s for t in heldout.values() if t for s in t.get("intervals", {})})
    if sources:
        body = [
            [ref] + [_metric_cell(t, s, "{:.3f}") for s in sources]
            for ref, t in heldout.items()
            if t
        ]
        lines += ["### Held-out bits per byte by source", ""]
        lines += _table(["Arm/phase"] + [f"`{s}`" for s in sources], body)
        lines += [
            "",
            "Bits per byte of each data source's held-out documents (chosen by content "
            "hash, never served by any mixture), Paloma-style: a model's loss on each "
            "domain, comparable across tokenizers, with a bootstrap 95% interval over "
            "documents.",
            "",
        ]
    return lines


# ---------------------------------------------------------------- intervals, provenance


def _intervals_section(rows: list[Row]) -> list[str]:
    body = []
    for r in rows:
        if not r.scores or not r.owner:
            continue
        body.append(
            [r.ref]
            + [
                f"{_pct(r.scores[c][0])} [{_pct(r.scores[c][1])}, {_pct(r.scores[c][2])}]"
                if c in r.scores
                else "—"
                for c, _ in CATEGORIES
            ]
        )
    if not body:
        return []
    return (
        ["## Bootstrap 95% intervals", ""]
        + _table(["Arm/phase"] + [t for _, t in CATEGORIES], body)
        + [
            "",
            "Percentile bootstrap over examples (the eval service's; category scores "
            "resample every task together).",
            "",
        ]
    )


def _provenance_section(plan: Plan, state: State, rows: list[Row]) -> list[str]:
    evals = {r.planned.fingerprint: r.eval_seconds for r in rows}
    body, train_s, eval_s = [], 0.0, 0.0
    for p in plan.phases:
        r = state.phase(p.fingerprint)
        es = evals.get(p.fingerprint)
        train_s += (r or {}).get("train_seconds", 0.0)
        eval_s += es or 0.0
        body.append(
            [
                p.name,
                f"`{p.run_id}`",
                f"{p.steps:,}",
                f"{p.tokens:,}",
                f"{r['train_seconds']:.0f}" if r else "—",
                f"{es:.0f}" if es is not None else "—",
                f"`{r['checkpoint_uri']}`" if r else "not trained",
            ]
        )
    return (
        ["## What ran", ""]
        + _table(
            ["Phase", "Trainer run", "Steps", "Tokens", "Train s", "Eval s", "Final checkpoint"],
            body,
        )
        + [
            "",
            f"Training {train_s / 60:.1f} min, evaluation {eval_s / 60:.1f} min "
            "(evaluation overlaps the next training).",
            "",
        ]
    )


def _save(fig, path: str, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
