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


def _task(task, category, metric, values: dict[str, float], n: int = 25) -> dict:
    """A task's EvalResult JSON with `n` examples, every example scoring the same."""
    headline = values.pop(metric)
    return {
        "task": task,
        "category": category,
        "metric": metric,
        "value": headline,
        "ci_low": headline,
        "ci_high": headline,
        "num_examples": n,
        "extra": dict(values),
        "per_example": {
            name: {"values": [v] * n} for name, v in {metric: headline, **values}.items()
        },
    }


def _scores(study, p, salt):
    """EvalResults of one planned phase: sweep-shaped in its code share."""
    share = spec.code_fraction(
        p.mixture, ("code", "markup", "code_adjacent", "synthetic_code", "cooldown")
    )
    values = {
        # A twin (seeds past the study's) scores a point higher: a false positive.
        "nl_reasoning": _nl(share) + (0.01 if p.seed >= spec.MAX_SEEDS else 0.0),
        "world_knowledge": 0.0,  # exact match at chance, as tiny models score it
        "code": _code(share) + (0.05 if p.kind == 2 else 0.0),
    }
    values["nl_average"] = (values["nl_reasoning"] + values["world_knowledge"]) / 2
    values["total"] = sum(values[c] for c in ("nl_reasoning", "world_knowledge", "code")) / 3
    bpb = 2.0 - share
    results = [
        _task(
            "copa",
            "nl_reasoning",
            "acc",
            # p(gold) peaks at 25% code, like accuracy.
            {
                "acc": values["nl_reasoning"],
                "bpb": bpb,
                "prob_correct": _nl(share),
                "margin": -0.25,
            },
        ),
        _task("triviaqa", "world_knowledge", "exact_match", {"exact_match": 0.0, "bpb": 4.0}),
        _task("humaneval", "code", "pass@1", {"pass@1": values["code"], "bpb": 3.0 - share}),
    ]
    # Held-out documents: text at 1.25 bits per byte, code at 1.75 - share.
    nbytes = [100.0, 300.0]
    per_document = {}
    for source, per_byte in (("text", 1.25), ("code", 1.75 - share)):
        per_document[f"{source}/nll"] = {"values": [per_byte * b * math.log(2) for b in nbytes]}
        per_document[f"{source}/bytes"] = {"values": nbytes}
    results.append(
        {
            "task": "heldout_bpb",
            "category": "heldout",
            "metric": "bpb",
            "value": 1.5,
            "extra": {"text": 1.25, "code": 1.75 - share},
            "per_example": per_document,
        }
    )
    for name, v in values.items():
        results.append(
            {
                "task": f"aggregate/{name}",
                "category": name,
                "value": v,
                "ci_low": v - 0.05,
                "ci_high": v + 0.05,
                "num_examples": 100,
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
    section = text.split(heading, 1)[1].split("\n#", 1)[0]  # to the next heading
    return [line for line in section.splitlines() if line.startswith("| ")][1:]


def test_report_from_recorded_results(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    _record(tiny, plan, state)
    path = report.write(tiny, plan, state, str(tmp_path))
    text = open(path).read()
    assert "3 seeds (0..2)" in text

    rows = _table_rows(text, "## Table 2")
    assert len(rows) == 21  # every arm and phase, the random mixture and twins too
    arms = {r.split("|")[1].strip() for r in rows}
    assert arms == {a.name for a in tiny.arms}
    assert "*(= text-only/init)*" in text  # code0 is the text-only init
    code_to_text = next(r for r in rows if r.startswith("| code-to-text |"))
    # 400B in its chain: 200B of code (code100/init), then 90% text / 10% code.
    cells = [c.strip() for c in code_to_text.split("|")]
    assert cells[-4:-1] == ["181k", "221k", "0"]

    # The paper's findings, each a paired gain on its primary metric (tiny: p(gold)
    # for NL reasoning, gold BPB for world knowledge and code) with its Holm-adjusted
    # interval, and a verdict. 11 claims: the first decided at 1 - 0.05/11.
    findings = _table_rows(text, "## The paper's findings, measured here")
    assert len(findings) == 11
    code = next(r for r in findings if r.startswith("| Code lifts code |"))
    # Code BPB 3.0 - share: balanced->text (10% code) against text-only (0%).
    assert "| gold BPB +0.1000 [+0.1000, +0.1000] at 99.55% |" in code
    assert code.endswith("| — | — | 3 | **reproduced in direction** |")  # no text columns
    knowledge = next(r for r in findings if r.startswith("| Code lifts world knowledge |"))
    assert "| gold BPB +0.0000 [+0.0000, +0.0000] at 99.17% |" in knowledge
    assert knowledge.endswith("| not resolved at this scale |")
    # Beside an NL claim: held-out text BPB (1.25 for every model) and text tokens.
    nl = next(r for r in findings if r.startswith("| Code lifts NL reasoning |"))
    assert "| p(gold) +0.0120 [+0.0120, +0.0120] at 99.55% |" in nl
    assert "| +0.0000 [+0.0000, +0.0000] | 281k / 401k | 3 |" in nl
    # The cooldown with code: p(gold) higher (decides), gold BPB higher too (against).
    cooldown = next(r for r in findings if "Code in the cooldown helps | +3.6%" in r)
    assert "gold BPB -0.2000 [-0.2000, -0.2000]" in cooldown
    assert cooldown.endswith("| **reproduced in direction; a secondary metric disagrees** |")
    # The optimum: 25% above every other share of the sweep (p(gold) peaks there).
    sweet = [r for r in findings if r.startswith("| About 25% code is best for NL reasoning |")]
    assert len(sweet) == 1 and sweet[0].endswith("| **reproduced in direction** |")
    optimum = _table_rows(text, "### About 25% code is best for NL reasoning")
    assert [r.split("|")[1].split("`")[1] for r in optimum] == [
        f"code{x}/init" for x in (0, 50, 75, 90, 100)
    ]
    assert "| +0.0750 [+0.0750, +0.0750] | +7.5 [+7.5, +7.5] |" in optimum[2]  # against 75%
    # Twins against their originals: the fixture's twins score a point higher.
    nulls = _table_rows(text, "### A/A null comparisons")
    assert "| NL reasoning score | 2 of 2 | 100% |" in nulls
    assert "| held-out `text` BPB | 0 of 2 | 0% |" in nulls
    assert nulls[-1] == "| **every metric** | **2 of 20** | **10%** |"

    # The mixture law on held-out code BPB (1.75 - share), validated on held-out arms.
    law = _table_rows(text, "### Mixture law")
    heldout_code = next(r for r in law if r.startswith("| held-out `code` BPB |"))
    # Linear in the share: the law is exact, and so is interpolation.
    assert "| 0.000 | 0.000 | 0.000 | the law does not beat interpolation;" in heldout_code
    assert "| not computed: 3 held-out points (needs 5) | 100% |" in heldout_code
    assert "`code75` 1.000 vs 1.000 (1.000)" in heldout_code
    assert "`code-proportion.random0`" in heldout_code
    # The largest code fraction is held out too, beyond the fitted range.
    assert "`code100` (extrapolation) 0.750 vs 0.750 (0.750)" in heldout_code
    sweep = _table_rows(text, "## Code proportion: sweep")
    assert next(r for r in sweep if r.startswith("| code100 |")).startswith(
        "| code100 | 100.0% | held out (extrapolation) |"
    )

    assert "## Cooldown" in text
    assert "cooldown-code20/cooldown" in text and "balanced-to-text/continue (no cooldown)" in text
    assert "## Win rates" in text
    assert "| code-to-text/continue | text-only/continue | 60.0 |" in text
    assert "## Bootstrap 95% intervals" in text

    # Continuous metrics and held-out BPB, each with its interval over seeds and items.
    continuous = _table_rows(text, "## Continuous metrics")
    header = text.split("## Continuous metrics", 1)[1].splitlines()[2]
    assert "NL reasoning BPB" in header and "Code BPB" in header
    text_only = next(r for r in continuous if r.startswith("| text-only/init |"))
    assert "| 2.000 [2.000, 2.000] | 0.381 [0.381, 0.381] | -0.250 [-0.250, -0.250] |" in (
        text_only
    )
    heldout = _table_rows(text, "### Held-out bits per byte by source")
    assert "`code`" in text.split("### Held-out bits per byte by source", 1)[1].splitlines()[2]
    code100 = next(r for r in heldout if r.startswith("| code100/init |"))
    assert "| 0.750 [0.750, 0.750] | 1.250 [1.250, 1.250] |" in code100
    relative = _table_rows(text, "## Relative change")
    sweep_row = next(r for r in relative if r.startswith("| code25/init |"))
    assert "| text-only/init |" in sweep_row  # a 200B arm against the 200B baseline
    balanced = next(r for r in relative if r.startswith("| balanced-to-text/continue |"))
    assert "| text-only/continue |" in balanced
    provenance = _table_rows(text, "## What ran")
    assert len(provenance) == len(plan.phases) == 60

    figures = sorted(os.listdir(tmp_path / "figures"))
    assert figures == [
        "code_proportion_code-proportion.png",
        "cooldown_balanced-to-text_continue.png",
        "effects.png",
        "loss_curves.png",
        "relative_change.png",
        "scores.png",
        "win_rates.png",
    ]
    for name in figures:
        with open(tmp_path / "figures" / name, "rb") as f:
            assert f.read(8) == PNG
        assert f"figures/{name}" in text


def test_the_law_is_weighed_against_the_seed_noise(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    _record(tiny, plan, state, judge=False)
    settings = spec.eval_settings(tiny)
    for p in plan.phases:  # held-out code BPB 1% low, exact, 1% high on seeds 0, 1, 2
        record = state.evaluation(p.fingerprint, settings)
        for r in record["results"]:
            if r["task"] == "heldout_bpb":
                nll = r["per_example"]["code/nll"]["values"]
                r["per_example"]["code/nll"]["values"] = [
                    x * (1 + 0.01 * (p.replicate - 1)) for x in nll
                ]
        state.finish_evaluation(p.fingerprint, settings, record)
    text = open(report.write(tiny, plan, state, str(tmp_path))).read()
    law = _table_rows(text, "### Mixture law")
    heldout_code = next(r for r in law if r.startswith("| held-out `code` BPB |"))
    # The standard error over seeds of a mean m is m * 0.01 / sqrt(3); its root mean
    # square over code75 (1.000), code100 (0.750) and the random mixtures (1.113, 1.480).
    noise = math.sqrt(sum((m * 0.01 / math.sqrt(3)) ** 2 for m in (1.0, 0.75, 1.113, 1.48)) / 4)
    assert f"| 0.000 | 0.000 | {noise:.3f} |" in heldout_code
    assert "its error is within the seed noise" in heldout_code


def test_partial_results_still_make_a_report(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    evaluated = {plan.by_ref["text-only/init"].fingerprint, plan.by_ref["code25/init"].fingerprint}
    _record(tiny, plan, state, evaluate=lambda p: p.fingerprint in evaluated, judge=False)
    text = open(report.write(tiny, plan, state, str(tmp_path))).read()
    rows = _table_rows(text, "## Table 2")
    assert len(rows) == 21
    assert sum("—" in r for r in rows) == 21 - 3  # code0 shares text-only/init's scores
    assert "arms not evaluated yet" in text
    assert "No comparisons judged yet." in text
    # One seed of code25 and text-only each: 25% against 0% is measured over that
    # seed, and the optimum waits for the sweep's other arms.
    findings = _table_rows(text, "## The paper's findings, measured here")
    sweet = next(r for r in findings if r.startswith("| About 25% code is best"))
    assert "(shown: `code0/init`)" in sweet and "| 1 |" in sweet
    assert sweet.endswith("| not evaluated yet |")
    assert "Twins not evaluated yet" in text


def test_nothing_recorded_yet(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    text = open(report.write(tiny, plan, State(str(tmp_path)), str(tmp_path))).read()
    assert "## Table 2" in text
    assert "not trained" in text


def test_relative_change_is_undefined_against_zero():
    assert report.relative(0.5, 0.4) == pytest.approx(0.25)
    assert math.isnan(report.relative(0.5, 0.0))


def test_a_claim_without_a_difference_is_not_resolved(tmp_path, tiny):
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    _record(tiny, plan, state, judge=False)
    settings = spec.eval_settings(tiny)
    for p in plan.phases:  # every model scores 0 on code with the same BPB
        record = state.evaluation(p.fingerprint, settings)
        for r in record["results"]:
            if r["task"] == "humaneval":
                r["per_example"] = {"pass@1": {"values": [0.0] * 25}, "bpb": {"values": [3.0] * 25}}
            if r["task"] == "aggregate/code":
                r.update(value=0.0, ci_low=0.0, ci_high=0.0)
        state.finish_evaluation(p.fingerprint, settings, record)
    text = open(report.write(tiny, plan, state, str(tmp_path))).read()
    findings = _table_rows(text, "## The paper's findings, measured here")
    code = next(r for r in findings if r.startswith("| Code lifts code |"))
    assert "| gold BPB +0.0000 [+0.0000, +0.0000] at 99.38% | +0.0 [+0.0, +0.0]" in code
    assert code.endswith("| not resolved at this scale |")


def test_the_declared_primary_metric_decides(tmp_path, tiny):
    tiny.primary_metrics["nl_reasoning"] = "bpb"
    plan = plan_lib.build(tiny)
    state = State(str(tmp_path))
    _record(tiny, plan, state, judge=False)
    text = open(report.write(tiny, plan, state, str(tmp_path))).read()
    findings = _table_rows(text, "## The paper's findings, measured here")
    # The cooldown with code: a higher gold BPB now decides, p(gold) disagrees.
    cooldown = next(r for r in findings if "Code in the cooldown helps | +3.6%" in r)
    assert "| gold BPB -0.2000 [-0.2000, -0.2000] at 99.55% |" in cooldown
    assert "p(gold) +0.0780 [+0.0780, +0.0780]" in cooldown
    assert cooldown.endswith("| **contradicted; a secondary metric disagrees** |")
    # Gold BPB (2.0 - share) falls with code: 100% beats 25%, which saw more text.
    sweet = next(r for r in findings if r.startswith("| About 25% code is best"))
    assert "(shown: `code100/init`)" in sweet and "| 151k / 0 |" in sweet
    assert sweet.endswith("| **contradicted; a secondary metric disagrees** |")


def test_the_report_is_in_parts_a_reader_can_hold():
    """report.py orders the sections; each part stays under about 400 lines."""
    here = os.path.dirname(os.path.abspath(__file__))
    parts = ["report.py"] + [
        f"report_{p}.py"
        for p in ("rows", "verdicts", "nulls", "tables", "laws", "figures", "provenance")
    ]
    for name in parts:
        with open(os.path.join(here, name)) as f:
            assert len(f.read().splitlines()) <= 400, name
