"""Checkpoints on gs:// (a GCS emulator started here): orbax and tensorstore
write and commit them, the same readers load them, and a step that never
committed is refused as on disk."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from libs import storage
from libs.checkpoint import checkpoint
from libs.model import model as model_lib
from libs.model import presets
from libs.storage import testing


@pytest.fixture(scope="module")
def gcs():
    with testing.gcs_emulator(bucket="ckpt") as emulator:
        yield emulator


def test_round_trip_and_commit_on_gcs(gcs):
    config = presets.get_preset("tiny")
    params = nnx.to_pure_dict(nnx.state(model_lib.Transformer(config, rngs=nnx.Rngs(0)), nnx.Param))
    opt_state = optax.adamw(1e-3).init(params)
    directory = gcs.uri("runs", "r1", "checkpoints")
    writer = checkpoint.CheckpointWriter(directory)
    meta = {"step": 3, "model_config": config.to_dict(), "tokenizer_json": "{}"}
    uri = writer.save(3, params, opt_state, meta)
    assert uri == directory + "/3"
    assert writer.wait() == [(3, uri)]
    assert writer.latest_step() == 3
    writer.close()
    # The arrays are objects in the bucket, not a local folder named "gs:".
    assert "params" in storage.listdir(uri)
    loaded = checkpoint.load(uri)
    assert loaded.step == 3
    restored = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A fresh writer on the same URI (a restarted trainer) finds the step.
    again = checkpoint.CheckpointWriter(directory)
    assert again.latest_step() == 3
    again.close()
    with pytest.raises(checkpoint.NotFoundError):
        checkpoint.read_meta(directory + "/9")


def test_a_killed_save_on_gcs_is_removed_and_the_step_saved_again(gcs):
    config = presets.get_preset("tiny")
    params = nnx.to_pure_dict(
        nnx.state(model_lib.Transformer(config, rngs=nnx.Rngs(1)), nnx.Param)
    )
    opt_state = optax.adamw(1e-3).init(params)
    meta = {"step": 4, "model_config": config.to_dict(), "tokenizer_json": "{}"}
    directory = gcs.uri("runs", "killed", "checkpoints")
    writer = checkpoint.CheckpointWriter(directory)
    uri = writer.save(4, params, opt_state, meta)
    writer.close()
    # What a save killed before its commit marker leaves: the objects, no marker.
    storage.remove(storage.join(uri, "commit_success.txt"))
    with pytest.raises(checkpoint.NotCommittedError):
        checkpoint.read_meta(uri)
    again = checkpoint.CheckpointWriter(directory)
    assert again.latest_step() is None
    assert again.save(4, params, opt_state, meta) == uri
    assert again.wait() == [(4, uri)]
    again.close()
    assert checkpoint.read_meta(uri)["step"] == 4
