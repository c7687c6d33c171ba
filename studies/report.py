"""The study report: Markdown tables and PNG figures from recorded results.

Everything here reads the plan and the state file (studies/state.py) only,
so a report can be rewritten at any time, from partial results too, without
a service. With several seeds (Study.seeds) every score is the mean over the
seeds, its interval a t-interval over seeds and eval items together, and every
comparison a paired difference (studies/compare.py). Sections, after the paper:

- the paper's findings: each claim's paired gain on its category's primary
  metric, with its Holm-adjusted interval and a verdict (studies/findings.py),
  the secondary metrics, held-out text BPB and text tokens beside it, and a
  figure of the effects; then the A/A null comparisons of twin arms against
  their originals, with the rate at which they are called resolved;
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
  source's held-out documents, each with its interval;
- per-source training loss curves;
- the 95% intervals of every score;
- what ran: run ids, steps, tokens, seconds, checkpoints.

This module puts the sections in order; each part owns its sections:
report_rows (the rows and shared formatting), report_verdicts (the
findings), report_nulls (the A/A null comparisons), report_tables (header,
Table 2, relative change, cooldown, continuous metrics, intervals),
report_laws (sweeps and mixture laws),
report_figures (scores, win rates, loss curves) and report_provenance
(what ran).
"""

from __future__ import annotations

import os

from proto import study_pb2
from studies import (
    report_figures,
    report_laws,
    report_nulls,
    report_provenance,
    report_rows,
    report_tables,
    report_verdicts,
)
from studies.plan import Plan
from studies.state import State

# The report's public names, defined in its parts.
REPORT = report_rows.REPORT
FIGURES = report_rows.FIGURES
relative = report_rows.relative


def write(study: study_pb2.Study, plan: Plan, state: State, out_dir: str) -> str:
    """Writes report.md and figures/*.png under out_dir; returns report.md's path."""
    figures = os.path.join(out_dir, report_rows.FIGURES)
    os.makedirs(figures, exist_ok=True)
    rows = report_rows.collect(study, plan, state)
    by_ref = {r.ref: r for r in rows}
    last_rows = [by_ref[f"{arm.name}/{arm.phases[-1].name}"] for arm in study.arms]
    baseline = by_ref[report_rows.ref_name(study, study.baseline)] if study.baseline else None
    laws = {sweep.name: report_laws.sweep_laws(study, sweep, by_ref) for sweep in study.sweeps}
    lines = report_tables.header_section(study, plan, rows, state)
    lines += report_verdicts.findings_section(study, by_ref, laws, figures)
    lines += report_nulls.nulls_section(study, by_ref)
    lines += report_tables.table2(rows)
    lines += report_figures.figure_scores(last_rows, figures)
    if baseline is not None:
        lines += report_tables.relative_section(plan, rows, last_rows, baseline, figures)
    for sweep in study.sweeps:
        lines += report_laws.sweep_section(study, sweep, laws[sweep.name], figures)
    lines += report_tables.cooldown_section(study, plan, rows, figures)
    if study.HasField("judge"):
        lines += report_figures.win_rate_section(state, figures)
    lines += report_tables.continuous_section(rows)
    lines += report_figures.loss_section(plan, state, figures)
    lines += report_tables.intervals_section(rows)
    lines += report_provenance.provenance_section(study, plan, state)
    path = os.path.join(out_dir, report_rows.REPORT)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path
