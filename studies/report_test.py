import math
import os

import pytest

from studies import plan as plan_lib
from studies import report
from studies import spec
from studies.state import State

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
PNG = b"\x89PNG\r\n\x1a\n"
KINDS = {
    "text": "text",
    "code": "code",
    "markup": "markup",
    "code_adjacent": "code_adjacent",
    "synthetic_code": "synthetic_code",
    "cooldown": "cooldown",
}


def _nl(p):  # peaks at 25% code
    return 0.40 - 0.3 * (p - 0.25) ** 2


def _code(p):
    return 0.01 + 0.002 * math.exp(4 * p)


def _scores(study, p, salt):
    """Aggregate EvalResults of one planned phase: sweep-shaped in its code share."""
    share = spec.code_fraction(
        p.mixture, ("code", "markup", "code_adjacent", "synthetic_code", "cooldown")
    )
    bump = 0.0
    values = {
        "nl_reasoning": _nl(share) + bump,
        "world_knowledge": 0.1 + 0.02 * share,
        "code": _code(share) + (0.05 if p.kind == 2 else 0.0),
    }
    values["nl_average"] = (values["nl_reasoning"] + values["world_knowledge"]) / 2
    values["total"] = sum(values[c] for c in ("nl_reasoning", "world_knowledge", "code")) / 3
    # Continuous metrics as EvalResult JSON carries them (proto3 JSON drops zeros).
    bpb = 2.0 - share
    results = [
        {
            "task": "copa",
            "category": "nl_reasoning",
            "value": values["nl_reasoning"],
            "ci_low": 0.0,
            "ci_high": 1.0,
            "num_examples": 25,
        },
        {
            "task": "heldout_bpb",
            "category": "heldout",
            "value": 1.5,
            "extra": {"text": 1.25, "code": 1.75 - share},
            "intervals": {"text": {"low": 1.2, "high": 1.3}, "code": {"high": 2.0}},
        },
    ]
    for name, v in values.items():
        results.append(
            {
                "task": f"aggregate/{name}",
                "category": name,
                "value": v,
                "ci_low": v - 0.05,
                "ci_high": v + 0.05,
                "num_examples": 100,
                "extra": {"bpb": bpb, "prob_correct": 0.3, "margin": -0.25},
                "intervals": {
                    "bpb": {"low": bpb - 0.1, "high": bpb + 0.1},
                    "prob_correct": {"low": 0.25, "high": 0.35},
                    "margin": {"low": -0.5},
                },
            }
        )
    return results


def _record(study, plan, state, *, evaluate=lambda p: True, judge=True):
    state.set_sources(KINDS)
    settings = spec.eval_settings(study)
    for i, p in enumerate(plan.phases):
        weights = {w.source: w.weight for w in p.mixture.stages[0].weights}
        total = sum(weights.values())
        tokens = {s: int(p.tokens * w / total) for s, w in weights.items()}
        state.finish_phase(
            p.fingerprint,
            {
                "refs": p.refs,
                "run_id": p.run_id,
                "checkpoint_uri": f"/ck/{p.run_id}/{p.steps}",
                "step": p.steps,
                "tokens_seen": p.tokens,
                "tokens_per_source": tokens,
                "final_loss": 3.0,
                "final_source_loss": {s: 3.0 for s in weights},
                "train_seconds": 10.0,
            },
        )
        state.write_curves(
            p.run_id,
            [
                {
                    "step": s,
                    "phase": "x",
                    "loss": 5.0 / s,
                    "tokens_seen": s * 2048,
                    "source_loss": {src: 5.0 / s + 0.1 * k for k, src in enumerate(weights)},
                }
                for s in range(1, p.steps + 1, 10)
            ],
        )
        if evaluate(p):
            state.finish_evaluation(
                p.fingerprint,
                settings,
                {
                    "checkpoint_uri": f"/ck/{p.run_id}",
                    "results": _scores(study, p, i),
                    "eval_seconds": 5.0,
                },
            )
    if judge:
        state.finish_judgement(
            "k1",
            {
                "a": "code-to-text/continue",
                "b": "text-only/continue",
                "win_rate": 0.6,
                "wins": 5,
                "losses": 3,
                "ties": 2,
                "num_prompts": 10,
                "ci_low": 0.4,
                "ci_high": 0.8,
            },
        )


@pytest.fixture
def tiny():
    return spec.load(os.path.join(SPECS, "tiny.textproto"))


def _table_rows(text, heading):
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")][1:]


def test_report_from_recorded_results(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    _record(tiny, plan, state)
    path = report.write(tiny, plan, state, str(tmp_path))
    text = open(path).read()

    rows = _table_rows(text, "## Table 2")
    assert len(rows) == 22  # every arm and phase
    arms = {r.split("|")[1].strip() for r in rows}
    assert arms == {a.name for a in tiny.arms}
    assert "*(= text-only/init)*" in text  # code0 is the text-only init
    code_to_text = next(r for r in rows if r.startswith("| code-to-text |"))
    # 400B in its chain: 200B of code (code100/init), then 90% text / 10% code.
    cells = [c.strip() for c in code_to_text.split("|")]
    assert cells[-4:-1] == ["181k", "221k", "0"]

    # The sweep's fit finds the optimum the synthetic scores were made with.
    fit_rows = _table_rows(text, "## Code proportion")
    nl = next(r for r in fit_rows if r.startswith("| NL reasoning | quadratic"))
    assert "| 25% |" in nl
    code = next(r for r in fit_rows if r.startswith("| Code |"))
    assert "| 100% |" in code
    assert "Held out `code75`" in text

    assert "## Cooldown" in text
    assert "cooldown-code20/cooldown" in text and "balanced-to-text/continue (no cooldown)" in text
    assert "## Win rates" in text
    assert "| code-to-text/continue | text-only/continue | 60.0 |" in text
    assert "## Bootstrap 95% intervals" in text

    # Continuous metrics and held-out BPB, each with its interval.
    continuous = _table_rows(text, "## Continuous metrics")
    header = text.split("## Continuous metrics", 1)[1].splitlines()[2]
    assert "NL reasoning BPB" in header and "Code BPB" in header
    text_only = next(r for r in continuous if r.startswith("| text-only/init |"))
    assert "| 2.000 [1.900, 2.100] | 0.300 [0.250, 0.350] | -0.250 [-0.500, +0.000] |" in (
        text_only
    )
    heldout = _table_rows(text, "### Held-out bits per byte by source")
    assert "`code`" in text.split("### Held-out bits per byte by source", 1)[1].splitlines()[2]
    code100 = next(r for r in heldout if r.startswith("| code100/init |"))
    assert "| 0.750 [0.000, 2.000] | 1.250 [1.200, 1.300] |" in code100
    relative = _table_rows(text, "## Relative change")
    sweep_row = next(r for r in relative if r.startswith("| code25/init |"))
    assert "| text-only/init |" in sweep_row  # a 200B arm against the 200B baseline
    balanced = next(r for r in relative if r.startswith("| balanced-only/continue |"))
    assert "| text-only/continue |" in balanced
    assert "code lifts NL reasoning" in text

    figures = sorted(os.listdir(tmp_path / "figures"))
    assert figures == [
        "code_proportion_code-proportion.png",
        "cooldown_balanced-to-text_continue.png",
        "loss_curves.png",
        "relative_change.png",
        "scores.png",
        "win_rates.png",
    ]
    for name in figures:
        with open(tmp_path / "figures" / name, "rb") as f:
            assert f.read(8) == PNG
        assert f"figures/{name}" in text


def test_partial_results_still_make_a_report(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    evaluated = {plan.by_ref["text-only/init"].fingerprint, plan.by_ref["code25/init"].fingerprint}
    _record(tiny, plan, state, evaluate=lambda p: p.fingerprint in evaluated, judge=False)
    text = open(report.write(tiny, plan, state, str(tmp_path))).read()
    rows = _table_rows(text, "## Table 2")
    assert len(rows) == 22
    assert sum("—" in r for r in rows) == 22 - 3  # code0 shares text-only/init's scores
    assert "arms not evaluated yet" in text
    assert "No comparisons judged yet." in text


def test_nothing_recorded_yet(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    text = open(report.write(tiny, plan, State(str(tmp_path)), str(tmp_path))).read()
    assert "## Table 2" in text
    assert "not trained" in text


def test_relative_change_is_undefined_against_zero():
    assert report.relative(0.5, 0.4) == pytest.approx(0.25)
    assert math.isnan(report.relative(0.5, 0.0))


def test_a_category_without_variation_is_not_fitted(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    _record(tiny, plan, state, judge=False)
    settings = spec.eval_settings(tiny)
    for p in plan.phases:  # every model scores 0 on code, as tiny models do
        record = state.evaluation(p.fingerprint, settings)
        for r in record["results"]:
            if r["task"] == "aggregate/code":
                r.update(value=0.0, ci_low=0.0, ci_high=0.0)
        state.finish_evaluation(p.fingerprint, settings, record)
    text = open(report.write(tiny, plan, state, str(tmp_path))).read()
    assert "| Code | — | every arm scores 0.0: nothing to fit |" in text
    assert "no difference to measure" in text
