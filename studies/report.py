"""The study report: Markdown tables and PNG figures from recorded results.

Everything here reads the plan and the state file (studies/state.py) only,
so a report can be rewritten at any time, from partial results too, without
a service. With several seeds (Study.seeds) every score is the mean over the
seeds, its interval a bootstrap over seeds and eval items together, and every
comparison a paired difference (studies/compare.py). Sections, after the paper:

- the paper's findings: each claim's paired gain on the continuous metric and
  on accuracy, with its interval and a verdict (studies/findings.py), and a
  figure of the effects;
- Table 2: per arm and phase, NL reasoning, world knowledge, NL average,
  code, total, and the text / code tokens the model has seen in its chain;
- relative change of every arm against the baseline (text-only);
- code proportion: each sweep's scores, and a mixture law fitted to held-out
  bits per byte per source and to the gold-answer BPB of NL reasoning and code
  (studies/fit.py), validated on held-out arms and random mixtures;
- cooldown: each model before and after each cooldown;
- judge win rates against the baseline (the first seed's models);
- continuous metrics (docs/evaluation.md "Small-scale signal"): per category the
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

from proto import data_pb2, eval_pb2, spelling, study_pb2  # noqa: E402
from studies import compare  # noqa: E402
from studies import findings as findings_lib  # noqa: E402
from studies import fit as fit_lib  # noqa: E402
from studies import spec as spec_lib  # noqa: E402
from studies.plan import Plan, PlannedPhase  # noqa: E402
from studies.state import State  # noqa: E402

REPORT = "report.md"
FIGURES = "figures"


def _aggregate(value: int) -> str:
    return spelling.spelled(eval_pb2.Aggregate, value)


def _kind_name(value: int) -> str:
    return spelling.spelled(data_pb2.SourceKind, value)


A = eval_pb2.Aggregate
# (aggregate name in EvalResult.task without "aggregate/", column title)
CATEGORIES = [
    (_aggregate(A.AGGREGATE_NL_REASONING), "NL reasoning"),
    (_aggregate(A.AGGREGATE_WORLD_KNOWLEDGE), "World knowledge"),
    (_aggregate(A.AGGREGATE_NL_AVERAGE), "NL avg."),
    (_aggregate(A.AGGREGATE_CODE), "Code"),
    (_aggregate(A.AGGREGATE_TOTAL), "Total"),
]
TITLES = dict(CATEGORIES)
# Source kinds counted as code tokens (the paper's code-quality variants are
# all code data); "text" is text; the rest (the cooldown mix) is "other".
K = data_pb2.SourceKind
TEXT_KIND = _kind_name(K.SOURCE_KIND_TEXT)
CODE_KINDS = {
    _kind_name(k)
    for k in (
        K.SOURCE_KIND_CODE,
        K.SOURCE_KIND_MARKUP,
        K.SOURCE_KIND_CODE_ADJACENT,
        K.SOURCE_KIND_SYNTHETIC_CODE,
    )
}

Score = tuple  # (value, ci_low, ci_high)


@dataclasses.dataclass
class Row:
    """One "arm/phase" of the study with whatever is recorded for it."""

    ref: str
    arm: str
    phase: str
    planned: PlannedPhase  # the first seed's training
    record: dict | None  # the first seed's finished phase, or None
    evaluations: list[dict | None]  # per seed: the evaluation record, or None
    scores: dict[str, Score]  # category -> mean over seeds; empty when not evaluated
    tokens: dict[str, int] | None  # text / code / other over the chain (first seed)
    # (category, metric) -> its estimate: each is bootstrapped once per report.
    _metrics: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def owner(self) -> bool:
        return self.planned.refs[0] == self.ref

    @property
    def seeds(self) -> int:
        """Seeds evaluated."""
        return sum(e is not None for e in self.evaluations)

    def metric(self, category: str, metric: str = compare.HEADLINE) -> compare.Effect | None:
        """A category metric (or category "heldout" and a source) over the evaluated
        seeds and items; None when nothing carries it."""
        key = (category, metric)
        if key not in self._metrics:
            done = [e for e in self.evaluations if e is not None]
            self._metrics[key] = compare.estimate(compare.units(done, category, metric))
        return self._metrics[key]


def collect(study: study_pb2.Study, plan: Plan, state: State) -> list[Row]:
    """A row per arm and phase, in the study's order."""
    kinds = state.sources()
    settings = spec_lib.eval_settings(study)
    rows = []
    for ref in spec_lib.all_refs(study):
        name = ref.name(study)
        replicates = plan.replicates[name]
        planned = replicates[0]
        evaluations = [state.evaluation(p.fingerprint, settings) for p in replicates]
        row = Row(
            ref=name,
            arm=study.arms[ref.arm].name,
            phase=spec_lib.phase(study, ref).name,
            planned=planned,
            record=state.phase(planned.fingerprint),
            evaluations=evaluations,
            scores={},
            tokens=_chain_tokens(plan, state, planned, kinds),
        )
        row.scores = _scores(row)
        rows.append(row)
    return rows


def _scores(row: Row) -> dict[str, Score]:
    """Category -> (mean over the evaluated seeds, interval). One seed: the eval
    service's interval; several: a bootstrap over seeds and items (none for the
    total, a mean of category means)."""
    done = [e for e in row.evaluations if e is not None]
    per_category: dict[str, list[dict]] = {}
    for e in done:
        for r in e["results"]:
            if r["task"].startswith(compare.AGGREGATE_PREFIX):
                name = r["task"].removeprefix(compare.AGGREGATE_PREFIX)
                per_category.setdefault(name, []).append(r)
    out = {}
    for cat, results in per_category.items():
        if len(results) != len(done):
            continue
        value = float(np.mean([r["value"] for r in results]))
        if len(done) == 1:
            r = results[0]
            out[cat] = (value, r.get("ci_low", value), r.get("ci_high", value))
            continue
        est = None if cat == "total" else row.metric(cat)
        out[cat] = (value, est.low, est.high) if est else (value, math.nan, math.nan)
    return out


def paired_gain(
    a: Row, b: Row, category: str, metric: str = compare.HEADLINE, *, lower_better=False
):
    """A's gain over B (A - B; B - A for a loss), paired over the seeds both have
    evaluated and the items both scored; None when nothing pairs."""
    seeds = [
        i
        for i, (x, y) in enumerate(zip(a.evaluations, b.evaluations))
        if x is not None and y is not None
    ]
    if not seeds:
        return None
    ua = compare.units([a.evaluations[i] for i in seeds], category, metric)
    ub = compare.units([b.evaluations[i] for i in seeds], category, metric)
    names = {u.name for u in ua} & {u.name for u in ub}
    ua = [u for u in ua if u.name in names]
    ub = [u for u in ub if u.name in names]
    if not ua:
        return None
    return compare.paired(ub, ua) if lower_better else compare.paired(ua, ub)


def _kind(source: str, kinds: dict[str, str]) -> str:
    kind = kinds.get(source, source)
    if kind == TEXT_KIND:
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
    laws = {sweep.name: sweep_laws(study, sweep, by_ref) for sweep in study.sweeps}
    lines = _header(study, plan, rows, state)
    lines += _findings_section(study, by_ref, laws, figures)
    lines += _table2(rows)
    lines += _figure_scores(last_rows, figures)
    if baseline is not None:
        lines += _relative_section(plan, rows, last_rows, baseline, figures)
    for sweep in study.sweeps:
        lines += _sweep_section(study, sweep, laws[sweep.name], figures)
    lines += _cooldown_section(study, plan, rows, figures)
    if study.HasField("judge"):
        lines += _win_rate_section(state, figures)
    lines += _continuous_section(rows)
    lines += _loss_section(plan, state, figures)
    lines += _intervals_section(rows)
    lines += _provenance_section(study, plan, state)
    path = os.path.join(out_dir, REPORT)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path


def _ref_name(study, ref: str) -> str:
    return spec_lib.resolve(study, ref, "ref").name(study)


def _header(study, plan: Plan, rows: list[Row], state: State) -> list[str]:
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
        body.append(
            [r.ref, ref.ref]
            + [_rel(v) + _paired_cell(r, ref, c) for v, (c, _) in zip(changes, CATEGORIES)]
        )
        data.append((r.arm, changes))
    if not body:
        return lines + ["Not evaluated yet.", ""]
    lines += _table(["Arm (last phase)", "Against"] + [t for _, t in CATEGORIES], body)
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
            label=CATEGORIES[ci][1],
        )
    ax.set_yticks(y, [d[0] for d in data])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"relative change vs {baseline.arm} (%)")
    ax.legend(fontsize=8)
    _save(fig, os.path.join(figures, "relative_change.png"))
    return lines + ["![Relative change](figures/relative_change.png)", ""]


# ---------------------------------------------------------------- sweeps and the mixture law

# The sweep's continuous targets besides every source's held-out BPB: (category,
# metric, title). Accuracy is tabled, not fitted: at small scale it sits at chance
# and a fit to it follows noise.
LAW_CATEGORY_METRICS = [
    ("nl_reasoning", "bpb", "NL reasoning gold BPB"),
    ("code", "bpb", "Code gold BPB"),
]


@dataclasses.dataclass
class SweepLaw:
    """A sweep's points and, per target, the fitted law or why there is none."""

    points: list[tuple[str, float, Row]]  # (arm, code fraction, row), by fraction
    held_out: list[str]  # arms left out of every fit
    targets: list[tuple[str, str, str]]  # (category, metric, title)
    laws: dict[tuple[str, str], fit_lib.Surface | str]


def _heldout_sources(rows: list[Row]) -> list[str]:
    sources = set()
    for row in rows:
        for e in row.evaluations:
            for r in (e or {}).get("results", []):
                if r["task"] == compare.HELDOUT_TASK:
                    sources |= {
                        k.removesuffix("/nll")
                        for k in r.get("per_example", {})
                        if k.endswith("/nll")
                    }
    return sorted(sources)


def sweep_laws(study, sweep, by_ref) -> SweepLaw:
    points = [
        (arm, fraction, by_ref[ref.name(study)])
        for arm, ref, fraction in spec_lib.sweep_points(study, sweep)
    ]
    held = spec_lib.held_out_arms(study, sweep)
    targets = [
        ("heldout", s, f"held-out `{s}` BPB") for s in _heldout_sources([p[2] for p in points])
    ]
    targets += LAW_CATEGORY_METRICS
    laws: dict[tuple[str, str], fit_lib.Surface | str] = {}
    for cat, metric, _ in targets:
        data = []
        for arm, f, row in points:
            m = row.metric(cat, metric)
            if m is not None:
                data.append((arm, f, m.value))
        if len(data) < len(points):
            laws[(cat, metric)] = f"{len(points) - len(data)} arms not evaluated yet"
            continue
        try:
            laws[(cat, metric)] = fit_lib.response_surface(
                data, held_out=held, forms=("exp", "quadratic"), minimise=True
            )
        except ValueError as e:
            laws[(cat, metric)] = str(e)
    return SweepLaw(points, held, targets, laws)


def _sweep_section(study, sweep, law: SweepLaw, figures: str) -> list[str]:
    lines = [f"## Code proportion: sweep `{sweep.name}`", ""]
    held = set(law.held_out)
    header = ["Arm", "Code fraction", "In the fit"] + [t for _, t in CATEGORIES]
    header += [title for _, _, title in law.targets]
    body = []
    for arm, f, row in law.points:
        cells = [arm, f"{f:.1%}", "held out" if arm in held else "yes"]
        cells += [_pct(row.scores[c][0]) if c in row.scores else "—" for c, _ in CATEGORIES]
        for cat, metric, _ in law.targets:
            m = row.metric(cat, metric)
            cells.append(_effect(m, "{:.3f}") if m else "—")
        body.append(cells)
    lines += _table(header, body) + [""]
    lines += [
        "Accuracy columns are percentages; BPB columns are bits per byte with a 95% "
        "interval over seeds and items (lower is better).",
        "",
    ]
    lines += _sweep_effects(law)
    lines += [
        "### Mixture law",
        "",
        f"Each continuous target is fitted as a function of the code fraction r on the "
        f"arms in the fit, in the data-mixing-law form c + k*exp(t*r) (Ye et al., 2024) or "
        f"a quadratic, whichever predicts the fitted arms better left-one-out, then "
        f"validated on arms it never saw: {', '.join(f'`{h}`' for h in law.held_out)}. "
        "Spearman ρ ranks the held-out arms by predicted against actual value (over "
        "three arms it can only be ±1 or ±0.5: read it with the held-out errors).",
        "",
    ]
    fit_rows = []
    for cat, metric, title in law.targets:
        s = law.laws[(cat, metric)]
        if isinstance(s, str):
            fit_rows.append([title, "—", s, "—", "—", "—", "—", "—"])
            continue
        fit_rows.append(
            [
                title,
                s.fit.form,
                s.fit.describe(),
                "—" if math.isnan(s.loo_rmse[s.fit.form]) else f"{s.loo_rmse[s.fit.form]:.3f}",
                f"{s.held_out_rmse:.3f}",
                "—" if math.isnan(s.spearman) else f"{s.spearman:+.2f} ({len(s.validation)})",
                f"{s.best_fraction:.0%}",
                "; ".join(f"`{h.name}` {h.actual:.3f} vs {h.predicted:.3f}" for h in s.validation),
            ]
        )
    lines += _table(
        [
            "Target",
            "Form",
            "Parameters",
            "LOO RMSE",
            "Held-out RMSE",
            "Spearman ρ (n)",
            "Lowest at",
            "Held out: actual vs predicted",
        ],
        fit_rows,
    )
    lines += [""]
    if any(row.seeds for _, _, row in law.points):
        path = f"code_proportion_{sweep.name}.png"
        _law_figure(law, sweep.name, os.path.join(figures, path))
        lines += [f"![Code proportion sweep {sweep.name}](figures/{path})", ""]
    return lines


def _sweep_effects(law: SweepLaw) -> list[str]:
    """Every sweep arm against the lowest-code one on each continuous target: the
    code proportion's effect, paired over seeds and items."""
    (base_arm, _, base), rest = law.points[0], law.points[1:]
    body = []
    for arm, f, row in rest:
        cells = []
        for cat, metric, _ in law.targets:
            gain = paired_gain(row, base, cat, metric, lower_better=True)
            cells.append("—" if gain is None else _bold(_effect(gain, "{:+.3f}"), gain.resolved))
        body.append([arm, f"{f:.1%}"] + cells)
    if not any(c != "—" for r in body for c in r[2:]):
        return []
    return (
        [
            f"Against `{base_arm}`: the drop in bits per byte (positive: lower than `{base_arm}`'s), paired over seeds and items; bold where the 95% interval excludes zero.",
            "",
        ]
        + _table(["Arm", "Code fraction"] + [title for _, _, title in law.targets], body)
        + [""]
    )


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def _err(e: compare.Effect) -> list[list[float]]:
    """Matplotlib's error bar lengths of an interval (never negative: a
    degenerate interval's quantile may sit a rounding error inside its mean)."""
    return [[max(0.0, e.value - e.low)], [max(0.0, e.high - e.value)]]


def _effect(e: compare.Effect, fmt: str) -> str:
    return f"{fmt.format(e.value)} [{fmt.format(e.low)}, {fmt.format(e.high)}]"


def _law_figure(law: SweepLaw, name: str, path: str) -> None:
    targets = law.targets
    cols = min(4, len(targets))
    rows_n = math.ceil(len(targets) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.3 * rows_n), squeeze=False)
    fractions = [f for _, f, _ in law.points]
    grid = np.linspace(min(fractions), max(fractions), 200)
    held = set(law.held_out)
    for ax, (cat, metric, title) in zip(axes.flat, targets):
        for arm, f, row in law.points:
            m = row.metric(cat, metric)
            if m is None:
                continue
            style = dict(mfc="white", color="C3") if arm in held else dict(color="C0")
            ax.errorbar(
                [100 * f],
                [m.value],
                yerr=_err(m),
                fmt="o",
                capsize=2,
                **style,
            )
        s = law.laws[(cat, metric)]
        if not isinstance(s, str):
            ax.plot(100 * grid, s.fit.predict(grid), "--", color="C1", label=f"{s.fit.form} law")
            ax.legend(fontsize=7)
        ax.set_title(title.replace("`", ""), fontsize=9)
        ax.set_xlabel("code in the mixture (%)", fontsize=8)
        ax.set_ylabel("bits per byte", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(targets) :]:
        ax.axis("off")
    fig.suptitle(f"Mixture law over sweep {name} (filled: fitted, open red: held out)")
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
            ax.set_xticks(x, [TITLES[c] for c in cats])
            ax.set_ylabel("score (%)")
            ax.legend(fontsize=7)
            ax.set_title("Cooldown comparison")
            name = f"cooldown_{parent.arm}_{parent.phase}.png"
            _save(fig, os.path.join(figures, name))
            lines += [f"![Cooldown from {parent.ref}](figures/{name})", ""]
    return lines


def _against(row: Row, before: Row, cat: str) -> str:
    """A score with its relative change against `before` and the paired difference."""
    if cat not in row.scores:
        return "—"
    if cat not in before.scores:
        return _pct(row.scores[cat][0])
    change = relative(row.scores[cat][0], before.scores[cat][0])
    return f"{_pct(row.scores[cat][0])} [{_rel(change)}]{_paired_cell(row, before, cat)}"


def _paired_cell(a: Row, b: Row, cat: str) -> str:
    """ " (d [lo, hi])": A's score minus B's in points, paired over seeds and items
    (not for the total, a mean of category means); bold when resolved."""
    gain = None if cat == "total" else paired_gain(a, b, cat)
    if gain is None:
        return ""
    cell = _effect(_points(gain), "{:+.1f}")
    return f" (**{cell}**)" if gain.resolved else f" ({cell})"


def _mixture_short(p: PlannedPhase) -> str:
    stage = p.mixture.stages[0]
    total = sum(w.weight for w in stage.weights)
    return ", ".join(f"{w.source} {w.weight / total:.0%}" for w in stage.weights if w.weight > 0)


# ---------------------------------------------------------------- the paper's findings


@dataclasses.dataclass
class Measured:
    """One claim of studies/findings.py, measured on this study's rows."""

    claim: findings_lib.Claim
    a: Row
    b: Row
    bpb: compare.Effect | None  # gain on gold BPB: BPB(B) - BPB(A)
    accuracy: compare.Effect | None  # gain on the category score: A - B

    @property
    def verdict(self) -> str:
        return findings_lib.verdict(self.bpb, self.accuracy)


def measure_findings(study, by_ref: dict[str, Row]) -> list[Measured]:
    """Every claim whose arms the study has, measured where both are evaluated."""
    arm_names = {a.name for a in study.arms}
    out = []
    for claim in findings_lib.CLAIMS:
        if claim.a.split("/")[0] not in arm_names or claim.b.split("/")[0] not in arm_names:
            continue
        a, b = by_ref[_ref_name(study, claim.a)], by_ref[_ref_name(study, claim.b)]
        out.append(
            Measured(
                claim,
                a,
                b,
                paired_gain(a, b, claim.category, "bpb", lower_better=True),
                paired_gain(a, b, claim.category),
            )
        )
    return out


def _findings_section(study, by_ref, laws: dict[str, SweepLaw], figures: str) -> list[str]:
    measured = measure_findings(study, by_ref)
    if not measured:
        return []
    lines = ["## The paper's findings, measured here", ""]
    body = []
    for m in measured:
        rel = ""
        if m.claim.category in m.a.scores and m.claim.category in m.b.scores:
            rel = f" ({_rel(relative(m.a.scores[m.claim.category][0], m.b.scores[m.claim.category][0]))})"
        body.append(
            [
                m.claim.finding,
                m.claim.paper,
                f"`{m.a.ref}` vs `{m.b.ref}`: {TITLES[m.claim.category]}",
                _effect(m.bpb, "{:+.4f}") if m.bpb else "—",
                (_effect(_points(m.accuracy), "{:+.1f}") + rel) if m.accuracy else "—",
                str(m.bpb.seeds if m.bpb else m.accuracy.seeds if m.accuracy else 0),
                m.verdict
                if m.verdict in (findings_lib.UNRESOLVED, findings_lib.PENDING)
                else f"**{m.verdict}**",
            ]
        )
    lines += _table(
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


def _points(e: compare.Effect) -> compare.Effect:
    """A score effect in percentage points."""
    return dataclasses.replace(e, value=100 * e.value, low=100 * e.low, high=100 * e.high)


def _effects_figure(measured: list[Measured], path: str) -> None:
    labels = [
        f"{m.claim.finding}\n{m.a.arm} vs {m.b.arm} ({TITLES[m.claim.category]})" for m in measured
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
                e = _points(e)
            color = {1: "C2", -1: "C3", 0: "gray"}[e.sign]
            ax.errorbar(
                [e.value],
                [yi],
                xerr=_err(e),
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
    _save(fig, path)


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
    done = [(p, state.phase(p.fingerprint)) for p in plan.phases if p.replicate == 0]
    done = [(p, r) for p, r in done if r is not None]
    if not done:
        return []
    lines = ["## Training loss per source", ""]
    if spec_lib.seeds(plan.study) > 1:
        lines += [f"The first seed ({plan.study.seed}) of every training.", ""]
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


def _continuous_section(rows: list[Row]) -> list[str]:
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
                _effect(cells[(r.ref, cat, name)], fmt) if cells[(r.ref, cat, name)] else "—"
                for cat, name, _, fmt in columns
            ]
            for r in evaluated
        ]
        lines += _table(["Arm/phase"] + [title for _, _, title, _ in columns], body)
        lines += [
            "",
            "Means over each category's tasks of the per-example bits per byte of the gold "
            "answer (negative log-likelihood / UTF-8 bytes / ln 2; code: the canonical "
            "solution), the gold choice's probability normalised over the choices, and its "
            "margin over the best wrong choice, averaged over seeds, with bootstrap 95% "
            "intervals over seeds and items. Lower BPB and higher p(gold) are better; unlike "
            "accuracy they move at sizes where every benchmark sits at chance.",
            "",
        ]
    sources = _heldout_sources(evaluated)
    if sources:
        body = []
        for r in evaluated:
            per_source = [r.metric("heldout", s) for s in sources]
            if any(per_source):
                body.append([r.ref] + [_effect(m, "{:.3f}") if m else "—" for m in per_source])
        lines += ["### Held-out bits per byte by source", ""]
        lines += _table(["Arm/phase"] + [f"`{s}`" for s in sources], body)
        lines += [
            "",
            "Bits per byte of each data source's held-out documents (chosen by content "
            "hash, never served by any mixture), Paloma-style: a model's loss on each "
            "domain, comparable across tokenizers, with a bootstrap 95% interval over "
            "seeds and documents.",
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


def _provenance_section(study, plan: Plan, state: State) -> list[str]:
    settings = spec_lib.eval_settings(study)
    seeded = spec_lib.seeds(study) > 1
    body, train_s, eval_s, spans = [], 0.0, 0.0, []
    for p in plan.phases:
        r = state.phase(p.fingerprint)
        e = state.evaluation(p.fingerprint, settings)
        es = e.get("eval_seconds") if e else None
        train_s += (r or {}).get("train_seconds", 0.0)
        eval_s += es or 0.0
        if r and r.get("started_at") and r.get("trained_at"):
            spans.append((r["started_at"], r["trained_at"]))
        body.append(
            [p.name]
            + ([str(p.seed)] if seeded else [])
            + [
                f"`{p.run_id}`",
                f"{p.steps:,}",
                f"{p.tokens:,}",
                f"{r['train_seconds']:.0f}" if r else "—",
                f"{es:.0f}" if es is not None else "—",
                f"`{r['checkpoint_uri']}`" if r else "not trained",
            ]
        )
    wall = ""
    if spans:
        first, last = min(a for a, _ in spans), max(b for _, b in spans)
        wall = f" The trainings ran from {time.strftime('%H:%M:%S', time.localtime(first))} to {time.strftime('%H:%M:%S', time.localtime(last))} ({(last - first) / 60:.1f} min)."
    return (
        ["## What ran", ""]
        + _table(
            ["Phase"]
            + (["Seed"] if seeded else [])
            + ["Trainer run", "Steps", "Tokens", "Train s", "Eval s", "Final checkpoint"],
            body,
        )
        + [
            "",
            f"Training {train_s / 60:.1f} min, evaluation {eval_s / 60:.1f} min "
            f"(evaluation overlaps the next training).{wall}",
            "",
        ]
    )


def _save(fig, path: str, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
