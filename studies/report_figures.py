"""The report's figures that stand on their own: the scores per arm, the judge
win rates and the per-source training loss curves.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studies import report_rows  # noqa: E402
from studies import spec as spec_lib  # noqa: E402
from studies.plan import Plan  # noqa: E402
from studies.state import State  # noqa: E402


def figure_scores(last_rows: list[report_rows.Row], figures: str) -> list[str]:
    rows = [r for r in last_rows if r.scores]
    if not rows:
        return []
    cats = [c for c, _ in report_rows.CATEGORIES if c != "nl_average"]
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
            label=report_rows.TITLES[cat],
        )
    ax.set_xticks(x, [r.arm for r in rows], rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_title("Final scores by arm (95% intervals)")
    ax.legend(fontsize=8)
    report_rows.save(fig, os.path.join(figures, "scores.png"))
    return ["![Final scores by arm](figures/scores.png)", ""]


# ---------------------------------------------------------------- win rates


def win_rate_section(state: State, figures: str) -> list[str]:
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
    lines += report_rows.table(
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
    report_rows.save(fig, os.path.join(figures, "win_rates.png"))
    return lines + ["", "![Win rates](figures/win_rates.png)", ""]


# ---------------------------------------------------------------- loss curves


def loss_section(plan: Plan, state: State, figures: str) -> list[str]:
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
    lines += report_rows.table(["Phase", "Final loss", "Final loss per source (nats)"], body) + [""]
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
    report_rows.save(fig, os.path.join(figures, "loss_curves.png"), tight=False)
    return lines + ["![Per-source training loss](figures/loss_curves.png)", ""]
