"""Sharding as metadata: logical axis names -> (data, fsdp, tensor) mesh axes.

Parameters carry logical axis names in their `out_sharding` metadata (set in model.py);
activations are annotated with `constrain`. Rules (ModelConfig.sharding_rules) map each
logical name to mesh axes, MaxText-style. Nothing here is specific to one model size, and
with no mesh in context every helper is a no-op, so the same model code runs unsharded on
a laptop and sharded on a slice.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from libs.model.config import MESH_AXES, MeshAxes, _as_tuple

M = TypeVar("M")
Rules = Sequence[tuple[str, MeshAxes]]


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all of them, in order)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = (data, fsdp, tensor)
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh: data*fsdp*tensor = {data}*{fsdp}*{tensor} != {len(devices)} devices"
        )
    # Auto axes: XLA propagates shardings from our annotations (explicit axes would make
    # every op's output sharding part of its type).
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions have `logical_axes` names.

    A mesh axis may shard only one dimension of an array, so one already used by an
    earlier dimension is dropped (e.g. activations' batch takes fsdp, so their embed
    dimension stays replicated, while a weight's embed dimension is fsdp-sharded).
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        axes = tuple(a for a in _as_tuple(table.get(name)) if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules) -> jax.Array:
    """Annotate an activation's sharding when a mesh is in context (jax.set_mesh)."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, rules))


def _param_spec(variable, rules: Rules) -> PartitionSpec:
    names = variable.get_metadata().get("out_sharding")
    if not names:
        return PartitionSpec()
    return logical_to_spec(names, rules)


def state_shardings(model_or_state, mesh: Mesh, rules: Rules):
    """NamedSharding for every variable of a model (or its state), from its metadata."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return jax.tree.map(
        lambda v: NamedSharding(mesh, _param_spec(v, rules)),
        state,
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )


def shard_model(model: M, mesh: Mesh, rules: Rules) -> M:
    """Move an existing model's variables onto `mesh` (in place; returns the model)."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def create_sharded(make_model: Callable[[], M], mesh: Mesh, rules: Rules) -> M:
    """Build a model with each parameter created directly in its shards.

    Unlike `shard_model`, no device ever holds the whole model: the initialiser runs
    under jit with sharded outputs, which is how a 2.8b model starts on a slice.
    """
    abstract = nnx.eval_shape(make_model)
    shardings = state_shardings(abstract, mesh, rules)

    @nnx.jit
    def init():
        model = make_model()
        state = jax.lax.with_sharding_constraint(nnx.state(model), shardings)
        nnx.update(model, state)
        return model

    with jax.set_mesh(mesh):
        return init()
