import os

import numpy as np
import pytest
from google.protobuf import text_format

from proto import trainer_pb2
from studies import spec, spec_verdicts

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")

BASE = """
name: "t"
preset: "tiny"
scale: 1e-6
global_batch_size: 8
seq_len: 256
pretrain_schedule { kind: COSINE peak_lr: 3e-3 warmup_steps: 10 final_lr: 3e-4 }
cooldown_schedule { kind: LINEAR_ANNEAL peak_lr: 3e-4 final_lr: 1e-6 }
evaluation { suite: "tiny" limit: 10 }
mixtures { name: "text" stages { weights { source: "text" weight: 1 } } }
mixtures {
  name: "balanced"
  stages { weights { source: "text" weight: 1 } weights { source: "code" weight: 1 } }
}
arms {
  name: "balanced"
  phases { name: "init" kind: PRETRAIN paper_tokens: 200e9 mixture_name: "balanced" }
}
arms {
  name: "balanced-to-text"
  init_from: "balanced/init"
  phases { name: "continue" kind: PRETRAIN paper_tokens: 200e9 mixture_name: "text" }
  phases { name: "cooldown" kind: COOLDOWN fraction_of_chain: 0.1 mixture_name: "text" }
}
"""


def _error(text: str) -> spec.StudyError:
    with pytest.raises(spec.StudyError) as e:
        spec.parse(text)
    return e.value


@pytest.mark.parametrize("name", sorted(os.listdir(SPECS)))
def test_every_shipped_spec_is_valid(name):
    study = spec.load(os.path.join(SPECS, name))
    assert study.arms


def test_a_valid_study_parses():
    study = spec.parse(BASE)
    assert [a.name for a in study.arms] == ["balanced", "balanced-to-text"]


@pytest.mark.parametrize(
    "change, field, words",
    [
        (('name: "t"', 'name: "a b"'), "name", "letters"),
        (('preset: "tiny"', 'preset: "huge"'), "preset", "unknown name 'huge'"),
        (("scale: 1e-6", "scale: 0"), "scale", "positive"),
        (("global_batch_size: 8", "global_batch_size: -1"), "global_batch_size", "positive"),
        (
            ('mixture_name: "text" }\n  phases', 'mixture_name: "txt" }\n  phases'),
            "arms[1].phases[0].mixture_name",
            "no mixture named 'txt'",
        ),
        (
            ('init_from: "balanced/init"', 'init_from: "balanced/warmup"'),
            "arms[1].init_from",
            "no phase 'warmup'",
        ),
        (
            ('init_from: "balanced/init"', 'init_from: "nope"'),
            "arms[1].init_from",
            "no arm named 'nope'",
        ),
        (
            ('name: "cooldown" kind: COOLDOWN', 'name: "continue" kind: COOLDOWN'),
            "arms[1].phases[1].name",
            "used twice",
        ),
        (("kind: COOLDOWN", ""), "arms[1].phases[1].kind", "PRETRAIN or COOLDOWN"),
        (
            ("fraction_of_chain: 0.1", "fraction_of_chain: -1"),
            "arms[1].phases[1].fraction_of_chain",
            "positive",
        ),
        (
            (
                'kind: PRETRAIN paper_tokens: 200e9 mixture_name: "balanced"',
                'kind: PRETRAIN fraction_of_chain: 0.5 mixture_name: "balanced"',
            ),
            "arms[0].phases[0].fraction_of_chain",
            "no chain",
        ),
        (
            ('evaluation { suite: "tiny" limit: 10 }', "evaluation { limit: 10 }"),
            "evaluation.suite",
            "suite or a list of tasks",
        ),
        (
            ("cooldown_schedule { kind: LINEAR_ANNEAL peak_lr: 3e-4 final_lr: 1e-6 }", ""),
            "arms[1].phases[1].schedule",
            "no cooldown_schedule",
        ),
        (
            (
                "pretrain_schedule { kind: COSINE peak_lr: 3e-3",
                "pretrain_schedule { kind: COSINE peak_lr: 0",
            ),
            "pretrain_schedule.peak_lr",
            "positive",
        ),
        (
            (
                'mixtures { name: "text" stages { weights { source: "text" weight: 1 } } }',
                'mixtures { name: "text" stages { weights { source: "text" weight: 0 } } }',
            ),
            "mixtures[0].stages[0].weights",
            "positive",
        ),
        (
            ('name: "balanced"\n  stages', 'name: "text"\n  stages'),
            "mixtures[1].name",
            "defined twice",
        ),
    ],
)
def test_errors_name_the_field(change, field, words):
    old, new = change
    assert old in BASE
    e = _error(BASE.replace(old, new, 1))
    assert e.field == field
    assert words in str(e)
    assert str(e).startswith(f"{field}: ")


def test_duplicate_arms_and_cycles_are_rejected():
    twice = BASE + (
        'arms { name: "balanced" '
        'phases { name: "x" kind: PRETRAIN paper_tokens: 1 mixture_name: "text" } }'
    )
    assert _error(twice).field == "arms[2].name"
    cycle = BASE.replace(
        'name: "balanced"\n  phases', 'name: "balanced"\n  init_from: "balanced-to-text"\n  phases'
    )
    e = _error(cycle)
    assert "cycle" in str(e)


def test_unknown_textproto_fields_are_parse_errors():
    e = _error(BASE + "\nfrobnicate: 1\n")
    assert e.field == "spec"
    assert "frobnicate" in str(e)


def test_judge_sweep_and_baseline_references_are_checked():
    assert _error(BASE + 'baseline: "text-only"').field == "baseline"
    judge = BASE + 'baseline: "balanced"\njudge { prompt_set: "mt_bench" judge_phase: "x/y" }'
    assert _error(judge).field == "judge.judge_phase"
    assert _error(BASE + 'judge { prompt_set: "mt_bench" }').field == "baseline"
    sweep = BASE + 'sweeps { name: "s" arms: ["balanced", "nope"] }'
    assert _error(sweep).field == "sweeps[0].arms[1]"
    held = BASE + 'sweeps { name: "s" arms: ["balanced", "balanced-to-text"] held_out_arm: "x" }'
    assert _error(held).field == "sweeps[0].held_out_arm"


def test_references_resolve_to_phases_and_arms_to_their_last_phase():
    study = spec.parse(BASE)
    assert spec.resolve(study, "balanced-to-text", "f") == spec.PhaseRef(1, 1)
    assert spec.resolve(study, "balanced/init", "f") == spec.PhaseRef(0, 0)
    cooldown = spec.PhaseRef(1, 1)
    assert [r.name(study) for r in spec.chain(study, cooldown)] == [
        "balanced/init",
        "balanced-to-text/continue",
    ]
    assert spec.parent(study, spec.PhaseRef(0, 0)) is None


def test_budgets_scale_paper_tokens_to_whole_batches():
    study = spec.parse(BASE)
    init, cooldown = spec.PhaseRef(0, 0), spec.PhaseRef(1, 1)
    assert spec.paper_tokens(study, init) == 200e9
    # 200e9 * 1e-6 = 200,000 tokens = 97.66 batches of 2,048 -> 98.
    assert spec.steps(study, init) == 98
    assert spec.trained_tokens(study, init) == 98 * 2048
    # The cooldown is 10% of the 400B chain before it: 40B paper tokens.
    assert spec.paper_tokens(study, cooldown) == pytest.approx(40e9)
    assert spec.steps(study, cooldown) == 20  # 40,000 / 2,048 = 19.5 -> 20
    study.scale = 1.0
    study.global_batch_size, study.seq_len = 512, 8192
    assert spec.steps(study, init) == 47684  # the paper: 200B / (512 x 8192)


def test_tiny_budgets_are_at_least_one_step():
    study = spec.parse(BASE.replace("scale: 1e-6", "scale: 1e-15"))
    assert spec.steps(study, spec.PhaseRef(0, 0)) == 1


def test_schedules_default_by_kind_and_phase_overrides_win():
    study = spec.parse(BASE)
    assert spec.schedule(study, spec.PhaseRef(0, 0)).kind == trainer_pb2.LRSchedule.COSINE
    assert spec.schedule(study, spec.PhaseRef(1, 1)).kind == trainer_pb2.LRSchedule.LINEAR_ANNEAL
    assert spec.schedule(study, spec.PhaseRef(1, 1)).final_lr == 1e-6
    overridden = spec.parse(
        BASE.replace(
            'mixture_name: "balanced" }',
            'mixture_name: "balanced" schedule { kind: CONSTANT peak_lr: 1e-3 } }',
            1,
        )
    )
    assert spec.schedule(overridden, spec.PhaseRef(0, 0)).peak_lr == 1e-3


def test_code_fraction_and_sweep_points():
    study = spec.load(os.path.join(SPECS, "tiny.textproto"))
    sweep = study.sweeps[0]
    points = [(arm, round(f, 2)) for arm, _, f in spec.sweep_points(study, sweep)]
    fixed = [(a, f) for a, f in points if not a.startswith("code-proportion.random")]
    assert [f for _, f in fixed] == [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]
    assert len(points) == len(fixed) + 1  # and the random mixture
    assert spec.held_out_arm(study, sweep) == "code75"
    assert spec.held_out_arms(study, sweep) == ["code75", "code-proportion.random0"]
    sweep.held_out_arm = ""
    assert spec.held_out_arm(study, sweep) == "code75"  # the middle one by default


def test_every_scale_runs_the_papers_arms():
    """The full-scale specs run the same arms; the tiny study a subset of them (no
    claim reads the two it leaves out), each defined as there, plus its twins."""

    def load(name):
        return spec.load(os.path.join(SPECS, name))

    def arms(study):
        return (
            list(study.arms),
            list(study.mixtures),
            list(study.sweeps),
            study.baseline,
            dict(study.primary_metrics),
        )

    full = load("470m.textproto")
    assert arms(load("2.8b.textproto")) == arms(full)
    tiny = load("tiny.textproto")
    full_arms = {a.name: a for a in full.arms}
    tiny_arms = [a for a in tiny.arms if not a.twin_of]
    assert all(full_arms[a.name] == a for a in tiny_arms)
    assert sorted(set(full_arms) - {a.name for a in tiny_arms}) == [
        "balanced-only",
        "balanced-synth-to-text",
        "code-proportion.random1",  # one random mixture of the sweep, not two
    ]
    full_mixtures = {m.name: m for m in full.mixtures}
    assert all(full_mixtures[m.name] == m for m in tiny.mixtures)
    (tiny_sweep,), (full_sweep,) = tiny.sweeps, full.sweeps
    assert (tiny_sweep.random_mixtures, full_sweep.random_mixtures) == (1, 2)
    tiny_sweep.random_mixtures = full_sweep.random_mixtures
    assert tiny_sweep == full_sweep
    assert (tiny.baseline, dict(tiny.primary_metrics)) == (
        full.baseline,
        dict(full.primary_metrics),
    )


SWEEP = """
mixtures { name: "code" stages { weights { source: "code" weight: 1 } } }
arms { name: "t0" phases { name: "init" kind: PRETRAIN paper_tokens: 200e9 mixture_name: "text" } }
arms { name: "t50" phases { name: "init" kind: PRETRAIN paper_tokens: 200e9 mixture_name: "balanced" } }
arms { name: "t100" phases { name: "init" kind: PRETRAIN paper_tokens: 200e9 mixture_name: "code" } }
sweeps { name: "s" arms: ["t0", "t50", "t100"] random_mixtures: 3 random_seed: 7 }
"""


def test_random_mixtures_interpolate_the_sweeps_ends_by_seed():
    study = spec.parse(BASE + SWEEP)
    names = [a.name for a in study.arms]
    assert names[-3:] == ["s.random0", "s.random1", "s.random2"]
    fractions = [f for arm, _, f in spec.sweep_points(study, study.sweeps[0]) if "random" in arm]
    draws = sorted(np.random.default_rng(7).uniform(size=3))
    assert sorted(fractions) == pytest.approx(draws, abs=1e-5)
    arm = study.arms[names.index("s.random0")]
    assert [p.name for p in arm.phases] == ["init"] and not arm.init_from
    assert {w.source for w in arm.phases[0].mixture.stages[0].weights} <= {"text", "code"}
    # Parsing a study written out after expansion adds nothing; another seed draws anew.
    again = spec.parse(text_format.MessageToString(study))
    assert [a.name for a in again.arms] == names and list(again.arms) == list(study.arms)
    other = spec.parse((BASE + SWEEP).replace("random_seed: 7", "random_seed: 8"))
    assert other.arms[-1] != study.arms[-1]
    # An arm of that name that is something else is refused.
    clash = (
        BASE
        + SWEEP
        + """
arms { name: "s.random1" phases { name: "init" kind: PRETRAIN paper_tokens: 1e9 mixture_name: "code" } }
"""
    )
    assert _error(clash).field == "sweeps[0].random_mixtures"


@pytest.mark.parametrize(
    "change, field",
    [
        ("seeds: 17", "seeds"),
        ("seeds: -1", "seeds"),
    ],
)
def test_seeds_are_bounded(change, field):
    assert _error(BASE + change).field == field
    assert spec.seeds(spec.parse(BASE)) == 1 and spec.seeds(spec.parse(BASE + "seeds: 3")) == 3


def test_random_mixtures_are_bounded():
    bad = (BASE + SWEEP).replace("random_mixtures: 3", "random_mixtures: 17")
    assert _error(bad).field == "sweeps[0].random_mixtures"


TWIN = 'arms { name: "bt.twin" twin_of: "balanced-to-text" description: "null" }\n'


def test_a_twin_takes_its_originals_init_from_and_phases():
    study = spec.parse(BASE + TWIN)
    twin, original = study.arms[2], study.arms[1]
    assert twin.init_from == original.init_from == "balanced/init"
    assert list(twin.phases) == list(original.phases)
    assert spec_verdicts.twins(study) == [("bt.twin", "balanced-to-text")]
    assert [spec_verdicts.seed_offset(study, i) for i in range(3)] == [0, 0, spec.MAX_SEEDS]
    # Written out and loaded again, the twin keeps the phases it was given.
    again = spec.parse(text_format.MessageToString(study))
    assert list(again.arms) == list(study.arms)


@pytest.mark.parametrize(
    "twin, field, words",
    [
        ('arms { name: "x" twin_of: "nope" }', "arms[2].twin_of", "no arm named 'nope'"),
        ('arms { name: "x" twin_of: "x" }', "arms[2].twin_of", "cannot be its own twin"),
        (
            TWIN + 'arms { name: "x" twin_of: "bt.twin" }',
            "arms[3].twin_of",
            "'bt.twin' is itself a twin (of 'balanced-to-text')",
        ),
        (
            'arms { name: "x" twin_of: "balanced" '
            'phases { name: "init" kind: PRETRAIN paper_tokens: 100e9 mixture_name: "text" } }',
            "arms[2].phases",
            "a twin repeats 'balanced'",
        ),
        (
            'arms { name: "x" twin_of: "balanced" init_from: "balanced-to-text" }',
            "arms[2].phases",
            "leave them out",
        ),
    ],
)
def test_twin_errors_name_the_field(twin, field, words):
    e = _error(BASE + twin)
    assert e.field == field and words in str(e)


def test_primary_metrics_are_declared_per_category():
    study = spec.parse(BASE + 'primary_metrics { key: "nl_reasoning" value: "margin" }')
    assert spec_verdicts.primary_metric(study, "nl_reasoning") == "margin"
    assert spec_verdicts.primary_metric(study, "code") == "bpb"  # the default
    tiny = spec.load(os.path.join(SPECS, "tiny.textproto"))
    assert dict(tiny.primary_metrics) == {
        "nl_reasoning": "prob_correct",
        "world_knowledge": "bpb",
        "code": "bpb",
    }
    # World knowledge generates its answers: it has no choices to normalise over.
    e = _error(BASE + 'primary_metrics { key: "world_knowledge" value: "prob_correct" }')
    assert e.field == "primary_metrics['world_knowledge']" and "not a metric" in str(e)
    e = _error(BASE + 'primary_metrics { key: "total" value: "bpb" }')
    assert e.field == "primary_metrics['total']" and "not a category" in str(e)
