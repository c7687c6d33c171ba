"""What a study declares about its verdicts before anything trains: twin arms
(A/A null comparisons) and the primary metric of each category.

A twin (Arm.twin_of) repeats another arm, its original, on seeds of its own:
the same init_from, phases and mixtures, so the report's comparison of the two
is a null comparison whose resolved intervals are false positives. The primary
metrics (Study.primary_metrics) say which metric decides each category's
verdicts (studies/findings.py); the others are reported beside it.

studies/spec.py validates a study with these checks and gives twins their
original's phases when it loads one.
"""

from __future__ import annotations

from libs import errors
from proto import study_pb2

StudyError = errors.InvalidArgument

# Replicates of every phase at most (Study.seeds); a twin's seeds start past them.
MAX_SEEDS = 16

# Category -> the metrics that may decide its verdicts: NL reasoning is multiple
# choice, so it has choice-normalised metrics; world knowledge (TriviaQA,
# NaturalQuestions-Open) and code are generation.
PRIMARY_CHOICES = {
    "nl_reasoning": ("bpb", "prob_correct", "margin", "headline"),
    "world_knowledge": ("bpb", "headline"),
    "code": ("bpb", "headline"),
}
DEFAULT_PRIMARY = "bpb"


def primary_metric(study: study_pb2.Study, category: str) -> str:
    """The metric that decides a category's verdicts: Study.primary_metrics, else
    gold-answer bits per byte."""
    return study.primary_metrics.get(category, DEFAULT_PRIMARY)


def twins(study: study_pb2.Study) -> list[tuple[str, str]]:
    """(twin, original) arm names of every twin arm, in the study's order."""
    return [(a.name, a.twin_of) for a in study.arms if a.twin_of]


def seed_offset(study: study_pb2.Study, arm: int) -> int:
    """What an arm's phases add to Study.seed + replicate: 0, or for the k-th twin
    (from 1) of one original k * MAX_SEEDS, past every seed of the original and of
    its other twins."""
    original = study.arms[arm].twin_of
    if not original:
        return 0
    return MAX_SEEDS * sum(a.twin_of == original for a in study.arms[: arm + 1])


def check_twin(study: study_pb2.Study, i: int) -> None:
    """Raises StudyError unless arms[i].twin_of names another arm that is no twin,
    and the twin's own init_from and phases (if any) are its original's."""
    arm = study.arms[i]
    field = f"arms[{i}].twin_of"
    if arm.twin_of == arm.name:
        raise StudyError(field, f"{arm.name!r} cannot be its own twin")
    original = next((a for a in study.arms if a.name == arm.twin_of), None)
    if original is None:
        raise StudyError(
            field, f"no arm named {arm.twin_of!r} (arms: {[a.name for a in study.arms]})"
        )
    if original.twin_of:
        raise StudyError(
            field, f"{arm.twin_of!r} is itself a twin (of {original.twin_of!r}); name the original"
        )
    # A twin written out after loading carries its original's phases: they must match.
    if (arm.phases or arm.init_from) and (
        list(arm.phases) != list(original.phases) or arm.init_from != original.init_from
    ):
        raise StudyError(
            f"arms[{i}].phases",
            f"a twin repeats {arm.twin_of!r}'s init_from and phases; leave them out",
        )


def check_primary_metrics(study: study_pb2.Study) -> None:
    for category, metric in sorted(study.primary_metrics.items()):
        field = f"primary_metrics[{category!r}]"
        if category not in PRIMARY_CHOICES:
            raise StudyError(field, f"not a category with verdicts ({sorted(PRIMARY_CHOICES)})")
        if metric not in PRIMARY_CHOICES[category]:
            raise StudyError(
                field, f"{metric!r} is not a metric of {category} {PRIMARY_CHOICES[category]}"
            )


def add_twin_arms(study: study_pb2.Study) -> None:
    """Gives every twin arm of a validated study its original's init_from and
    phases; a twin that has them already keeps them (check_twin has compared them)."""
    by_name = {a.name: a for a in study.arms}
    for arm in study.arms:
        if arm.twin_of and not arm.phases:
            arm.init_from = by_name[arm.twin_of].init_from
            arm.phases.extend(by_name[arm.twin_of].phases)
