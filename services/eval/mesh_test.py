"""Evaluation over a mesh of two (CPU) devices: a checkpoint restored straight
into its shards, scored and generated from data-parallel, gives what one
device gives."""

import os

# Two host devices, before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from libs.checkpoint import checkpoint as ckpt_lib  # noqa: E402
from services.eval import checkpoints, testing  # noqa: E402

PAIRS = [
    ("The capital of France is", " Paris"),
    ("def add(a, b):\n    return", " a + b"),
    ("One, two,", " three"),
    ("A longer context about rivers and the sea, and what", " flows between them"),
    ("x", " y"),
]
TEXTS = ["a rolling text of some length " * 20, "short"]
PROMPTS = ["def is_palindrome(text", "The river", "1, 2, 3,"]


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return testing.write_checkpoint(str(tmp_path_factory.mktemp("ckpt")))


@pytest.fixture(scope="module")
def single(uri):
    return checkpoints.load_checkpoint(uri, mesh=None).model


@pytest.fixture(scope="module")
def meshed(uri):
    assert len(jax.devices()) == 2
    mesh = checkpoints.local_mesh()
    assert mesh is not None and mesh.size == 2
    return checkpoints.load_checkpoint(uri, mesh=mesh).model


def test_parameters_are_restored_into_their_shards(meshed):
    params = nnx.to_pure_dict(nnx.state(meshed.model, nnx.Param))
    leaves = jax.tree.leaves(params)
    assert all(
        isinstance(x.sharding, NamedSharding) and x.sharding.mesh == meshed.mesh for x in leaves
    )
    split = [x for x in leaves if not x.sharding.is_fully_replicated]
    assert split, "no parameter is sharded"
    for x in split:  # each device holds half of it, not all of it
        assert {s.data.size for s in x.addressable_shards} == {x.size // 2}


def test_scores_over_two_devices_equal_one_device(single, meshed):
    a, b = single.loglikelihood(PAIRS), meshed.loglikelihood(PAIRS)
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], rtol=1e-5, atol=1e-5)
    assert [g for _, g in a] == [g for _, g in b]
    np.testing.assert_allclose(
        single.loglikelihood_rolling(TEXTS), meshed.loglikelihood_rolling(TEXTS), rtol=1e-5
    )


def test_generation_over_two_devices_equals_one_device(single, meshed):
    assert single.generate(PROMPTS, max_new_tokens=12) == meshed.generate(
        PROMPTS, max_new_tokens=12
    )


def test_a_checkpoint_written_over_a_mesh_restores_onto_one_device(uri, tmp_path, single):
    """Saved from parameters sharded over two devices, read back on one."""
    mesh = checkpoints.local_mesh()
    sharded = ckpt_lib.load(uri, mesh=mesh)
    params = nnx.to_pure_dict(nnx.state(sharded.model, nnx.Param))
    writer = ckpt_lib.CheckpointWriter(str(tmp_path / "run"), async_save=False)
    saved = writer.save(3, params, {"count": jnp.zeros((), jnp.int32)}, sharded.meta)
    writer.wait()
    writer.close()
    again = checkpoints.load_checkpoint(saved, mesh=None).model
    a, b = single.loglikelihood(PAIRS), again.loglikelihood(PAIRS)
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], rtol=1e-6)
