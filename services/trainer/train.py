"""The training loop: the phases of a RunSpec on JAX, with checkpoints and metrics.

One `Trainer` runs one RunSpec from start to finish, or from its last
committed checkpoint after a crash. Each phase gets its weights (scratch, a
parent checkpoint's weights with a fresh optimizer, or the previous phase's
state), its own learning-rate schedule and its own mixture; the data position
is the (phase, step) pair, since the data service's batches are a pure
function of it. Checkpoints carry the lineage: parent, phase, tokens per source.

The loop itself only steps (step.py's jitted program) and runs its hooks: logging
metrics to the sinks (sinks.py), checkpointing, and reporting committed checkpoints,
each with a cadence in steps and always at a phase's end. Before each step the
processes agree (one small all-gather) on whether to stop, which any one of them
may have been asked to, and on whether a checkpoint is due by process 0's clock,
so that all of them save the same step. Metrics and token counts are
summed on device and read back only when a hook needs them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from libs import storage
from libs.checkpoint import checkpoint
from libs.model import attention, flops, presets, sharding
from proto import spelling, trainer_pb2
from services.data.api.client import Batch
from services.trainer import schedules
from services.trainer.events import EventLog
from services.trainer.sinks import Sink, default_sinks, to_json
from services.trainer.spec import steps_of
from services.trainer.step import BATCH_FIELDS, StepProgram

# (phase index, phase, first step within the phase) -> that phase's batches: the data
# client's Batch (services/data/batch.py), of which the loop reads BATCH_FIELDS and
# source_names.
BatchSource = Callable[[int, trainer_pb2.Phase, int], Iterator[Batch]]


@dataclasses.dataclass
class Hook:
    """Something the loop does after every `every` steps and after a phase's last step."""

    name: str
    every: int
    run: Callable[["StepContext"], None]


@dataclasses.dataclass
class StepContext:
    """What a hook sees after a step."""

    pos: "Position"
    phase: trainer_pb2.Phase
    params: object
    opt_state: object
    lr: float
    phase_end: bool


@dataclasses.dataclass
class Position:
    """Where a run is; saved in every checkpoint's metadata."""

    step: int = 0  # optimizer steps done in the whole run
    phase_index: int = 0
    phase_step: int = 0  # steps done in the current phase
    tokens_seen: int = 0
    tokens_per_source: dict = dataclasses.field(default_factory=dict)
    phases_done: list = dataclasses.field(default_factory=list)
    parent_uri: str = ""  # what the current phase started from
    last_lr: float = 0.0  # where the previous step's schedule was
    phase_start_lr: float = -1.0  # what a carried-on phase anneals from (-1: its own peak)
    last_uri: str = ""  # newest checkpoint written


def model_config(spec: trainer_pb2.RunSpec, vocab_size: int, platform: str):
    """The model a RunSpec trains: its preset with the tokenizer's vocabulary, the spec's
    dtype, remat policy and attention (unset: the preset's remat, the platform's kernel)."""
    base = presets.get_preset(spec.preset)
    remat = spelling.spelled(trainer_pb2.Remat, spec.remat) if spec.remat else base.remat
    attn = (
        spelling.spelled(trainer_pb2.Attention, spec.attention)
        if spec.attention
        else attention.for_platform(platform)
    )
    return dataclasses.replace(
        base,
        vocab_size=vocab_size,
        max_seq_len=max(base.max_seq_len, spec.seq_len),
        dtype=spec.compute_dtype,
        remat=remat,
        attention=attn,
    )


def make_mesh(mesh_spec: trainer_pb2.Mesh, devices=None):
    """The (data, fsdp, tensor) mesh of a RunSpec over `devices` (default: all)."""
    devices = jax.devices() if devices is None else devices
    fsdp, tensor = max(mesh_spec.fsdp, 1), max(mesh_spec.tensor, 1)
    data = mesh_spec.data or len(devices) // (fsdp * tensor)
    return sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor, devices=devices)


class Trainer:
    def __init__(
        self,
        spec: trainer_pb2.RunSpec,
        *,
        batches: BatchSource,
        vocab_size: int,
        tokenizer_json: str,
        events: EventLog,
        stop: threading.Event | None = None,
        console: bool = True,
        peak_flops: float | None = None,
    ):
        self.spec = spec
        # A local path or a gs:// URI: everything under it goes through libs/storage.
        self.run_dir = storage.join(spec.checkpoint_dir, spec.run_id)
        storage.makedirs(self.run_dir)
        # One code path for one CPU and for a slice: a (data, fsdp, tensor) mesh
        # over every device of every process; process 0 alone reports.
        self.primary = jax.process_index() == 0
        self.mesh = make_mesh(spec.mesh)
        self.config = model_config(spec, vocab_size, self.mesh.devices.flat[0].platform)
        self.writer = checkpoint.CheckpointWriter(
            storage.join(self.run_dir, "checkpoints"), keep=spec.keep_checkpoints
        )
        self.events = events
        self.stop_event = stop or threading.Event()
        self._batches = batches
        self._tokenizer_json = tokenizer_json
        self._console = console
        self.phase_steps = [steps_of(spec, p) for p in spec.phases]
        self.program = StepProgram.build(
            self.config, self.mesh, spec.optimizer, microbatches=spec.microbatches
        )
        self.param_shardings = self.program.param_shardings
        self._abstract_params = self.program.abstract_params
        self._abstract_opt = self.program.abstract_opt
        self._step_fn = self.program.jitted()
        tokens_per_step = spec.global_batch_size * spec.seq_len
        self.sinks: list[Sink] = (
            default_sinks(self.run_dir, events, console=console, tokens_per_step=tokens_per_step)
            if self.primary
            else []
        )
        self.hooks = [
            Hook("log", spec.log_every_steps, self._log_interval),
            Hook("checkpoint", spec.checkpoint_every_steps, self._checkpoint),
            Hook("committed", 1, lambda ctx: self._emit_committed(self.writer.committed())),
        ]
        self._peak = peak_flops
        self.final_source_loss: dict[str, float] = {}
        # Summed on device since they were last read: step metrics for the log interval,
        # tokens per source for the position.
        self._interval = None
        self._interval_start = time.perf_counter()
        self._interval_tokens = 0
        self._unread_tokens = None
        # The current phase's sources, which index the per-source sums of the step.
        self._source_names: tuple[str, ...] = ()
        self._unreported: dict[int, dict] = {}  # step -> record of a save not yet committed
        self._last_save_time = time.monotonic()  # for checkpoint_every_seconds

    # -- phases ----------------------------------------------------------------------

    def _start_phase(self, pos: Position, params, opt_state):
        phase = self.spec.phases[pos.phase_index]
        init = phase.WhichOneof("init")
        if init == "from_scratch":
            params = self.program.init_params(self.spec.seed)
            opt_state = self.program.init_opt(params)
            pos.parent_uri = ""
        elif init == "init_checkpoint":
            params = checkpoint.load_params(
                phase.init_checkpoint, self.config, self.param_shardings
            )
            pos.parent_uri = phase.init_checkpoint
            if phase.with_optimizer:
                opt_state = checkpoint.load_optimizer(phase.init_checkpoint, self._abstract_opt)
                parent = checkpoint.read_meta(phase.init_checkpoint)["position"]
                pos.last_lr = parent["last_lr"]
            else:
                opt_state = self.program.init_opt(params)
        else:  # continue_previous: same weights and optimizer state
            pos.parent_uri = pos.last_uri
        return params, opt_state

    def _resume(self) -> tuple[Position, object, object] | None:
        step = self.writer.latest_step()
        if step is None:
            return None
        params, opt_state, meta = self.writer.restore(
            step, self._abstract_params, self._abstract_opt
        )
        pos = Position(**meta["position"])
        return pos, params, opt_state

    def resumable(self) -> bool:
        return self.writer.latest_step() is not None

    # -- the loop --------------------------------------------------------------------

    def run(self) -> trainer_pb2.RunState:
        resumed = self._resume()
        if resumed:
            pos, params, opt_state = resumed
            self._log(
                f"resuming {self.spec.run_id} at step {pos.step} "
                f"(phase {self.spec.phases[min(pos.phase_index, len(self.spec.phases) - 1)].name}, "
                f"step {pos.phase_step})"
            )
        else:
            pos, params, opt_state = Position(), None, None
        if self._peak is None:  # one chip's: the datasheet's, or measured on a CPU
            self._peak, _ = flops.peak_flops_per_chip(self.mesh.devices.flat[0])
        self._status(trainer_pb2.RUNNING, pos)
        total_steps = sum(self.phase_steps)
        state = trainer_pb2.SUCCEEDED
        while pos.phase_index < len(self.spec.phases):
            phase = self.spec.phases[pos.phase_index]
            num_steps = self.phase_steps[pos.phase_index]
            if pos.phase_step == 0:
                params, opt_state = self._start_phase(pos, params, opt_state)
                # Fixed when the phase starts, so a resumed phase rebuilds the same schedule.
                carries_on = phase.WhichOneof("init") == "continue_previous" or phase.with_optimizer
                pos.phase_start_lr = pos.last_lr if carries_on else -1.0
            start_lr = pos.phase_start_lr if pos.phase_start_lr >= 0 else None
            schedule = schedules.build(phase.schedule, num_steps, start_lr)
            if pos.phase_step < num_steps:
                params, opt_state, stopped = self._run_phase(
                    pos, phase, num_steps, schedule, params, opt_state, total_steps
                )
                if stopped:
                    state = trainer_pb2.STOPPED
                    break
            pos.phases_done.append(phase.name)
            pos.phase_index += 1
            pos.phase_step = 0
            pos.last_lr = float(schedule(num_steps - 1))
        self._emit_committed(self.writer.wait())
        self._status(state, pos)
        for sink in self.sinks:
            sink.close()
        self.writer.close()
        return state

    def _run_phase(self, pos, phase, num_steps, schedule, params, opt_state, total_steps):
        batches = self._batches(pos.phase_index, phase, pos.phase_step)
        self._total_steps = total_steps
        self._interval_start, self._interval_tokens, self._interval = time.perf_counter(), 0, None
        while pos.phase_step < num_steps:
            stop, save_due = self._agree()
            # A time-based save waits for a step of this phase (its start is saved already).
            save_due = save_due and pos.phase_step > 0
            if (stop or save_due) and pos.last_uri != self.writer.uri(pos.step):
                self._save(pos, params, opt_state, phase_end=False)  # not saved at this step yet
            if stop:
                return params, opt_state, True
            batch = next(batches)
            lr = float(schedule(pos.phase_step))
            # Each process holds its own rows of the global batch.
            arrays = {
                name: jax.make_array_from_process_local_data(
                    self.program.batch_sharding, getattr(batch, name)
                )
                for name in BATCH_FIELDS
            }
            with jax.set_mesh(self.mesh):
                params, opt_state, metrics = self._step_fn(params, opt_state, arrays, lr)
            tokens = metrics.pop("source_tokens")
            self._source_names = tuple(batch.source_names)
            metrics["steps"] = 1
            self._interval = _add(self._interval, metrics)
            self._unread_tokens = _add(self._unread_tokens, tokens)
            self._interval_tokens += batch.tokens.size * jax.process_count()
            pos.step += 1
            pos.phase_step += 1
            pos.last_lr = lr
            ctx = StepContext(
                pos,
                phase,
                params,
                opt_state,
                lr,
                phase_end=pos.phase_step == num_steps,
            )
            for hook in self.hooks:
                if ctx.phase_end or pos.step % hook.every == 0:
                    hook.run(ctx)
        return params, opt_state, False

    def _agree(self) -> tuple[bool, bool]:
        """(stop now, save now by time), the same on every process, before each step.

        A stop request reaches one host (its SIGTERM) and a clock differs per host; a
        process that stopped or saved alone would leave the others waiting in the next
        step's collectives. So every process contributes its stop flag, process 0 its
        clock's verdict, and all act on the gathered flags: any stop stops everyone at
        the same step. One all-gather of two integers per step: a few ms on CPUs over
        gloo, small beside a step of a model worth a slice."""
        every = self.spec.checkpoint_every_seconds
        due = self.primary and every > 0 and time.monotonic() - self._last_save_time >= every
        local = np.array([self.stop_event.is_set(), due], dtype=np.int32)
        if jax.process_count() > 1:
            local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2).max(0)
        return bool(local[0]), bool(local[1])

    def _read_tokens(self, pos: Position) -> None:
        """Add the tokens counted on device since the last read to the position."""
        if self._unread_tokens is None:
            return
        counts = jax.device_get(self._unread_tokens)
        self._unread_tokens = None
        for name, count in zip(self._source_names, counts):
            if count:
                pos.tokens_per_source[name] = pos.tokens_per_source.get(name, 0) + int(count)
        pos.tokens_seen += int(counts.sum())

    def _checkpoint(self, ctx: StepContext) -> None:
        self._save(ctx.pos, ctx.params, ctx.opt_state, phase_end=ctx.phase_end)

    # -- checkpoints, metrics, events -----------------------------------------------

    def _save(self, pos: Position, params, opt_state, *, phase_end: bool) -> None:
        self._read_tokens(pos)  # the position saved counts every step trained
        jax.block_until_ready(params)
        pos.last_uri = self.writer.uri(pos.step)
        # One resumable record; the lineage is derived from it (checkpoint.lineage).
        meta = {
            "position": dataclasses.asdict(pos),
            "phase_end": phase_end,
            "model_config": self.config.portable().to_dict(),
            "tokenizer_json": self._tokenizer_json,
            "run_spec": json.loads(to_json(self.spec)),
        }
        self._unreported[pos.step] = meta
        self.writer.save(pos.step, params, opt_state, meta, protect=phase_end)
        self._last_save_time = time.monotonic()

    def _emit_committed(self, committed) -> None:
        for step, uri in committed:
            meta = self._unreported.pop(step)
            if not self.primary:
                continue
            lineage = trainer_pb2.Lineage(**checkpoint.lineage(meta))
            self.events.append(
                checkpoint=trainer_pb2.CheckpointCommitted(
                    step=step, uri=uri, lineage=lineage, phase_end=bool(meta.get("phase_end"))
                )
            )
            self._log(f"checkpoint committed: step {step} -> {uri}")

    def _log_interval(self, ctx: StepContext) -> None:
        """Metrics of the steps since the last log, to every sink."""
        self._read_tokens(ctx.pos)
        elapsed = time.perf_counter() - self._interval_start
        tokens_per_s = self._interval_tokens / max(elapsed, 1e-9)
        metrics = jax.device_get(self._interval)
        self._interval_start, self._interval_tokens, self._interval = time.perf_counter(), 0, None
        if not self.primary:
            return
        source_loss = {
            name: float(metrics["source_loss_sum"][i] / metrics["source_count"][i])
            for i, name in enumerate(self._source_names)
            if metrics["source_count"][i] > 0
        }
        self.final_source_loss.update(source_loss)
        steps = metrics["steps"]  # loss and gradient norm are means over the interval
        record = trainer_pb2.Metrics(
            step=ctx.pos.step,
            phase=ctx.phase.name,
            loss=float(metrics["loss"] / steps),
            source_loss=source_loss,
            tokens_per_second=tokens_per_s,
            mfu=flops.mfu(
                tokens_per_s,
                self.config,
                self.spec.seq_len,
                self._peak,
                chips=self.mesh.devices.size,
            ),
            learning_rate=ctx.lr,
            grad_norm=float(metrics["grad_norm"] / steps),
            tokens_seen=ctx.pos.tokens_seen,
        )
        for sink in self.sinks:
            sink.write(record, step=ctx.pos.step, total_steps=self._total_steps)

    def _status(self, state, pos: Position) -> None:
        if not self.primary:
            return
        phase = self.spec.phases[min(pos.phase_index, len(self.spec.phases) - 1)]
        self.events.append(
            status=trainer_pb2.RunStatus(
                run_id=self.spec.run_id,
                state=state,
                step=pos.step,
                phase=phase.name,
                latest_checkpoint=pos.last_uri,
            )
        )

    def _log(self, text: str) -> None:
        if self._console and self.primary:
            print(text, file=sys.stdout, flush=True)


def _add(total, new):
    """Elementwise sum of two trees of device arrays (None: nothing yet)."""
    return new if total is None else jax.tree.map(jnp.add, total, new)
