"""What ran: run ids, steps, tokens, seconds and checkpoints of every phase."""

from __future__ import annotations

import time

from studies import report_rows
from studies import spec as spec_lib
from studies.plan import Plan
from studies.state import State


def provenance_section(study, plan: Plan, state: State) -> list[str]:
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
        + report_rows.table(
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
