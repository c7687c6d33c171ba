"""Does evaluating a model fit a TPU host? Scoring and generation compiled ahead of time.

The eval service's own programs are lowered for a topology's devices and compiled
by libtpu on a CPU host (libs/tpu/aot.py), as the service would run them:

- scoring: scoring.py's packed forward over rows of the eval sequence length, every
  position scored (bits per byte and rolling log-likelihoods: the most logits a
  row can need);
- generation: decode.py's prefill of a batch of prompts and its decode loop with
  the KV cache.

Both run on the eval mesh (checkpoints.eval_mesh: FSDP over every chip, each batch
split across them), on parameters placed as a checkpoint restore places them
(libs/checkpoint.param_shardings, the trainer's rules), in the model a checkpoint
loads as on that platform (checkpoints.eval_config). For each program the batch
starts at one row a chip and doubles while it fits; `report` prints bytes a chip
against the usable HBM and ends with one JSON line.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
from flax import nnx

from libs.checkpoint import checkpoint as ckpt_lib
from libs.model import decode, presets, sharding
from libs.tpu import aot
from services.eval import checkpoints, scoring


def abstract_model(config, mesh):
    """The Transformer a checkpoint restore builds on `mesh`, with nothing allocated:
    every parameter a ShapeDtypeStruct with its target sharding."""
    params = ckpt_lib.abstract_params(config, ckpt_lib.param_shardings(config, mesh))
    return ckpt_lib.model_from_params(config, params)


def _rows(mesh, rules, shape, dtype=jnp.int32):
    """A batch input [b, ...]: rows split over the mesh's batch axes."""
    spec = sharding.logical_to_spec(("batch",) + (None,) * (len(shape) - 1), rules)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.NamedSharding(mesh, spec))


def _replicated(mesh, shape, dtype):
    return jax.ShapeDtypeStruct(
        shape, dtype, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )


def scoring_program(model, mesh, seq_len: int):
    """(batch) -> scoring.score_rows lowered for `batch` rows of `seq_len` tokens, every
    position scored, its logits in the chunks score_packed uses."""
    rules = model.cfg.sharding_rules
    graphdef, state = nnx.split(model)
    chunk = scoring.positions_per_chunk(model.cfg.vocab_size)

    def lower(batch):
        n = scoring.positions_bucket(batch * seq_len, chunk)
        return scoring.score_rows.lower(
            graphdef,
            state,
            _rows(mesh, rules, (batch, seq_len)),
            _rows(mesh, rules, (batch, seq_len)),
            _rows(mesh, rules, (n,)),
            _rows(mesh, rules, (n,)),
            chunk=chunk,
        )

    return lower


def generation_program(model, mesh, prompt_len: int, new_tokens: int):
    """(batch) -> decode.generate_batch (prefill + greedy KV-cache decode loop) lowered
    for `batch` prompts of `prompt_len` tokens and `new_tokens` new ones, in the
    buckets decode.generate uses."""
    rules = model.cfg.sharding_rules
    graphdef, state = nnx.split(model)
    p, new = decode.bucket(prompt_len), decode.bucket(new_tokens)
    stops = decode.stop_patterns([[0]])
    key = jax.eval_shape(lambda: jax.random.key(0))  # no device holds one here

    def lower(batch):
        return decode.generate_batch.lower(
            graphdef,
            state,
            _rows(mesh, rules, (batch, p)),
            _rows(mesh, rules, (batch, p)),
            _rows(mesh, rules, (batch, p)),
            _rows(mesh, rules, (batch,)),
            _replicated(mesh, (), jnp.int32),
            _replicated(mesh, stops.shape, jnp.int32),
            _replicated(mesh, (), jnp.float32),
            _replicated(mesh, (), jnp.float32),
            _replicated(mesh, key.shape, key.dtype),
            new_len=new,
            sample=False,
            nucleus=False,
        )

    return lower


def largest_batch(mesh, lower, hbm: int, start: int, limit: int, label: str):
    """(batch, CompiledStep) of the largest power-of-two multiple of `start` rows up to
    `limit` for which `lower(batch)` fits; (0, the first result) if not even `start`
    does."""
    best, first = (0, None), None
    batch = start
    while batch <= limit:
        result = aot.compile_lowered(mesh, lambda: lower(batch), hbm)
        print(
            f"{label:<10} batch {batch:>4}: {_gib(result.bytes_per_chip)} of {_gib(hbm)} "
            f"({'fits' if result.fits else 'does not fit'}; compile {result.compile_s:.0f} s)",
            flush=True,
        )
        first = first or result
        if not result.fits:
            break
        best = (batch, result)
        batch *= 2
    return best if best[1] is not None else (0, first)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _figures(batch: int, result) -> dict:
    return {
        "batch": batch,
        "argument_bytes_per_chip": result.argument_bytes,
        "output_bytes_per_chip": result.output_bytes,
        "temp_bytes_per_chip": result.temp_bytes,
        "bytes_per_chip": result.bytes_per_chip,
        "headroom": round(result.headroom, 4),
        "fits": result.fits,
        "compile_s": round(result.compile_s, 1),
    }


def report(
    preset: str,
    devices,
    *,
    topology: str,
    seq_len: int = 0,
    prompt_len: int = 1024,
    new_tokens: int = 512,
    dtype: str = "bfloat16",
    max_batch: int = 1024,
) -> bool:
    """Compiles scoring and generation of `preset` for `devices` (a topology's), prints
    the report and its JSON line, and returns whether both fit at one row a chip."""
    hbm = aot.usable_hbm_bytes(devices[0])
    base = presets.get_preset(preset)
    seq_len = seq_len or base.max_seq_len
    # As a checkpoint of the preset loads (its portable config, in the run's compute
    # dtype), with a window of at least seq_len.
    stored = dataclasses.replace(
        base.portable(), dtype=dtype, max_seq_len=max(base.max_seq_len, seq_len)
    )
    config = checkpoints.eval_config(stored, devices[0].platform)
    mesh = checkpoints.eval_mesh(devices)
    model = abstract_model(config, mesh)
    n = len(devices)
    print(f"topology   {topology}: {n} devices, {devices[0].device_kind}")
    print(f"mesh       {dict(mesh.shape)}")
    print(
        f"model      preset {preset}, {dtype} compute, {config.param_dtype} parameters, "
        f"attention {config.attention}, vocabulary {config.vocab_size}, logits "
        f"{scoring.positions_per_chunk(config.vocab_size)} positions at a time"
    )
    score_batch, scored = largest_batch(
        mesh, scoring_program(model, mesh, seq_len), hbm, n, max_batch, "scoring"
    )
    gen_batch, generated = largest_batch(
        mesh,
        generation_program(model, mesh, prompt_len, new_tokens),
        hbm,
        n,
        max_batch,
        "generation",
    )
    for label, batch, result, shape in (
        ("scoring", score_batch, scored, f"rows of {seq_len} tokens, every position scored"),
        (
            "generation",
            gen_batch,
            generated,
            f"prompts of {decode.bucket(prompt_len)} tokens + {decode.bucket(new_tokens)} new",
        ),
    ):
        print(
            f"{label:<10} batch {batch} ({batch // n} a chip), {shape}: arguments "
            f"{_gib(result.argument_bytes)}, outputs {_gib(result.output_bytes)}, temporaries "
            f"{_gib(result.temp_bytes)}; total {_gib(result.bytes_per_chip)} of {_gib(hbm)} "
            f"usable HBM (headroom {result.headroom:.1%}): "
            f"{'FITS' if result.fits else 'DOES NOT FIT'}"
        )
    ok = score_batch > 0 and gen_batch > 0
    batch_size = min(score_batch, gen_batch)
    print(f"batch_size {batch_size}: the eval service's rows a call (scoring and generation)")
    print(
        json.dumps(
            {
                "topology": topology,
                "devices": n,
                "preset": preset,
                "dtype": dtype,
                "attention": config.attention,
                "mesh": dict(mesh.shape),
                "seq_len": seq_len,
                "prompt_len": decode.bucket(prompt_len),
                "new_tokens": decode.bucket(new_tokens),
                "hbm_bytes_per_chip": hbm,
                "scoring": _figures(score_batch, scored),
                "generation": _figures(gen_batch, generated),
                "batch_size": batch_size,
                "fits": ok,
            }
        )
    )
    return ok
