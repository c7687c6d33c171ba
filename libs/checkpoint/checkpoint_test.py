"""Checkpoints written and read on a real disk: round trip, commit, keep policy."""

import os
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from libs.checkpoint import checkpoint
from libs.model import model as model_lib
from libs.model import presets


@pytest.fixture(scope="module")
def tiny():
    config = presets.get_preset("tiny")
    model = model_lib.Transformer(config, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    opt_state = optax.adamw(1e-3).init(params)
    return config, params, opt_state


def _meta(config, step, **extra):
    return {"step": step, "model_config": config.to_dict(), "tokenizer_json": "{}", **extra}


def test_save_then_load_is_bitwise_equal(tmp_path, tiny):
    config, params, opt_state = tiny
    writer = checkpoint.CheckpointWriter(str(tmp_path / "run"))
    uri = writer.save(7, params, opt_state, _meta(config, 7, lineage={"phase": "init"}))
    assert writer.wait() == [(7, uri)]
    loaded = checkpoint.load(uri)
    assert loaded.step == 7 and loaded.lineage == {"phase": "init"}
    assert loaded.config == config
    restored = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    p, o, meta = writer.restore(
        7,
        checkpoint.abstract_params(config),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), opt_state),
    )
    assert meta["step"] == 7
    for a, b in zip(jax.tree.leaves(opt_state), jax.tree.leaves(o)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    writer.close()


def test_missing_uncommitted_and_corrupt_are_refused(tmp_path, tiny):
    config, params, opt_state = tiny
    with pytest.raises(checkpoint.NotFoundError):
        checkpoint.load(str(tmp_path / "nothing" / "3"))
    # What a save killed half-way leaves behind.
    tmp = tmp_path / "run" / "5.orbax-checkpoint-tmp-1234"
    tmp.mkdir(parents=True)
    with pytest.raises(checkpoint.NotCommittedError):
        checkpoint.load(str(tmp_path / "run" / "5"))
    with pytest.raises(checkpoint.NotCommittedError):
        checkpoint.load(str(tmp))
    writer = checkpoint.CheckpointWriter(str(tmp_path / "run2"))
    uri = writer.save(1, params, opt_state, _meta(config, 1))
    writer.close()
    shutil.rmtree(os.path.join(uri, checkpoint.PARAMS))
    with pytest.raises(checkpoint.CorruptError):
        checkpoint.load(uri)


def test_keep_policy_keeps_newest_and_protected(tmp_path, tiny):
    config, params, opt_state = tiny
    writer = checkpoint.CheckpointWriter(str(tmp_path / "run"), keep=2, async_save=False)
    for step in range(1, 6):
        writer.save(step, params, opt_state, _meta(config, step, phase_end=(step == 2)))
        writer.committed()
    writer.wait()
    assert writer.all_steps() == [2, 4, 5]
    writer.close()
