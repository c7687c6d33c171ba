"""The plan of a study: every distinct phase, once, in dependency order.

A phase's identity is what determines its weights: the model, batch shape,
seed, optimizer, its mixture, budget and schedule, and (recursively) the
identity of the phase it starts from. That identity is its `fingerprint`.
Phases of different arms with the same fingerprint are one training: an
arm's `init_from` makes sharing explicit, and two arms that spell out the
same phase (the sweep's 0% arm and the text-only arm) share it too. The
fingerprint keys the runner's state and names the trainer run, so changing
a phase's mixture retrains it and everything after it, and nothing else.

Every planned phase is one trainer run of one phase: from scratch, or from
its parent's final checkpoint (`init_checkpoint`: weights, with a fresh
optimizer and schedule, as the paper's code->text initialisation). A
cooldown carries on its parent's run instead (`with_optimizer`: the
parent's AdamW state too, and the learning rate annealed from where the
parent's schedule ended), so each cooldown arm of a shared parent continues
the same run.

A twin arm (Arm.twin_of) trains its phases on seeds of its own, offset past
its original's (spec_verdicts.seed_offset), so it shares no training with its
original; a phase it starts from (init_from) is another arm's and is shared.
"""

from __future__ import annotations

import dataclasses
import hashlib

from libs import errors
from proto import data_pb2, study_pb2, trainer_pb2
from studies import spec as spec_lib
from studies import spec_verdicts
from studies.spec import PhaseRef

# Checkpoints kept per run besides the phase-final one (enough to resume).
KEEP_CHECKPOINTS = 2


@dataclasses.dataclass
class PlannedPhase:
    """One training to run: a phase shared by one or more "arm/phase" refs."""

    fingerprint: str
    run_id: str
    refs: list[str]  # "arm/phase" names that are this training, first = owner
    kind: int  # study_pb2.Phase.Kind
    parent: str | None  # fingerprint of the phase it starts from
    chain: list[str]  # fingerprints of every ancestor, root first
    mixture: data_pb2.MixtureSpec
    schedule: trainer_pb2.LRSchedule
    paper_tokens: float
    steps: int
    tokens: int
    replicate: int = 0  # which of the study's seeds
    # Of its initialisation and data order: Study.seed + replicate (+ a twin's offset).
    seed: int = 0

    @property
    def name(self) -> str:
        return self.refs[0]


@dataclasses.dataclass
class Plan:
    study: study_pb2.Study
    phases: list[PlannedPhase]  # parents before children, replicate by replicate
    # "arm/phase" -> the training of each replicate (index = PlannedPhase.replicate).
    replicates: dict[str, list[PlannedPhase]]

    @property
    def by_ref(self) -> dict[str, PlannedPhase]:
        """ "arm/phase" -> the training of the first replicate."""
        return {name: ps[0] for name, ps in self.replicates.items()}

    def get(self, fingerprint: str) -> PlannedPhase:
        for p in self.phases:
            if p.fingerprint == fingerprint:
                return p
        raise KeyError(fingerprint)

    def lookup(self, ref: str, replicate: int = 0) -> PlannedPhase:
        """By "arm/phase" or "arm" (its last phase)."""
        r = spec_lib.resolve(self.study, ref, "ref")
        return self.replicates[r.name(self.study)][replicate]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _study_identity(study: study_pb2.Study, seed: int) -> bytes:
    """What every run of one replicate shares and what changes its weights."""
    shared = study_pb2.Study(
        preset=study.preset,
        global_batch_size=study.global_batch_size,
        seq_len=study.seq_len,
        seed=seed,
        compute_dtype=study.compute_dtype or "float32",
    )
    shared.optimizer.CopyFrom(study.optimizer)
    return shared.SerializeToString(deterministic=True)


def _mixture_identity(mix: data_pb2.MixtureSpec) -> bytes:
    anonymous = data_pb2.MixtureSpec()
    anonymous.CopyFrom(mix)
    anonymous.name = ""  # a label, not data
    return anonymous.SerializeToString(deterministic=True)


def build(study: study_pb2.Study) -> Plan:
    """Plans a validated study (spec.validate first): every replicate in turn,
    so the first seed of every arm is done before the second starts."""
    phases: list[PlannedPhase] = []
    replicates: dict[str, list[PlannedPhase]] = {}
    for replicate in range(spec_lib.seeds(study)):
        planned, by_ref = _build_replicate(study, replicate)
        phases += planned
        for name, p in by_ref.items():
            replicates.setdefault(name, []).append(p)
    return Plan(study=study, phases=phases, replicates=replicates)


def _build_replicate(study: study_pb2.Study, replicate: int):
    fingerprints: dict[PhaseRef, str] = {}

    def seed(ref: PhaseRef) -> int:
        return study.seed + replicate + spec_verdicts.seed_offset(study, ref.arm)

    def fingerprint(ref: PhaseRef) -> str:
        if ref not in fingerprints:
            parent = spec_lib.parent(study, ref)
            fingerprints[ref] = _digest(
                _study_identity(study, seed(ref)),
                fingerprint(parent).encode() if parent else b"scratch",
                str(spec_lib.phase(study, ref).kind).encode(),
                str(spec_lib.trained_tokens(study, ref)).encode(),
                _mixture_identity(spec_lib.mixture(study, ref)),
                spec_lib.schedule(study, ref).SerializeToString(deterministic=True),
            )
        return fingerprints[ref]

    planned: dict[str, PlannedPhase] = {}
    order: list[str] = []
    by_ref: dict[str, PlannedPhase] = {}

    def visit(ref: PhaseRef) -> PlannedPhase:
        fp = fingerprint(ref)
        name = ref.name(study)
        if fp in planned:
            p = planned[fp]
            if name not in p.refs:
                p.refs.append(name)
            by_ref[name] = p
            return p
        parent_ref = spec_lib.parent(study, ref)
        parent = visit(parent_ref) if parent_ref is not None else None
        arm, phase = study.arms[ref.arm], spec_lib.phase(study, ref)
        p = PlannedPhase(
            fingerprint=fp,
            run_id=_run_id(
                study.name,
                arm.name,
                phase.name,
                fp,
                replicate if spec_lib.seeds(study) > 1 else None,
            ),
            refs=[name],
            kind=phase.kind,
            parent=parent.fingerprint if parent else None,
            chain=(parent.chain + [parent.fingerprint]) if parent else [],
            mixture=spec_lib.mixture(study, ref),
            schedule=spec_lib.schedule(study, ref),
            paper_tokens=spec_lib.paper_tokens(study, ref),
            steps=spec_lib.steps(study, ref),
            tokens=spec_lib.trained_tokens(study, ref),
            replicate=replicate,
            seed=seed(ref),
        )
        planned[fp] = p
        order.append(fp)
        by_ref[name] = p
        return p

    for ref in spec_lib.all_refs(study):
        visit(ref)
    return [planned[fp] for fp in order], by_ref


def _run_id(study: str, arm: str, phase: str, fingerprint: str, replicate: int | None) -> str:
    head = f"{study}-{arm}-{phase}"[:110]
    seed = f"-s{replicate}" if replicate is not None else ""
    return f"{head}{seed}-{fingerprint[:12]}"


def run_spec(
    study: study_pb2.Study,
    p: PlannedPhase,
    *,
    parent_uri: str,
    data_address: str,
    checkpoint_dir: str,
) -> trainer_pb2.RunSpec:
    """The trainer RunSpec of one planned phase. `parent_uri` is the parent's
    final checkpoint (empty for a phase from scratch)."""
    if (p.parent is None) != (not parent_uri):
        raise ValueError(f"{p.name}: parent_uri must be given exactly when the phase has a parent")
    phase = trainer_pb2.Phase(
        name=p.name.split("/", 1)[1], token_budget=p.tokens, mixture=p.mixture, schedule=p.schedule
    )
    if parent_uri:
        phase.init_checkpoint = parent_uri
        phase.with_optimizer = p.kind == study_pb2.Phase.COOLDOWN
    else:
        phase.from_scratch = True
    spec = trainer_pb2.RunSpec(
        run_id=p.run_id,
        preset=study.preset,
        phases=[phase],
        data_address=data_address,
        global_batch_size=study.global_batch_size,
        seq_len=study.seq_len,
        seed=p.seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_steps=study.checkpoint_every_steps,
        keep_checkpoints=KEEP_CHECKPOINTS,
        compute_dtype=study.compute_dtype,
        log_every_steps=study.log_every_steps,
        # How the step is computed, not what it computes: kept out of the run identity.
        microbatches=study.microbatches,
        remat=study.remat,
        attention=study.attention,
    )
    if study.HasField("optimizer"):
        spec.optimizer.CopyFrom(study.optimizer)
    if study.HasField("mesh"):
        spec.mesh.CopyFrom(study.mesh)
    return spec


def validate(plan: Plan, *, check_mixture=None) -> None:
    """Checks every planned RunSpec with the trainer's own validator (services.
    trainer.api.validation) before anything trains; `check_mixture(field, mixture)`
    adds the data service's verdict on each mixture. Raises spec.StudyError naming
    the study's field: a phase's own fields under its arm and phase, the rest (batch
    shape, mesh, microbatches, optimizer) as the study's fields of the same name."""
    from services.trainer.api import validation

    study = plan.study
    refs = {ref.name(study): ref for ref in spec_lib.all_refs(study)}
    for p in plan.phases:
        if p.replicate:
            continue  # the replicates' RunSpecs differ in their seed only
        spec = run_spec(
            study,
            p,
            parent_uri=f"planned:{plan.get(p.parent).run_id}" if p.parent else "",
            data_address="planned",
            checkpoint_dir="planned",
        )
        try:
            validation.check_run_spec(spec, check_mixture=check_mixture)
        except errors.FieldError as e:
            ref = refs[p.name]
            at = f"arms[{ref.arm}].phases[{ref.phase}]"
            if e.field == "phases[0]" or e.field.startswith(("phases[0].", "phases[0][")):
                raise spec_lib.StudyError(
                    at + e.field.removeprefix("phases[0]"), f"{e.message} ({p.name})"
                ) from None
            raise spec_lib.StudyError(
                e.field, f"{e.message} (the trainer's rule, for {p.name})"
            ) from None


def describe(plan: Plan) -> str:
    """The plan in words: one line per training, with what shares it."""
    lines = []
    total = 0
    for i, p in enumerate(plan.phases):
        total += p.tokens
        start = f"from {plan.get(p.parent).name}" if p.parent else "from scratch"
        shared = f"  (also {', '.join(p.refs[1:])})" if len(p.refs) > 1 else ""
        seed = f" seed {p.seed}" if spec_lib.seeds(plan.study) > 1 else ""
        lines.append(
            f"  {i + 1:>2}. {p.name:<36}{seed} {p.tokens:>14,} tokens {p.steps:>7,} steps, "
            f"{start}{shared}"
        )
    lines.append(f"  {len(plan.phases)} trainings, {total:,} tokens in all")
    return "\n".join(lines)
