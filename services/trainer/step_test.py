"""The training step: k microbatches equal one whole batch; shardings are pinned."""

import dataclasses

import jax
import numpy as np
import pytest

from libs import errors
from libs.model import sharding
from libs.model.presets import get_preset
from proto import trainer_pb2
from services.trainer import spec as spec_lib
from services.trainer.step import (
    StepProgram,
    join_microbatches,
    split_microbatches,
)

CFG = dataclasses.replace(get_preset("tiny"), vocab_size=256, max_seq_len=32)


def _batch(b=8, t=32, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, (b, t + 1))
    segment = np.where(np.arange(t) < 11, 1, 2)[None].repeat(b, 0).astype(np.int32)
    segment[-1, 25:] = 0  # padding at the end of the last row
    mask = (segment > 0).astype(np.uint8)
    mask[:, 10] = 0
    mask[1] = 0  # a row with nothing to learn
    return {
        "tokens": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "segment_ids": segment,
        "positions": np.where(segment == 2, np.arange(t) - 11, np.arange(t)).astype(np.int32),
        "loss_mask": mask,
        "source_ids": (np.arange(b)[:, None] % 3 * np.ones((1, t))).astype(np.uint8),
    }


def _one_step(microbatches, cfg=CFG):
    # Adam's first update is lr * g / (|g| + eps): with the usual eps it is about
    # lr * sign(g), which turns float32 summation-order noise in a near-zero gradient into a
    # whole update. eps = 1 makes the update proportional to the gradient, so comparing
    # parameters after the step compares the gradients themselves.
    optimizer = spec_lib.with_defaults(
        trainer_pb2.RunSpec(optimizer=trainer_pb2.Optimizer(eps=1.0))
    ).optimizer
    program = StepProgram.build(cfg, sharding.make_mesh(), optimizer, microbatches)
    params = program.init_params(seed=0)
    opt_state = program.init_opt(params)
    with jax.set_mesh(program.mesh):
        params, _, metrics = program.jitted()(params, opt_state, _batch(), 1.0)
    return jax.device_get(params), jax.device_get(metrics)


def _assert_params_close(got, want):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want)


@pytest.mark.parametrize("microbatches", [2, 4, 8])
def test_microbatches_equal_the_whole_batch(microbatches):
    params, metrics = _one_step(1)
    params_k, metrics_k = _one_step(microbatches)
    np.testing.assert_allclose(metrics_k["loss"], metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics_k["grad_norm"], metrics["grad_norm"], rtol=1e-5)
    # Per-source sums see every token exactly once, whichever microbatch held it.
    np.testing.assert_allclose(metrics_k["source_count"], metrics["source_count"])
    np.testing.assert_allclose(metrics_k["source_loss_sum"], metrics["source_loss_sum"], rtol=1e-5)
    _assert_params_close(params_k, params)


def test_chunked_loss_and_remat_leave_the_step_unchanged():
    params, metrics = _one_step(1)
    cfg = dataclasses.replace(CFG, logits_chunk=8, remat="save_dots")
    params_c, metrics_c = _one_step(2, cfg)
    np.testing.assert_allclose(metrics_c["loss"], metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics_c["source_loss_sum"], metrics["source_loss_sum"], rtol=1e-5)
    _assert_params_close(params_c, params)


def test_split_is_strided_and_join_inverts_it():
    x = np.arange(12).reshape(6, 2)
    parts = split_microbatches(x, 3)
    assert parts[0].tolist() == [[0, 1], [6, 7]]  # rows 0 and 3
    np.testing.assert_array_equal(join_microbatches(parts), x)


def test_microbatches_that_do_not_split_the_batch_are_refused():
    spec = spec_lib.with_defaults(
        trainer_pb2.RunSpec(run_id="r", preset="tiny", global_batch_size=8, microbatches=3)
    )
    with pytest.raises(errors.FieldError) as err:
        spec_lib.validate(spec)
    assert err.value.field == "microbatches"
