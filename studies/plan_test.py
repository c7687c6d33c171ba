import os
import re

import pytest

from libs import errors
from proto import trainer_pb2
from studies import plan as plan_lib
from studies import spec

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the trainer's rule


def _tiny(seeds: int):
    study = spec.load(os.path.join(SPECS, "tiny.textproto"))
    study.seeds = seeds
    return study


@pytest.fixture
def tiny():
    """The tiny study with one seed."""
    return _tiny(1)


def test_each_shared_phase_is_planned_once(tiny):
    plan = plan_lib.build(tiny)
    refs = [r.name(tiny) for r in spec.all_refs(tiny)]
    assert len(refs) == 21  # with the sweep's random mixture and the two twins
    assert len(plan.phases) == 20
    # Explicit sharing (init_from) and identical spellings (the sweep's 0% arm is
    # the text-only init) are each one training.
    assert plan.by_ref["code0/init"] is plan.by_ref["text-only/init"]
    assert sorted(plan.by_ref["code0/init"].refs) == ["code0/init", "text-only/init"]
    assert plan.by_ref["code-to-text/continue"].parent == plan.by_ref["code100/init"].fingerprint
    balanced = plan.by_ref["code50/init"]
    children = [p for p in plan.phases if p.parent == balanced.fingerprint]
    assert [p.name for p in children] == ["balanced-to-text/continue"]
    assert len({p.fingerprint for p in plan.phases}) == 20
    assert len({p.run_id for p in plan.phases}) == 20


def test_phases_come_in_dependency_order(tiny):
    plan = plan_lib.build(tiny)
    position = {p.fingerprint: i for i, p in enumerate(plan.phases)}
    for p in plan.phases:
        if p.parent:
            assert position[p.parent] < position[p.fingerprint]
        for ancestor in p.chain:
            assert position[ancestor] < position[p.fingerprint]
    # A parent declared after its child (init_from a later arm) still comes first.
    cooldown = plan.by_ref["cooldown-code20/cooldown"]
    assert [plan.get(fp).name for fp in cooldown.chain] == [
        "code50/init",
        "balanced-to-text/continue",
    ]


def test_budgets_are_scaled(tiny):
    plan = plan_lib.build(tiny)
    init = plan.by_ref["text-only/init"]
    assert (init.paper_tokens, init.steps, init.tokens) == (200e9, 98, 98 * 2048)
    cooldown = plan.by_ref["cooldown-nocode/cooldown"]
    assert cooldown.paper_tokens == pytest.approx(40e9)
    assert (cooldown.steps, cooldown.tokens) == (20, 20 * 2048)


def test_a_change_retrains_the_phase_and_its_descendants_only(tiny):
    before = {p.name: p.fingerprint for p in plan_lib.build(tiny).phases}
    for m in tiny.mixtures:
        if m.name == "balanced":
            m.stages[0].weights[0].weight = 0.6
    after = {p.name: p.fingerprint for p in plan_lib.build(tiny).phases}
    changed = {n for n in before if before[n] != after.get(n)}
    assert changed == {
        "code50/init",
        "balanced-to-text/continue",
        "cooldown-nocode/cooldown",
        "cooldown-code20/cooldown",
    }


def test_labels_do_not_change_fingerprints(tiny):
    before = [p.fingerprint for p in plan_lib.build(tiny).phases]
    for m in tiny.mixtures:
        m.name = m.name.upper()
    for arm in tiny.arms:
        for phase in arm.phases:
            if phase.WhichOneof("data") == "mixture_name":
                phase.mixture_name = phase.mixture_name.upper()
    tiny.description = "renamed"
    tiny.log_every_steps = 99
    assert [p.fingerprint for p in plan_lib.build(tiny).phases] == before


def test_run_specs(tiny):
    plan = plan_lib.build(tiny)
    init = plan.by_ref["code100/init"]
    cont = plan.by_ref["code-to-text/continue"]
    for p in plan.phases:
        assert RUN_ID.match(p.run_id), p.run_id
    first = plan_lib.run_spec(
        tiny, init, parent_uri="", data_address="127.0.0.1:1", checkpoint_dir="/ck"
    )
    assert first.phases[0].WhichOneof("init") == "from_scratch"
    assert first.phases[0].token_budget == init.tokens
    assert first.phases[0].name == "init"
    assert first.phases[0].schedule.kind == trainer_pb2.LRSchedule.COSINE
    assert (first.preset, first.global_batch_size, first.seq_len) == ("tiny", 8, 256)
    assert (first.data_address, first.checkpoint_dir, first.run_id) == (
        "127.0.0.1:1",
        "/ck",
        init.run_id,
    )
    second = plan_lib.run_spec(
        tiny, cont, parent_uri="/ck/x/checkpoints/98", data_address="a:1", checkpoint_dir="/ck"
    )
    assert second.phases[0].init_checkpoint == "/ck/x/checkpoints/98"
    assert [w.source for w in second.phases[0].mixture.stages[0].weights] == ["text", "code"]
    with pytest.raises(ValueError, match="parent_uri"):
        plan_lib.run_spec(tiny, cont, parent_uri="", data_address="a:1", checkpoint_dir="/ck")
    cooldown = plan_lib.run_spec(
        tiny,
        plan.by_ref["cooldown-code20/cooldown"],
        parent_uri="/u",
        data_address="a:1",
        checkpoint_dir="/ck",
    )
    assert cooldown.phases[0].schedule.kind == trainer_pb2.LRSchedule.LINEAR_ANNEAL
    # A cooldown carries on its parent's run; a continuation starts a fresh optimizer.
    assert cooldown.phases[0].with_optimizer
    assert not second.phases[0].with_optimizer


def test_describe_lists_every_training_once(tiny):
    text = plan_lib.describe(plan_lib.build(tiny))
    assert "20 trainings" in text
    assert "(also code0/init)" in text
    assert "from balanced-to-text/continue" in text


def test_every_phase_trains_once_per_seed_from_its_own_seeds_parent():
    one, three = plan_lib.build(_tiny(1)), plan_lib.build(_tiny(3))
    assert len(three.phases) == 3 * len(one.phases)
    # The first seed is the one-seed study's plan: the same trainings, reused.
    assert [p.fingerprint for p in three.phases[: len(one.phases)]] == [
        p.fingerprint for p in one.phases
    ]
    assert len({p.fingerprint for p in three.phases}) == len(three.phases)
    assert len({p.run_id for p in three.phases}) == len(three.phases)
    for name, replicates in three.replicates.items():
        assert [p.replicate for p in replicates] == [0, 1, 2]
        twin = name.split("/")[0] in ("code0.twin", "code25.twin")
        assert [p.seed for p in replicates] == ([16, 17, 18] if twin else [0, 1, 2])
        for p in replicates:
            if p.parent is not None:
                assert three.get(p.parent).replicate == p.replicate
    cont = three.lookup("code-to-text/continue", replicate=2)
    assert three.get(cont.parent) is three.lookup("code100/init", replicate=2)
    spec_ = plan_lib.run_spec(
        three.study, cont, parent_uri="/ck/p", data_address="a:1", checkpoint_dir="/ck"
    )
    assert spec_.seed == 2 and "-s2-" in spec_.run_id
    assert three.lookup("code0/init", replicate=1) is three.lookup("text-only/init", replicate=1)


def test_a_twin_trains_its_originals_phases_on_seeds_of_its_own():
    study = spec.parse(
        open(os.path.join(SPECS, "tiny.textproto")).read()
        + 'arms { name: "bt.twin" twin_of: "balanced-to-text" }\n'
        + 'arms { name: "code0.twin2" twin_of: "code0" }\n'
    )
    plan = plan_lib.build(study)
    for twin, original in [
        ("code25.twin/init", "code25/init"),
        ("bt.twin/continue", "balanced-to-text/continue"),
    ]:
        originals, twins = plan.replicates[original], plan.replicates[twin]
        for o, t in zip(originals, twins):
            assert t.fingerprint != o.fingerprint and t.run_id != o.run_id
            assert t.mixture == o.mixture and t.steps == o.steps and t.parent == o.parent
            assert t.replicate == o.replicate and t.seed == o.seed + spec.MAX_SEEDS
    # A phase the twin starts from (init_from) is its original's parent, shared.
    assert plan.lookup("bt.twin").parent == plan.lookup("code50/init").fingerprint
    # A second twin of one original starts past the first's seeds.
    seeds = [p.seed for p in plan.replicates["code0.twin2/init"]]
    assert seeds == [32, 33, 34]
    assert plan.lookup("code0.twin") is not plan.lookup("code0")


@pytest.mark.parametrize(
    "change, field, words",
    [
        (dict(seq_len=4), "seq_len", "[8, 1048576]"),
        (dict(compute_dtype="float16"), "compute_dtype", "float16"),
        (dict(microbatches=3), "microbatches", "3 microbatches"),
    ],
)
def test_planned_run_specs_pass_the_trainers_own_validator(tiny, change, field, words):
    plan_lib.validate(plan_lib.build(tiny))  # the shipped study passes
    for name, value in change.items():
        setattr(tiny, name, value)
    with pytest.raises(spec.StudyError) as e:
        plan_lib.validate(plan_lib.build(tiny))
    assert e.value.field == field and words in str(e.value)


def test_a_mixture_the_data_service_refuses_names_the_arms_phase(tiny):
    def refuse(field, mixture):  # what the data service's verdict arrives as
        raise errors.InvalidArgument(f"{field}.stages[0].weights[1].source", "too many sources")

    with pytest.raises(spec.StudyError) as e:
        plan_lib.validate(plan_lib.build(tiny), check_mixture=refuse)
    assert e.value.field == "arms[0].phases[0].mixture.stages[0].weights[1].source"
    assert "text-only/init" in str(e.value)
