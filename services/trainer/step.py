"""The training step: one pure jitted function with pinned shardings, and what it needs.

`StepProgram` holds everything that defines the step of a run: the model config, the mesh,
the optimizer, the parameter/optimizer/batch shardings and the number of microbatches. The
trainer runs `program.jitted()` on real arrays; the ahead-of-time compile tool
(compile_main.py) lowers the same jitted function with `program.abstract_args()` for a TPU
topology. So what the tool measures is exactly what the trainer runs.

Gradient accumulation: the global batch of B rows is split into k microbatches of B/k rows
(row r goes to microbatch r mod k, so every device keeps its own rows), and a lax.scan sums
their loss and gradients; dividing by the batch's token count afterwards gives exactly the
full batch's mean loss and gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from libs.checkpoint import checkpoint
from libs.model import model as model_lib
from libs.model import sharding
from libs.model.config import ModelConfig

# Per-source losses are summed on device into this many slots (source ids index the
# corpus's source list; the data service sends them as uint8).
from services.data.api.client import MAX_SOURCES

# The batch arrays the step reads ([batch, seq_len] each; see data.proto) and the dtype
# the compile tool gives each when no data service is there to send real ones.
BATCH_FIELDS = {
    "tokens": jnp.int32,
    "targets": jnp.int32,
    "segment_ids": jnp.int32,
    "positions": jnp.int32,
    "loss_mask": jnp.uint8,
    "source_ids": jnp.uint8,
}


def _decay_mask(params):
    # Decoupled weight decay only on the projection matrices: not on norm scales, and not
    # on the (tied) embedding table.
    def keep(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        return not any("norm" in n or n.startswith("embed") for n in names)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(opt) -> optax.GradientTransformation:
    """AdamW with clipping (a trainer_pb2.Optimizer); the learning rate is a hyperparameter
    each step sets, so one optimizer state carries across phases that continue."""
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        mask=_decay_mask,
    )
    if opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw)
    return adamw


def split_microbatches(x_bt: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...], microbatch j holding rows j, j + k, j + 2k, ...

    Strided, not contiguous: a device's contiguous block of rows then holds B/(k*devices)
    rows of every microbatch, so no row moves between devices.
    """
    return x_bt.reshape(x_bt.shape[0] // k, k, *x_bt.shape[1:]).swapaxes(0, 1)


def join_microbatches(x_kbt: jax.Array) -> jax.Array:
    """The inverse of split_microbatches."""
    return x_kbt.swapaxes(0, 1).reshape(-1, *x_kbt.shape[2:])


def train_step(params, opt_state, batch, lr, *, graphdef, tx, microbatches: int, rules=()):
    """One optimizer step on a global batch: (params, opt_state, metrics).

    Pure: everything it depends on is an argument (graphdef, tx, microbatches and the
    sharding rules static).
    """

    def loss_sum(params, mb):
        model = nnx.merge(graphdef, params)
        per_token_bt = model.token_losses(
            mb["tokens"],
            mb["targets"],
            segment_ids_bt=mb["segment_ids"],
            positions_bt=mb["positions"],
        )
        per_token_bt = per_token_bt * mb["loss_mask"].astype(jnp.float32)
        return per_token_bt.sum(), per_token_bt

    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
    if microbatches <= 1:
        (total, per_token_bt), grads = grad_fn(params, batch)
    else:
        mbs = {name: split_microbatches(x, microbatches) for name, x in batch.items()}
        # Each microbatch's rows stay split over the devices as the whole batch's were.
        mbs = jax.tree.map(lambda x: sharding.constrain(x, (None, "batch", "length"), rules), mbs)

        def accumulate(carry, mb):
            grads_acc, total_acc = carry
            (total, per_token_bt), grads = grad_fn(params, mb)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            return (grads_acc, total_acc + total), per_token_bt

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, total), per_token_kbt = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32)), mbs
        )
        per_token_bt = join_microbatches(per_token_kbt)
    mask = batch["loss_mask"].astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    loss = total / count
    grads = jax.tree.map(lambda g: g / count, grads)
    opt_state = optax.tree_utils.tree_set(opt_state, learning_rate=jnp.asarray(lr, jnp.float32))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    sources = batch["source_ids"].reshape(-1).astype(jnp.int32)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "source_loss_sum": jax.ops.segment_sum(per_token_bt.reshape(-1), sources, MAX_SOURCES),
        "source_count": jax.ops.segment_sum(mask.reshape(-1), sources, MAX_SOURCES),
        # Tokens of documents (not padding) per source, for the run's position.
        "source_tokens": jax.ops.segment_sum(
            (batch["segment_ids"].reshape(-1) > 0).astype(jnp.int32), sources, MAX_SOURCES
        ),
    }
    return params, opt_state, metrics


@dataclasses.dataclass
class StepProgram:
    """The step of one run on one mesh: its function, shardings and abstract arguments."""

    config: ModelConfig
    mesh: Mesh
    tx: optax.GradientTransformation
    microbatches: int
    graphdef: object
    param_shardings: dict
    opt_shardings: object
    batch_sharding: NamedSharding
    abstract_params: dict
    abstract_opt: object

    @classmethod
    def build(cls, config: ModelConfig, mesh: Mesh, optimizer, microbatches: int = 1):
        tx = make_optimizer(optimizer)
        graphdef, abstract_state = nnx.split(model_lib.abstract_model(config), nnx.Param)
        param_shardings = nnx.to_pure_dict(
            sharding.state_shardings(abstract_state, mesh, config.sharding_rules)
        )
        abstract_params = checkpoint.abstract_params(config, param_shardings)
        replicated = NamedSharding(mesh, PartitionSpec())
        abstract_opt = jax.eval_shape(tx.init, abstract_params)
        opt_shardings = optax.tree_utils.tree_map_params(
            tx,
            lambda _, s: s,
            abstract_opt,
            param_shardings,
            transform_non_params=lambda _: replicated,
        )
        abstract_opt = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_opt,
            opt_shardings,
        )
        return cls(
            config=config,
            mesh=mesh,
            tx=tx,
            microbatches=max(microbatches, 1),
            graphdef=graphdef,
            param_shardings=param_shardings,
            opt_shardings=opt_shardings,
            batch_sharding=NamedSharding(
                mesh, sharding.logical_to_spec(("batch", "length"), config.sharding_rules)
            ),
            abstract_params=abstract_params,
            abstract_opt=abstract_opt,
        )

    def jitted(self):
        """The jitted step, parameters and optimizer state donated, every output's
        sharding pinned (metrics replicated)."""
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def step(params, opt_state, batch, lr):
            return train_step(
                params,
                opt_state,
                batch,
                lr,
                graphdef=self.graphdef,
                tx=self.tx,
                microbatches=self.microbatches,
                rules=self.config.sharding_rules,
            )

        return jax.jit(
            step,
            in_shardings=(
                self.param_shardings,
                self.opt_shardings,
                self.batch_sharding,
                replicated,
            ),
            out_shardings=(self.param_shardings, self.opt_shardings, replicated),
            donate_argnums=(0, 1),
        )

    def abstract_args(self, global_batch_size: int, seq_len: int):
        """Shapes, dtypes and shardings of the step's arguments, for lowering."""
        batch = {
            name: jax.ShapeDtypeStruct(
                (global_batch_size, seq_len), dtype, sharding=self.batch_sharding
            )
            for name, dtype in BATCH_FIELDS.items()
        }
        lr = jax.ShapeDtypeStruct(
            (), jnp.float32, sharding=NamedSharding(self.mesh, PartitionSpec())
        )
        return self.abstract_params, self.abstract_opt, batch, lr

    def init_params(self, seed: int):
        """Fresh parameters, each created directly in its shards."""

        def init():
            model = model_lib.Transformer(self.config, rngs=nnx.Rngs(seed))
            return nnx.to_pure_dict(nnx.state(model, nnx.Param))

        return jax.jit(init, out_shardings=self.param_shardings)()

    def init_opt(self, params):
        return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)
