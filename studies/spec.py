"""A Study spec (proto/study.proto): loading, validation, references, budgets.

Validation runs before anything starts and names the offending field
(`arms[2].phases[0].mixture_name: ...`), so a typo in a 20-arm study costs
seconds, not a training run. The facts other modules ask a spec for live
here too: what "arm/phase" points at, a phase's chain of ancestors, its
mixture, its budget in trained tokens, its learning-rate schedule, and the
code fraction of a sweep arm. Twin arms and primary metrics are checked
and expanded by studies/spec_verdicts.py.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from google.protobuf import text_format

from libs import errors
from libs.model import presets
from proto import data_pb2, study_pb2, trainer_pb2
from studies import spec_verdicts

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")
Kind = study_pb2.Phase.Kind
ScheduleKind = trainer_pb2.LRSchedule.Kind

# The paper's budgets, for documentation and the report's header.
PAPER_PRETRAIN_TOKENS = 200e9
PAPER_COOLDOWN_TOKENS = 40e9


# A Study field is wrong; `field` is its path, e.g. "arms[1].init_from". The
# libraries' one field error type, so a study's errors read like a service's.
StudyError = errors.InvalidArgument


@dataclasses.dataclass(frozen=True)
class PhaseRef:
    """One phase of one arm, by index."""

    arm: int
    phase: int

    def name(self, study: study_pb2.Study) -> str:
        return f"{study.arms[self.arm].name}/{study.arms[self.arm].phases[self.phase].name}"


def load(path: str) -> study_pb2.Study:
    """Parses and validates a textproto file; raises StudyError naming the field."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise StudyError("spec", f"cannot read {path}: {e.strerror}") from None
    return parse(text, source=path)


def parse(text: str, *, source: str = "<text>") -> study_pb2.Study:
    """Parses and validates a study, and adds the arms of its sweeps' random
    mixtures (`add_random_arms`)."""
    try:
        study = text_format.Parse(text, study_pb2.Study())
    except text_format.ParseError as e:
        raise StudyError("spec", f"{source}: {e}") from None
    validate(study)
    spec_verdicts.add_twin_arms(study)
    add_random_arms(study)
    validate(study)
    return study


# Replicates of every phase at most (Study.seeds), and random mixtures per sweep.
MAX_SEEDS = spec_verdicts.MAX_SEEDS
MAX_RANDOM_MIXTURES = 16


def seeds(study: study_pb2.Study) -> int:
    """Replicates of every phase: Study.seeds, at least one."""
    return max(1, study.seeds)


# ---------------------------------------------------------------- references


def resolve(study: study_pb2.Study, ref: str, field: str) -> PhaseRef:
    """ "arm/phase", or "arm" for the arm's last phase."""
    arm_name, _, phase_name = ref.partition("/")
    for i, arm in enumerate(study.arms):
        if arm.name != arm_name:
            continue
        if not phase_name:
            if not arm.phases:
                raise StudyError(field, f"arm {arm_name!r} has no phases")
            return PhaseRef(i, len(arm.phases) - 1)
        for j, phase in enumerate(arm.phases):
            if phase.name == phase_name:
                return PhaseRef(i, j)
        raise StudyError(
            field,
            f"arm {arm_name!r} has no phase {phase_name!r} (it has {[p.name for p in arm.phases]})",
        )
    raise StudyError(field, f"no arm named {arm_name!r} (arms: {[a.name for a in study.arms]})")


def parent(study: study_pb2.Study, ref: PhaseRef) -> PhaseRef | None:
    """The phase whose final weights `ref` starts from; None: from scratch."""
    if ref.phase > 0:
        return PhaseRef(ref.arm, ref.phase - 1)
    init_from = study.arms[ref.arm].init_from
    if not init_from:
        return None
    return resolve(study, init_from, f"arms[{ref.arm}].init_from")


def chain(study: study_pb2.Study, ref: PhaseRef) -> list[PhaseRef]:
    """Every phase before `ref` in its lineage, root first (without `ref`)."""
    out: list[PhaseRef] = []
    seen = {ref}
    p = parent(study, ref)
    while p is not None:
        if p in seen:
            raise StudyError(
                f"arms[{p.arm}].init_from", f"init_from forms a cycle through {p.name(study)!r}"
            )
        seen.add(p)
        out.append(p)
        p = parent(study, p)
    return out[::-1]


def all_refs(study: study_pb2.Study) -> list[PhaseRef]:
    return [PhaseRef(i, j) for i, arm in enumerate(study.arms) for j in range(len(arm.phases))]


def phase(study: study_pb2.Study, ref: PhaseRef) -> study_pb2.Phase:
    return study.arms[ref.arm].phases[ref.phase]


# ---------------------------------------------------------------- derived facts


def mixture(study: study_pb2.Study, ref: PhaseRef) -> data_pb2.MixtureSpec:
    p = phase(study, ref)
    if p.WhichOneof("data") == "mixture":
        return p.mixture
    for m in study.mixtures:
        if m.name == p.mixture_name:
            return m
    raise StudyError(
        f"arms[{ref.arm}].phases[{ref.phase}].mixture_name", f"no mixture named {p.mixture_name!r}"
    )


def paper_tokens(study: study_pb2.Study, ref: PhaseRef) -> float:
    """The phase's budget in the paper's tokens (before scaling)."""
    p = phase(study, ref)
    if p.WhichOneof("budget") == "paper_tokens":
        return p.paper_tokens
    return p.fraction_of_chain * sum(paper_tokens(study, r) for r in chain(study, ref))


def tokens_per_step(study: study_pb2.Study) -> int:
    return study.global_batch_size * study.seq_len


def steps(study: study_pb2.Study, ref: PhaseRef) -> int:
    """Optimizer steps of the phase: paper tokens * scale in whole global
    batches, rounded up, at least one."""
    return max(1, math.ceil(paper_tokens(study, ref) * study.scale / tokens_per_step(study)))


def trained_tokens(study: study_pb2.Study, ref: PhaseRef) -> int:
    return steps(study, ref) * tokens_per_step(study)


def schedule(study: study_pb2.Study, ref: PhaseRef) -> trainer_pb2.LRSchedule:
    p = phase(study, ref)
    if p.HasField("schedule"):
        return p.schedule
    return study.cooldown_schedule if p.kind == Kind.COOLDOWN else study.pretrain_schedule


def eval_settings(study: study_pb2.Study) -> str:
    """What makes two evaluations of one checkpoint the same."""
    return text_format.MessageToString(study.evaluation, as_one_line=True)


def code_fraction(mix: data_pb2.MixtureSpec, code_sources=("code",)) -> float:
    """Share of the code sources in the mixture's first stage."""
    weights = mix.stages[0].weights
    total = sum(w.weight for w in weights)
    return sum(w.weight for w in weights if w.source in set(code_sources)) / total


# ---------------------------------------------------------------- validation


def validate(study: study_pb2.Study) -> None:
    """Raises StudyError for the first bad field."""
    if not _NAME.match(study.name):
        raise StudyError("name", f"{study.name!r} must be 1-48 letters, digits, '.', '_', '-'")
    presets.get_preset(study.preset)  # an InvalidArgument naming "preset"
    if not (study.scale > 0 and math.isfinite(study.scale)):
        raise StudyError("scale", f"must be a positive number, got {study.scale}")
    if study.global_batch_size <= 0:
        raise StudyError("global_batch_size", f"must be positive, got {study.global_batch_size}")
    # seq_len, compute_dtype, mesh and microbatches are the trainer's facts: checked
    # by its own validator on every planned RunSpec (plan.validate).
    for name in ("checkpoint_every_steps", "log_every_steps"):
        if getattr(study, name) < 0:
            raise StudyError(name, "must be >= 0")
    if not 0 <= study.seeds <= MAX_SEEDS:
        raise StudyError("seeds", f"must be in [0, {MAX_SEEDS}], got {study.seeds}")
    mixture_names = set()
    for i, m in enumerate(study.mixtures):
        field = f"mixtures[{i}]"
        if not m.name:
            raise StudyError(f"{field}.name", "a catalogue mixture needs a name")
        if m.name in mixture_names:
            raise StudyError(f"{field}.name", f"{m.name!r} is defined twice")
        mixture_names.add(m.name)
        _check_mixture(field, m)
    for name in ("pretrain_schedule", "cooldown_schedule"):
        if study.HasField(name):
            _check_schedule(name, getattr(study, name))
    _check_eval(study.evaluation)
    if not study.arms:
        raise StudyError("arms", "a study needs at least one arm")
    arm_names = set()
    for i, arm in enumerate(study.arms):
        field = f"arms[{i}]"
        if not _NAME.match(arm.name):
            raise StudyError(
                f"{field}.name", f"{arm.name!r} must be 1-48 letters, digits, '.', '_', '-'"
            )
        if arm.name in arm_names:
            raise StudyError(f"{field}.name", f"{arm.name!r} is used twice")
        arm_names.add(arm.name)
        if arm.twin_of:
            spec_verdicts.check_twin(study, i)
        elif not arm.phases:
            raise StudyError(f"{field}.phases", "an arm needs at least one phase")
        phase_names = set()
        for j, p in enumerate(arm.phases):
            _check_phase(study, f"{field}.phases[{j}]", p, mixture_names)
            if p.name in phase_names:
                raise StudyError(f"{field}.phases[{j}].name", f"{p.name!r} is used twice")
            phase_names.add(p.name)
    for i, arm in enumerate(study.arms):
        if arm.init_from:
            resolve(study, arm.init_from, f"arms[{i}].init_from")
    for ref in all_refs(study):
        lineage = chain(study, ref)  # raises on cycles
        p = phase(study, ref)
        field = f"arms[{ref.arm}].phases[{ref.phase}]"
        if p.WhichOneof("budget") == "fraction_of_chain" and not lineage:
            raise StudyError(
                f"{field}.fraction_of_chain",
                "a first phase from scratch has no chain to take a fraction of",
            )
        s = schedule(study, ref)
        if s.kind == ScheduleKind.KIND_UNSPECIFIED:
            default = "cooldown_schedule" if p.kind == Kind.COOLDOWN else "pretrain_schedule"
            raise StudyError(f"{field}.schedule", f"unset, and the study sets no {default}")
    if study.baseline:
        resolve(study, study.baseline, "baseline")
    if study.HasField("judge"):
        _check_judge(study)
    for i, sweep in enumerate(study.sweeps):
        _check_sweep(study, f"sweeps[{i}]", sweep)
    spec_verdicts.check_primary_metrics(study)


def _check_mixture(field: str, m: data_pb2.MixtureSpec) -> None:
    if not m.stages:
        raise StudyError(f"{field}.stages", "a mixture needs at least one stage")
    for k, stage in enumerate(m.stages):
        if not stage.weights:
            raise StudyError(f"{field}.stages[{k}].weights", "a stage needs at least one weight")
        for w, weight in enumerate(stage.weights):
            if not weight.source:
                raise StudyError(f"{field}.stages[{k}].weights[{w}].source", "must be set")
            if not (weight.weight >= 0 and math.isfinite(weight.weight)):
                raise StudyError(
                    f"{field}.stages[{k}].weights[{w}].weight",
                    f"must be a non-negative number, got {weight.weight}",
                )
        if sum(w.weight for w in stage.weights) <= 0:
            raise StudyError(f"{field}.stages[{k}].weights", "at least one weight must be positive")


def _check_schedule(field: str, s: trainer_pb2.LRSchedule) -> None:
    # Every study phase is the first phase of its own trainer run, so a
    # LINEAR_ANNEAL starts from peak_lr too: it is always required.
    if s.kind == ScheduleKind.KIND_UNSPECIFIED:
        raise StudyError(
            f"{field}.kind", "must be set (COSINE, WARMUP_STABLE_DECAY, LINEAR_ANNEAL or CONSTANT)"
        )
    if not s.peak_lr > 0:
        raise StudyError(f"{field}.peak_lr", f"must be positive, got {s.peak_lr}")
    if s.warmup_steps < 0:
        raise StudyError(f"{field}.warmup_steps", "must be >= 0")
    if s.final_lr < 0:
        raise StudyError(f"{field}.final_lr", "must be >= 0")
    if s.kind == ScheduleKind.WARMUP_STABLE_DECAY and not 0 < s.decay_fraction <= 1:
        raise StudyError(f"{field}.decay_fraction", "must be in (0, 1]")


def _check_phase(study, field: str, p: study_pb2.Phase, mixture_names: set[str]) -> None:
    if not _NAME.match(p.name):
        raise StudyError(f"{field}.name", f"{p.name!r} must be 1-48 letters, digits, '.', '_', '-'")
    if p.kind == Kind.KIND_UNSPECIFIED:
        raise StudyError(f"{field}.kind", "must be set (PRETRAIN or COOLDOWN)")
    budget = p.WhichOneof("budget")
    if budget is None:
        raise StudyError(f"{field}.budget", "set paper_tokens or fraction_of_chain")
    value = getattr(p, budget)
    if not (value > 0 and math.isfinite(value)):
        raise StudyError(f"{field}.{budget}", f"must be a positive number, got {value}")
    data = p.WhichOneof("data")
    if data is None:
        raise StudyError(f"{field}.data", "set mixture or mixture_name")
    if data == "mixture_name" and p.mixture_name not in mixture_names:
        raise StudyError(
            f"{field}.mixture_name",
            f"no mixture named {p.mixture_name!r} (mixtures: {sorted(mixture_names)})",
        )
    if data == "mixture":
        _check_mixture(f"{field}.mixture", p.mixture)
    if p.HasField("schedule"):
        _check_schedule(f"{field}.schedule", p.schedule)


def _check_eval(e: study_pb2.Evaluation) -> None:
    if not e.suite and not e.tasks:
        raise StudyError("evaluation.suite", "set a suite or a list of tasks")
    if e.limit < 0:
        raise StudyError("evaluation.limit", f"must be >= 0, got {e.limit}")
    if e.num_samples < 0:
        raise StudyError("evaluation.num_samples", f"must be >= 0, got {e.num_samples}")
    if e.generation_limit < 0:
        raise StudyError(
            "evaluation.generation_limit",
            f"must be >= 0 (0: every example), got {e.generation_limit}",
        )


def _check_judge(study: study_pb2.Study) -> None:
    j = study.judge
    if not j.prompt_set:
        raise StudyError("judge.prompt_set", "must be set (e.g. mt_bench, vicuna_bench)")
    if not study.baseline:
        raise StudyError("baseline", "win rates compare against the baseline: set it")
    if j.WhichOneof("judge") == "judge_phase":
        resolve(study, j.judge_phase, "judge.judge_phase")
    if j.WhichOneof("judge") == "openai" and not j.openai.base_url:
        raise StudyError("judge.openai.base_url", "must be set")
    for i, ref in enumerate(j.compare):
        resolve(study, ref, f"judge.compare[{i}]")
    for name in ("limit", "max_new_tokens"):
        if getattr(j, name) < 0:
            raise StudyError(f"judge.{name}", "must be >= 0")


def _check_sweep(study, field: str, sweep: study_pb2.ProportionSweep) -> None:
    if not _NAME.match(sweep.name):
        raise StudyError(
            f"{field}.name", f"{sweep.name!r} must be 1-48 letters, digits, '.', '_', '-'"
        )
    if len(sweep.arms) < 2:
        raise StudyError(f"{field}.arms", "a sweep needs at least two arms")
    if len(set(sweep.arms)) != len(sweep.arms):
        raise StudyError(f"{field}.arms", "an arm is listed twice")
    for i, arm in enumerate(sweep.arms):
        ref = resolve(study, f"{arm}/{sweep.phase}" if sweep.phase else arm, f"{field}.arms[{i}]")
        code_fraction(mixture(study, ref), sweep.code_sources or ("code",))
    if sweep.held_out_arm and sweep.held_out_arm not in sweep.arms:
        raise StudyError(
            f"{field}.held_out_arm", f"{sweep.held_out_arm!r} is not one of the sweep's arms"
        )
    if not 0 <= sweep.random_mixtures <= MAX_RANDOM_MIXTURES:
        raise StudyError(
            f"{field}.random_mixtures",
            f"must be in [0, {MAX_RANDOM_MIXTURES}], got {sweep.random_mixtures}",
        )
    if sweep.random_mixtures:
        for arm, ref, _ in _points(study, sweep, sweep.arms):
            if len(mixture(study, ref).stages) != 1:
                raise StudyError(
                    f"{field}.random_mixtures",
                    f"random mixtures interpolate one-stage mixtures; {arm}'s has "
                    f"{len(mixture(study, ref).stages)} stages",
                )


def _points(study, sweep, arms) -> list[tuple[str, PhaseRef, float]]:
    out = []
    for arm in arms:
        ref = resolve(study, f"{arm}/{sweep.phase}" if sweep.phase else arm, "sweep")
        out.append((arm, ref, code_fraction(mixture(study, ref), sweep.code_sources or ("code",))))
    return sorted(out, key=lambda t: t[2])


def sweep_points(
    study: study_pb2.Study, sweep: study_pb2.ProportionSweep
) -> list[tuple[str, PhaseRef, float]]:
    """(arm name, phase, code fraction) of each arm of a sweep and of its random
    mixtures, by fraction."""
    names = list(sweep.arms) + [a for a in random_arm_names(sweep) if _has_arm(study, a)]
    return _points(study, sweep, names)


def held_out_arm(study: study_pb2.Study, sweep: study_pb2.ProportionSweep) -> str:
    if sweep.held_out_arm:
        return sweep.held_out_arm
    points = _points(study, sweep, sweep.arms)
    return points[len(points) // 2][0]


def held_out_arms(study: study_pb2.Study, sweep: study_pb2.ProportionSweep) -> list[str]:
    """The arms a sweep's fit must predict without seeing: its held-out arm and
    its random mixtures."""
    return [held_out_arm(study, sweep)] + random_arm_names(sweep)


# ---------------------------------------------------------------- random mixtures


def random_arm_names(sweep: study_pb2.ProportionSweep) -> list[str]:
    return [f"{sweep.name}.random{i}" for i in range(sweep.random_mixtures)]


def _has_arm(study, name: str) -> bool:
    return any(a.name == name for a in study.arms)


def add_random_arms(study: study_pb2.Study) -> None:
    """Appends the arms of every sweep's random mixtures (ProportionSweep.
    random_mixtures) to a validated study. An arm of that name already there
    (a study written out after expansion) must be the same arm."""
    for k, sweep in enumerate(study.sweeps):
        if not sweep.random_mixtures:
            continue
        points = _points(study, sweep, sweep.arms)
        (low_name, low_ref, _), (_, high_ref, _) = points[0], points[-1]
        low = _normalised(mixture(study, low_ref))
        high = _normalised(mixture(study, high_ref))
        draws = np.random.default_rng(sweep.random_seed).uniform(size=sweep.random_mixtures)
        for name, u in zip(random_arm_names(sweep), draws):
            weights = {
                src: (1 - u) * low.get(src, 0.0) + u * high.get(src, 0.0)
                for src in list(low) + [s for s in high if s not in low]
            }
            mix = data_pb2.MixtureSpec(name=name)
            mix.stages.add().weights.extend(
                data_pb2.SourceWeight(source=src, weight=round(w, 6))
                for src, w in weights.items()
                if round(w, 6) > 0
            )
            arm = study_pb2.Arm()
            arm.CopyFrom(study.arms[low_ref.arm])
            arm.name = name
            del arm.phases[low_ref.phase + 1 :]
            arm.phases[low_ref.phase].mixture.CopyFrom(mix)
            arm.description = (
                f"Random mixture of sweep {sweep.name} (seed {sweep.random_seed}): "
                f"{code_fraction(mix, sweep.code_sources or ('code',)):.1%} code, "
                f"interpolating {low_name} and {points[-1][0]}; left out of the fit."
            )
            existing = [a for a in study.arms if a.name == name]
            if not existing:
                study.arms.append(arm)
            elif existing[0] != arm:
                raise StudyError(
                    f"sweeps[{k}].random_mixtures",
                    f"arm {name!r} is reserved for a random mixture of sweep {sweep.name!r}",
                )


def _normalised(mix: data_pb2.MixtureSpec) -> dict[str, float]:
    weights = mix.stages[0].weights
    total = sum(w.weight for w in weights)
    out: dict[str, float] = {}
    for w in weights:
        out[w.source] = out.get(w.source, 0.0) + w.weight / total
    return out
