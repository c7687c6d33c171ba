"""Training an arm's seeds together: one jitted step over S seeds against S steps.

A study trains every arm under several seeds, each in its own trainer run. On a small
model a CPU is far from busy with one run's matrices, so one step over all the seeds at
once (jax.vmap of the trainer's own train_step over stacked parameters, optimizer states
and batches) might train them faster. This measures it, in one process, in turn:

- one at a time: S steps of the trainer's one-seed program (StepProgram.jitted());
- together: one jitted step of the vmapped train_step over the S seeds.

Both train the same S seeds on the same batches (random tokens: the speed does not
depend on them). Reported: tokens/s of each way (the median round of --rounds rounds of
--steps steps, after a warm-up that compiles), the ratio, and the largest difference
between the two ways' losses on their first step (the vmapped step must equal the
one-seed steps). The last line is one JSON object.

    bazel run //services/trainer:seeds_bench -- --preset=tiny --seeds=3
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from libs.model import presets, sharding
from proto import trainer_pb2
from services.trainer import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", "Model preset.")
flags.DEFINE_integer("vocab_size", 8192, "Vocabulary (the default corpus's).")
flags.DEFINE_integer("seeds", 3, "Seeds trained together.")
flags.DEFINE_integer("batch", 8, "Sequences a step, a seed (the tiny study's).")
flags.DEFINE_integer("seq_len", 256, "Tokens a sequence (the tiny study's).")
flags.DEFINE_string("dtype", "float32", "Compute dtype (the tiny study's).")
flags.DEFINE_integer("steps", 10, "Steps a round.")
flags.DEFINE_integer("rounds", 5, "Rounds of each way, in turn.")


def _batch(rng: np.random.Generator, rows: int, seq_len: int, vocab: int) -> dict:
    tokens = rng.integers(2, vocab, (rows, seq_len + 1), dtype=np.int32)
    shape = (rows, seq_len)
    return {
        "tokens": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "segment_ids": jnp.ones(shape, jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), shape),
        "loss_mask": jnp.ones(shape, jnp.uint8),
        "source_ids": jnp.zeros(shape, jnp.uint8),
    }


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def main(argv):
    del argv
    config = dataclasses.replace(
        presets.get_preset(FLAGS.preset), vocab_size=FLAGS.vocab_size, dtype=FLAGS.dtype
    )
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    optimizer = trainer_pb2.Optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
    program = step_lib.StepProgram.build(config, mesh, optimizer)
    S, lr = FLAGS.seeds, jnp.float32(1e-3)
    rng = np.random.default_rng(0)
    batches = [_batch(rng, FLAGS.batch, FLAGS.seq_len, config.vocab_size) for _ in range(S)]

    with jax.set_mesh(mesh):
        params = [program.init_params(s) for s in range(S)]
        opts = [program.init_opt(p) for p in params]
        one = program.jitted()

        def train_step(p, o, b, lr):
            return step_lib.train_step(
                p,
                o,
                b,
                lr,
                graphdef=program.graphdef,
                tx=program.tx,
                microbatches=1,
                rules=config.sharding_rules,
            )

        together = jax.jit(jax.vmap(train_step, in_axes=(0, 0, 0, None)), donate_argnums=(0, 1))
        state_one = [(_copy(p), _copy(o)) for p, o in zip(params, opts)]
        state_all = (_stack(params), _stack(opts))
        stacked = _stack(batches)

        # The first step of each way, compiled and compared.
        losses_one = []
        for s in range(S):
            p, o, m = one(*state_one[s], batches[s], lr)
            state_one[s] = (p, o)
            losses_one.append(float(m["loss"]))
        p, o, m = together(*state_all, stacked, lr)
        state_all = (p, o)
        losses_all = [float(x) for x in m["loss"]]
        diff = max(abs(a - b) for a, b in zip(losses_one, losses_all))

        def round_one() -> float:
            t = time.perf_counter()
            for _ in range(FLAGS.steps):
                for s in range(S):
                    p, o, _ = one(*state_one[s], batches[s], lr)
                    state_one[s] = (p, o)
            jax.block_until_ready(state_one)
            return time.perf_counter() - t

        def round_all() -> float:
            nonlocal state_all
            t = time.perf_counter()
            for _ in range(FLAGS.steps):
                p, o, _ = together(*state_all, stacked, lr)
                state_all = (p, o)
            jax.block_until_ready(state_all)
            return time.perf_counter() - t

        times_one, times_all = [], []
        for _ in range(FLAGS.rounds):
            times_one.append(round_one())
            times_all.append(round_all())

    tokens = FLAGS.steps * S * FLAGS.batch * FLAGS.seq_len
    rate_one = tokens / statistics.median(times_one)
    rate_all = tokens / statistics.median(times_all)
    print(
        f"{FLAGS.preset}, {S} seeds x {FLAGS.batch} x {FLAGS.seq_len} tokens a step, "
        f"{FLAGS.dtype}, {os.cpu_count()} CPUs"
    )
    print(f"one seed at a time: {rate_one:,.0f} tokens/s (rounds {_fmt(times_one)} s)")
    print(f"seeds together:     {rate_all:,.0f} tokens/s (rounds {_fmt(times_all)} s)")
    print(f"ratio {rate_all / rate_one:.2f}; first-step losses differ by at most {diff:.2e}")
    print(
        json.dumps(
            {
                "preset": FLAGS.preset,
                "seeds": S,
                "batch": FLAGS.batch,
                "seq_len": FLAGS.seq_len,
                "dtype": FLAGS.dtype,
                "tokens_per_s_one_at_a_time": rate_one,
                "tokens_per_s_together": rate_all,
                "ratio": rate_all / rate_one,
                "max_loss_difference": diff,
            }
        )
    )


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    app.run(main)
