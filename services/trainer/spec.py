"""RunSpec: defaults, and validation that names the offending field.

A RunSpec (proto/trainer.proto) is the whole description of a run. It is
checked here before any training starts: local checks first, then the ones
that need the outside world (parent checkpoints on disk, the data service's
verdict on each mixture), each error naming its field.
"""

from __future__ import annotations

import re
from typing import Callable

from libs import errors
from libs.checkpoint import checkpoint
from libs.model import config as model_config, presets
from proto import trainer_pb2
from services.data.api import client as data_client

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Kind = trainer_pb2.LRSchedule.Kind


def with_defaults(spec: trainer_pb2.RunSpec) -> trainer_pb2.RunSpec:
    """A copy with unset fields given the paper's defaults (scaled settings
    such as batch size and sequence length default to the tiny CPU run)."""
    out = trainer_pb2.RunSpec()
    out.CopyFrom(spec)
    opt = out.optimizer
    opt.b1 = opt.b1 or 0.9
    opt.b2 = opt.b2 or 0.95
    opt.eps = opt.eps or 1e-8
    if not out.HasField("optimizer") or opt.weight_decay == 0:
        opt.weight_decay = opt.weight_decay or 0.1
    opt.clip_norm = opt.clip_norm or 1.0
    out.global_batch_size = out.global_batch_size or 8
    out.seq_len = out.seq_len or 256
    out.compute_dtype = out.compute_dtype or "float32"
    out.checkpoint_dir = out.checkpoint_dir or "/tmp/code_lab/checkpoints"
    out.checkpoint_every_steps = out.checkpoint_every_steps or 100
    out.log_every_steps = out.log_every_steps or 1
    for phase in out.phases:
        if phase.schedule.kind == Kind.LINEAR_ANNEAL and phase.schedule.final_lr == 0:
            phase.schedule.final_lr = 1e-6  # the paper's cooldown floor
    return out


def steps_of(spec: trainer_pb2.RunSpec, phase: trainer_pb2.Phase) -> int:
    """Optimizer steps a phase runs: its budget in whole global batches."""
    tokens_per_step = spec.global_batch_size * spec.seq_len
    return max(1, -(-phase.token_budget // tokens_per_step))


def validate(
    spec: trainer_pb2.RunSpec,
    *,
    num_devices: int = 1,
    check_mixture: Callable[[str, object], None] | None = None,
    check_parents: bool = True,
) -> None:
    """Raises errors.FieldError for the first bad field of a spec with defaults applied.

    `check_mixture(field, mixture)` asks the data service; it raises errors.FieldError
    itself (unreachable service, unknown source, bad weights). `check_parents=False`
    leaves parent checkpoints unopened, for a run planned before its parent exists.
    """
    if not _RUN_ID.match(spec.run_id):
        raise errors.InvalidArgument(
            "run_id", f"{spec.run_id!r} must be 1-128 letters, digits, '.', '_', '-'"
        )
    config = presets.get_preset(spec.preset)
    if spec.global_batch_size <= 0:
        raise errors.InvalidArgument(
            "global_batch_size", f"must be positive, got {spec.global_batch_size}"
        )
    if not data_client.MIN_SEQ_LEN <= spec.seq_len <= data_client.MAX_SEQ_LEN:
        raise errors.InvalidArgument(
            "seq_len",
            f"must be in [{data_client.MIN_SEQ_LEN}, {data_client.MAX_SEQ_LEN}], got {spec.seq_len}",
        )
    if spec.compute_dtype not in model_config.TRAINING_DTYPES:
        raise errors.InvalidArgument(
            "compute_dtype", f"{spec.compute_dtype!r} is not one of {model_config.TRAINING_DTYPES}"
        )
    if spec.checkpoint_every_steps <= 0:
        raise errors.InvalidArgument("checkpoint_every_steps", "must be positive")
    if not spec.checkpoint_every_seconds >= 0:  # also refuses NaN
        raise errors.InvalidArgument(
            "checkpoint_every_seconds",
            f"must be >= 0 (0: by steps only), got {spec.checkpoint_every_seconds}",
        )
    if spec.keep_checkpoints < 0:
        raise errors.InvalidArgument("keep_checkpoints", "must be >= 0")
    o = spec.optimizer
    for name in ("b1", "b2"):
        if not 0 <= getattr(o, name) < 1:
            raise errors.InvalidArgument(f"optimizer.{name}", "must be in [0, 1)")
    for name in ("eps", "weight_decay", "clip_norm"):
        if getattr(o, name) < 0:
            raise errors.InvalidArgument(f"optimizer.{name}", "must be >= 0")
    mesh = spec.mesh
    if min(mesh.data, mesh.fsdp, mesh.tensor) < 0:
        raise errors.InvalidArgument("mesh", "sizes must be >= 0")
    fixed = max(mesh.fsdp, 1) * max(mesh.tensor, 1)
    data = mesh.data or num_devices // fixed
    if data * fixed != num_devices:
        raise errors.InvalidArgument(
            "mesh", f"data*fsdp*tensor = {data * fixed} != {num_devices} devices"
        )
    # Rows are split over data * fsdp devices, then each device's rows into microbatches.
    shards = data * max(mesh.fsdp, 1)
    if spec.global_batch_size % shards:
        raise errors.InvalidArgument(
            "global_batch_size",
            f"{spec.global_batch_size} not divisible by mesh.data*mesh.fsdp={shards}",
        )
    if spec.microbatches < 0:
        raise errors.InvalidArgument("microbatches", f"must be >= 0, got {spec.microbatches}")
    if spec.global_batch_size % (shards * max(spec.microbatches, 1)):
        raise errors.InvalidArgument(
            "microbatches",
            f"{spec.global_batch_size} sequences over {shards} batch shards do not split "
            f"into {spec.microbatches} microbatches",
        )
    if not spec.phases:
        raise errors.InvalidArgument("phases", "a run needs at least one phase")
    names = set()
    for i, phase in enumerate(spec.phases):
        field = f"phases[{i}]"
        if not phase.name:
            raise errors.InvalidArgument(f"{field}.name", "must be set")
        if phase.name in names:
            raise errors.InvalidArgument(f"{field}.name", f"{phase.name!r} is used twice")
        names.add(phase.name)
        if phase.token_budget <= 0:
            raise errors.InvalidArgument(
                f"{field}.token_budget", f"must be positive, got {phase.token_budget}"
            )
        init = phase.WhichOneof("init")
        if init is None:
            raise errors.InvalidArgument(
                f"{field}.init", "set one of from_scratch, init_checkpoint, continue_previous"
            )
        if init == "continue_previous" and i == 0:
            raise errors.InvalidArgument(
                f"{field}.continue_previous", "the first phase has nothing to continue"
            )
        if init == "init_checkpoint":
            if check_parents:
                _check_parent(f"{field}.init_checkpoint", phase.init_checkpoint, config)
        elif phase.with_optimizer:
            raise errors.InvalidArgument(f"{field}.with_optimizer", "needs init_checkpoint")
        _check_schedule(
            f"{field}.schedule", phase.schedule, first=(i == 0 and not phase.with_optimizer)
        )
        if not phase.mixture.stages:
            raise errors.InvalidArgument(
                f"{field}.mixture.stages", "a mixture needs at least one stage"
            )
        if check_mixture is not None:
            check_mixture(f"{field}.mixture", phase.mixture)


def _check_schedule(field: str, s: trainer_pb2.LRSchedule, *, first: bool) -> None:
    if s.kind == Kind.KIND_UNSPECIFIED:
        raise errors.InvalidArgument(
            f"{field}.kind", "must be set (COSINE, WARMUP_STABLE_DECAY, LINEAR_ANNEAL or CONSTANT)"
        )
    needs_peak = s.kind != Kind.LINEAR_ANNEAL or first
    if needs_peak and not s.peak_lr > 0:
        raise errors.InvalidArgument(f"{field}.peak_lr", f"must be positive, got {s.peak_lr}")
    if s.warmup_steps < 0:
        raise errors.InvalidArgument(f"{field}.warmup_steps", "must be >= 0")
    if s.final_lr < 0:
        raise errors.InvalidArgument(f"{field}.final_lr", "must be >= 0")
    if s.kind == Kind.WARMUP_STABLE_DECAY and not 0 < s.decay_fraction <= 1:
        raise errors.InvalidArgument(f"{field}.decay_fraction", "must be in (0, 1]")


def _check_parent(field: str, uri: str, config) -> None:
    try:
        meta = checkpoint.read_meta(uri)
    except checkpoint.NotFoundError as e:
        raise errors.NotFound(field, str(e)) from None
    except checkpoint.CheckpointError as e:
        raise errors.InvalidArgument(field, str(e)) from None
    parent = meta.get("model_config", {})
    for key in ("d_model", "num_layers", "num_heads", "d_ff"):
        if parent.get(key) != getattr(config, key):
            raise errors.InvalidArgument(
                field,
                f"parent {key}={parent.get(key)} does not match preset ({getattr(config, key)})",
            )
