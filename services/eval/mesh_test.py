"""Evaluation over a mesh of two (CPU) devices: a checkpoint restored straight
into its shards (also one written over a mesh in another layout), scored and
generated from data-parallel, gives what one device gives: log-likelihoods,
task accuracies and bits per byte, and generated text."""

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
from libs.model import sharding  # noqa: E402
from services.eval import checkpoints, evaluator, scoring, tasks, testing  # noqa: E402

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


def _resave(params, meta, directory):
    writer = ckpt_lib.CheckpointWriter(directory, async_save=False)
    saved = writer.save(5, params, {"count": jnp.zeros((), jnp.int32)}, meta)
    writer.wait()
    writer.close()
    return saved


@pytest.fixture(scope="module")
def tensor_uri(uri, tmp_path_factory):
    """The checkpoint saved from parameters sharded over a two-device mesh as tensor
    parallelism places them (heads, MLP and vocabulary split): another layout than
    the eval mesh's FSDP."""
    mesh = sharding.make_mesh(data=1, fsdp=1, tensor=2)
    written = ckpt_lib.load(uri, mesh=mesh)
    params = nnx.to_pure_dict(nnx.state(written.model, nnx.Param))
    eval_mesh = checkpoints.local_mesh()
    eval_shardings = jax.tree.leaves(ckpt_lib.param_shardings(written.config, eval_mesh))
    moved = [
        x
        for x, target in zip(jax.tree.leaves(params), eval_shardings)
        if x.sharding.shard_shape(x.shape) != target.shard_shape(x.shape)
    ]
    assert moved and any(not x.sharding.is_fully_replicated for x in moved)
    return _resave(params, written.meta, str(tmp_path_factory.mktemp("tensor")))


@pytest.fixture(scope="module")
def from_tensor(tensor_uri):
    return checkpoints.load_checkpoint(tensor_uri, mesh=checkpoints.local_mesh()).model


def test_a_checkpoint_written_in_another_layout_restores_onto_the_eval_mesh(from_tensor):
    mesh = from_tensor.mesh
    params = nnx.to_pure_dict(nnx.state(from_tensor.model, nnx.Param))
    want = ckpt_lib.param_shardings(from_tensor.cfg, mesh)
    got_leaves, want_leaves = jax.tree.leaves(params), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    sharded = 0
    for x, target in zip(got_leaves, want_leaves):
        assert x.sharding.mesh == mesh and x.sharding.spec == target.spec
        if any(axis is not None for axis in target.spec):  # the rule shards it
            assert not x.sharding.is_fully_replicated
            assert {s.data.size for s in x.addressable_shards} == {x.size // 2}
            sharded += 1
    assert sharded >= len(got_leaves) // 2


def test_a_checkpoint_written_in_another_layout_scores_as_on_one_device(single, from_tensor):
    a, b = single.loglikelihood(PAIRS), from_tensor.loglikelihood(PAIRS)
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        single.loglikelihood_rolling(TEXTS), from_tensor.loglikelihood_rolling(TEXTS), rtol=1e-5
    )
    assert single.generate(PROMPTS, max_new_tokens=12) == from_tensor.generate(
        PROMPTS, max_new_tokens=12
    )


def test_a_scoring_batch_is_split_across_the_devices(meshed):
    """The packed forward, compiled for the mesh: its rows are divided between the
    devices (each holds half), not copied to each."""
    b, t, n = 4, 128, 64
    graphdef, state = nnx.split(meshed.model)
    with jax.set_mesh(meshed.mesh):
        compiled = scoring.score_rows.lower(
            graphdef,
            state,
            np.zeros((b, t), np.int32),
            np.zeros((b, t), np.int32),
            np.zeros((n,), np.int32),
            np.zeros((n,), np.int32),
            chunk=n,
        ).compile()
    tokens_sharding = jax.tree.leaves(compiled.input_shardings)[-4]
    assert tokens_sharding.shard_shape((b, t)) == (b // 2, t)
    # Only the scores come back, not a copy of the parameters.
    assert len(jax.tree.leaves(compiled.output_shardings)) == 2


@pytest.mark.parametrize("task", ["arc_easy", "copa", "triviaqa"])
def test_task_scores_over_two_devices_equal_one_device(task, single, from_tensor, tmp_path):
    """Accuracy, bits per byte (and for generation tasks exact match and F1) per
    example, through the evaluator."""
    ev = evaluator.Evaluator(
        benchmarks_dir=tasks.default_benchmarks_dir(),
        cache_dir=str(tmp_path),
        bootstrap_resamples=20,
    )
    one = ev.evaluate_task(single, tasks.TASKS[task], limit=6)
    two = ev.evaluate_task(from_tensor, tasks.TASKS[task], limit=6)
    assert one.num_examples == two.num_examples == 6
    assert one.example_metrics.keys() == two.example_metrics.keys()
    assert "bpb" in one.example_metrics
    for name, values in one.example_metrics.items():
        np.testing.assert_allclose(values, two.example_metrics[name], rtol=1e-5, err_msg=name)
    assert one.scores == two.scores and one.value == two.value
