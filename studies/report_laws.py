"""The code-proportion sweeps: each sweep's scores, the mixture law fitted to
them (studies/fit.py), its validation on held-out arms against the
interpolation baseline and the seed noise, and its figure.
"""

from __future__ import annotations

import dataclasses
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studies import compare, report_rows  # noqa: E402
from studies import fit as fit_lib  # noqa: E402
from studies import spec as spec_lib  # noqa: E402

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

    points: list[tuple[str, float, report_rows.Row]]  # (arm, code fraction, row), by fraction
    held_out: list[str]  # arms left out of every fit
    targets: list[tuple[str, str, str]]  # (category, metric, title)
    laws: dict[tuple[str, str], fit_lib.Surface | str]

    @property
    def extrapolated(self) -> set[str]:
        """Held-out arms beyond the fitted range of code fractions."""
        held = set(self.held_out)
        fitted = [f for arm, f, _ in self.points if arm not in held]
        if not fitted:
            return set()
        lo, hi = min(fitted), max(fitted)
        return {arm for arm, f, _ in self.points if arm in held and not lo <= f <= hi}


def heldout_sources(rows: list[report_rows.Row]) -> list[str]:
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
    # The spec's held-out arms are interpolations; the largest fraction joins
    # them, when the sweep has arms to spare, to test the law beyond its range.
    held = fit_lib.with_extrapolation(
        [(arm, f, 0.0) for arm, f, _ in points], spec_lib.held_out_arms(study, sweep)
    )
    targets = [
        ("heldout", s, f"held-out `{s}` BPB") for s in heldout_sources([p[2] for p in points])
    ]
    targets += LAW_CATEGORY_METRICS
    laws: dict[tuple[str, str], fit_lib.Surface | str] = {}
    for cat, metric, _ in targets:
        data, seeds = [], {}
        for arm, f, row in points:
            m = row.metric(cat, metric)
            if m is not None:
                data.append((arm, f, m.value))
                seeds[arm] = seed_values(row, cat, metric)
        if len(data) < len(points):
            laws[(cat, metric)] = f"{len(points) - len(data)} arms not evaluated yet"
            continue
        try:
            laws[(cat, metric)] = fit_lib.response_surface(
                data, held_out=held, forms=("exp", "quadratic"), minimise=True, seeds=seeds
            )
        except ValueError as e:
            laws[(cat, metric)] = str(e)
    return SweepLaw(points, held, targets, laws)


def seed_values(row: report_rows.Row, category: str, metric: str) -> list[float]:
    """A row's metric seed by seed (empty with fewer than two seeds): each
    seed's mean over the items, whose average is the row's metric."""
    done = [e for e in row.evaluations if e is not None]
    units = compare.units(done, category, metric)
    if len(done) < 2 or not units:
        return []
    return [
        compare.interval(
            [compare.Unit(u.name, u.values[s : s + 1], u.denominator) for u in units]
        ).value
        for s in range(len(done))
    ]


def sweep_section(study, sweep, law: SweepLaw, figures: str) -> list[str]:
    lines = [f"## Code proportion: sweep `{sweep.name}`", ""]
    held, extrapolated = set(law.held_out), law.extrapolated
    header = ["Arm", "Code fraction", "In the fit"] + [t for _, t in report_rows.CATEGORIES]
    header += [title for _, _, title in law.targets]
    body = []
    for arm, f, row in law.points:
        fitted = "held out" if arm in held else "yes"
        cells = [arm, f"{f:.1%}", fitted + (" (extrapolation)" if arm in extrapolated else "")]
        cells += [
            report_rows.pct(row.scores[c][0]) if c in row.scores else "—"
            for c, _ in report_rows.CATEGORIES
        ]
        for cat, metric, _ in law.targets:
            m = row.metric(cat, metric)
            cells.append(report_rows.effect_text(m, "{:.3f}") if m else "—")
        body.append(cells)
    lines += report_rows.table(header, body) + [""]
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
        f"validated on arms it never saw: {_held_text(law)}. "
        "The law's held-out RMSE stands beside two baselines: interpolation (straight "
        "lines between the fitted arms' means, the end segment extended beyond them) and "
        "the seed noise (the root mean square of the held-out arms' standard errors over "
        "seeds). A law that does not beat interpolation predicts no better than the arms "
        "already run; one within the seed noise is as good as these means can show. "
        f"Spearman ρ ranks the held-out arms by predicted against actual value, computed "
        f"only over at least {fit_lib.MIN_RANK_POINTS} of them (over fewer it takes too "
        "few values to mean anything).",
        "",
    ]
    fit_rows = []
    for cat, metric, title in law.targets:
        s = law.laws[(cat, metric)]
        if isinstance(s, str):
            fit_rows.append([title, "—", s] + ["—"] * 8)
            continue
        fit_rows.append(
            [
                title,
                s.fit.form,
                s.fit.describe(),
                _num(s.loo_rmse[s.fit.form]),
                _num(s.held_out_rmse),
                _num(s.interpolation_rmse),
                _num(s.seed_noise),
                s.verdict(),
                s.spearman_note or f"{s.spearman:+.2f} ({len(s.validation)})",
                f"{s.best_fraction:.0%}",
                "; ".join(_held_out_text(h) for h in s.validation),
            ]
        )
    lines += report_rows.table(
        [
            "Target",
            "Form",
            "Parameters",
            "LOO RMSE",
            "Held-out RMSE",
            "Interpolation RMSE",
            "Seed noise",
            "Law against baselines",
            "Spearman ρ (n)",
            "Lowest at",
            "Held out: actual vs law (interpolation)",
        ],
        fit_rows,
    )
    lines += [""]
    if any(row.seeds for _, _, row in law.points):
        path = f"code_proportion_{sweep.name}.png"
        _law_figure(law, sweep.name, os.path.join(figures, path))
        lines += [f"![Code proportion sweep {sweep.name}](figures/{path})", ""]
    return lines


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def _held_text(law: SweepLaw) -> str:
    return ", ".join(
        f"`{h}`" + (" (extrapolation)" if h in law.extrapolated else "") for h in law.held_out
    )


def _held_out_text(h: fit_lib.HeldOut) -> str:
    where = " (extrapolation)" if h.extrapolation else ""
    return f"`{h.name}`{where} {h.actual:.3f} vs {h.predicted:.3f} ({h.interpolated:.3f})"


def _sweep_effects(law: SweepLaw) -> list[str]:
    """Every sweep arm against the lowest-code one on each continuous target: the
    code proportion's effect, paired over seeds and items."""
    (base_arm, _, base), rest = law.points[0], law.points[1:]
    body = []
    for arm, f, row in rest:
        cells = []
        for cat, metric, _ in law.targets:
            gain = report_rows.paired_gain(row, base, cat, metric, lower_better=True)
            cells.append(
                "—"
                if gain is None
                else report_rows.bold_text(report_rows.effect_text(gain, "{:+.3f}"), gain.resolved)
            )
        body.append([arm, f"{f:.1%}"] + cells)
    if not any(c != "—" for r in body for c in r[2:]):
        return []
    return (
        [
            f"Against `{base_arm}`: the drop in bits per byte (positive: lower than `{base_arm}`'s), paired over seeds and items; bold where the 95% interval excludes zero.",
            "",
        ]
        + report_rows.table(["Arm", "Code fraction"] + [title for _, _, title in law.targets], body)
        + [""]
    )


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
                yerr=report_rows.err(m),
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
    report_rows.save(fig, path)
