"""The schedules' values at known steps."""

import math

import pytest

from proto import trainer_pb2
from services.trainer import schedules

S = trainer_pb2.LRSchedule


def test_cosine_warms_up_linearly_then_decays_to_final():
    fn = schedules.build(S(kind=S.COSINE, peak_lr=1e-3, warmup_steps=10, final_lr=1e-5), 110)
    assert float(fn(0)) == 0.0
    assert float(fn(5)) == pytest.approx(5e-4)
    assert float(fn(10)) == pytest.approx(1e-3)
    # Halfway through the decay the cosine is at the midpoint of peak and final.
    assert float(fn(10 + 99 // 2)) == pytest.approx((1e-3 + 1e-5) / 2, rel=2e-2)
    assert float(fn(109)) == pytest.approx(1e-5, rel=1e-3)


def test_paper_warmup_of_1325_steps():
    fn = schedules.build(S(kind=S.COSINE, peak_lr=3e-4, warmup_steps=1325), 20_000)
    assert float(fn(1325)) == pytest.approx(3e-4)
    assert float(fn(662)) == pytest.approx(3e-4 * 662 / 1325)


def test_linear_anneal_starts_from_previous_phase_lr_and_ends_at_1e6():
    fn = schedules.build(S(kind=S.LINEAR_ANNEAL, final_lr=1e-6), 101, start_lr=2e-4)
    assert float(fn(0)) == pytest.approx(2e-4)
    assert float(fn(50)) == pytest.approx((2e-4 + 1e-6) / 2)
    assert float(fn(100)) == pytest.approx(1e-6)


def test_warmup_stable_decay():
    fn = schedules.build(
        S(
            kind=S.WARMUP_STABLE_DECAY,
            peak_lr=1e-3,
            warmup_steps=10,
            final_lr=0.0,
            decay_fraction=0.2,
        ),
        100,
    )
    assert float(fn(10)) == pytest.approx(1e-3)
    assert float(fn(79)) == pytest.approx(1e-3)
    assert float(fn(99)) == pytest.approx(0.0, abs=1e-9)
    assert 0 < float(fn(90)) < 1e-3


def test_unspecified_kind_is_rejected_by_name():
    with pytest.raises(ValueError, match="schedule.kind"):
        schedules.build(S(), 10)
    assert not math.isnan(float(schedules.build(S(kind=S.CONSTANT, peak_lr=1.0), 5)(3)))
