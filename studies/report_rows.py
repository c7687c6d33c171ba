"""What every section of the study report is made of: one Row per arm and
phase with its recorded scores, the paired gains between rows, and the
formatting the sections share (numbers, tables, figures' files).
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proto import data_pb2, eval_pb2, spelling, study_pb2  # noqa: E402
from studies import compare  # noqa: E402
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
    # (category, metric) -> its estimate: each is computed once per report.
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
    service's interval; several: a t-interval over seeds and items (none for the
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
    diff = paired_units(a, b, category, metric, lower_better=lower_better)
    return compare.estimate(diff) if diff else None


def paired_units(
    a: Row, b: Row, category: str, metric: str = compare.HEADLINE, *, lower_better=False
) -> list[compare.Unit] | None:
    """The units of A's gain over B (see paired_gain); None when nothing pairs."""
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
    return compare.difference(ub, ua) if lower_better else compare.difference(ua, ub)


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


def pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def rel(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def tok(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def relative(value: float, base: float) -> float:
    """(value - base) / base; NaN when the base is 0."""
    return (value - base) / base if base else math.nan


def ref_name(study, ref: str) -> str:
    return spec_lib.resolve(study, ref, "ref").name(study)


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


def bold_text(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def err(e: compare.Effect) -> list[list[float]]:
    """Matplotlib's error bar lengths of an interval (never negative: a
    degenerate interval's quantile may sit a rounding error inside its mean)."""
    return [[max(0.0, e.value - e.low)], [max(0.0, e.high - e.value)]]


def effect_text(e: compare.Effect, fmt: str) -> str:
    return f"{fmt.format(e.value)} [{fmt.format(e.low)}, {fmt.format(e.high)}]"


def mixture_short(p: PlannedPhase) -> str:
    stage = p.mixture.stages[0]
    total = sum(w.weight for w in stage.weights)
    return ", ".join(f"{w.source} {w.weight / total:.0%}" for w in stage.weights if w.weight > 0)


def point_effect(e: compare.Effect) -> compare.Effect:
    """A score effect in percentage points."""
    return dataclasses.replace(e, value=100 * e.value, low=100 * e.low, high=100 * e.high)


def save(fig, path: str, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
