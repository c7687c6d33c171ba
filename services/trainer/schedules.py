"""Learning-rate schedules of a phase, as optax schedules over the phase's steps.

COSINE is the paper's pre-training schedule (linear warmup, cosine decay);
LINEAR_ANNEAL is its cooldown: from the learning rate the previous phase
ended at, linearly down to final_lr (1e-6) over the cooldown budget.
"""

from __future__ import annotations

import optax

from proto import trainer_pb2

Kind = trainer_pb2.LRSchedule.Kind


def _warmup(peak_lr: float, warmup_steps: int):
    if warmup_steps <= 0:
        return None
    return optax.linear_schedule(0.0, peak_lr, warmup_steps)


def build(schedule: trainer_pb2.LRSchedule, num_steps: int, start_lr: float | None = None):
    """The optax schedule of a phase of `num_steps` steps.

    `start_lr` is the learning rate the previous phase ended at; only
    LINEAR_ANNEAL uses it (a first phase anneals from peak_lr).
    """
    peak, final = schedule.peak_lr, schedule.final_lr
    warmup = min(int(schedule.warmup_steps), max(num_steps - 1, 0))
    kind = schedule.kind
    if kind == Kind.LINEAR_ANNEAL:
        begin = peak if start_lr is None else start_lr
        return optax.linear_schedule(begin, final, max(num_steps - 1, 1))
    if kind == Kind.COSINE:
        decay_steps = max(num_steps - 1 - warmup, 1)
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=final / peak if peak else 0.0)
    elif kind == Kind.WARMUP_STABLE_DECAY:
        decay = max(int(round(num_steps * schedule.decay_fraction)), 1)
        stable = max(num_steps - warmup - decay, 0)
        main = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, final, max(decay - 1, 1))],
            [stable],
        )
    elif kind == Kind.CONSTANT:
        main = optax.constant_schedule(peak)
    else:
        raise ValueError(f"schedule.kind: unsupported {trainer_pb2.LRSchedule.Kind.Name(kind)}")
    head = _warmup(peak, warmup)
    if head is None:
        return main
    return optax.join_schedules([head, main], [warmup])
