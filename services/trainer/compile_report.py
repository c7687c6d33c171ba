"""Does a run's training step fit a TPU slice? The compile tool's report.

The step (step.py: the same function, shardings, microbatches, remat and
attention kernel) is lowered for a topology's devices and compiled by libtpu
on a CPU host (libs/tpu/aot.py); `report` prints per-chip memory against the chip's
usable HBM, the step's FLOPs (the model's and XLA's count), its time bound and
chip-hours, and one JSON line. Used by the compile tool (compile_main.py) and
by the trainer's `--compile_only`, which also compiles the sharded
initialisation of parameters and optimizer state.
"""

from __future__ import annotations

import json
import math

import jax
from google.protobuf import text_format

from libs.model import flops, presets
from libs.tpu import aot
from proto import study_pb2, trainer_pb2
from services.trainer import train
from services.trainer import spec as spec_lib
from services.trainer.step import StepProgram

# The paper's training budget: what the chip-hours are quoted for.
TOKENS_PER_TRAINING = 200e9


def spec_from_study(path: str, num_devices: int) -> trainer_pb2.RunSpec:
    """The RunSpec whose step a study spec (textproto at `path`) trains: preset, batch,
    sequence, dtype, microbatches, remat, attention and mesh (default: fsdp over every
    device)."""
    with open(path) as f:
        study = text_format.Parse(f.read(), study_pb2.Study())
    spec = trainer_pb2.RunSpec(
        run_id="compile",
        preset=study.preset or "470m",
        global_batch_size=study.global_batch_size or 512,
        seq_len=study.seq_len or 8192,
        compute_dtype=study.compute_dtype or "bfloat16",
        mesh=trainer_pb2.Mesh(data=1, fsdp=num_devices, tensor=1),
        microbatches=study.microbatches or 1,
        remat=study.remat,
        attention=study.attention,
    )
    if study.HasField("mesh"):
        spec.mesh.CopyFrom(study.mesh)
    return spec


def validate(spec: trainer_pb2.RunSpec, num_devices: int) -> None:
    """The trainer's own checks of the fields that shape the step."""
    probe = trainer_pb2.RunSpec()
    probe.CopyFrom(spec)
    probe.ClearField("phases")  # a run's phases are checked when it starts, not here
    probe.phases.add(name="compile", from_scratch=True, token_budget=1).schedule.CopyFrom(
        trainer_pb2.LRSchedule(kind=trainer_pb2.LRSchedule.CONSTANT, peak_lr=1e-3)
    )
    probe.phases[0].mixture.stages.add()
    spec_lib.validate(spec_lib.with_defaults(probe), num_devices=num_devices)


def compile_for(spec, devices, hbm):
    mesh = train.make_mesh(spec.mesh, devices)
    config = train.model_config(
        spec, presets.get_preset(spec.preset).vocab_size, devices[0].platform
    )
    program = StepProgram.build(
        config, mesh, spec_lib.with_defaults(spec).optimizer, microbatches=spec.microbatches
    )
    return config, mesh, aot.compile_step(program, spec.global_batch_size, spec.seq_len, hbm)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(
    spec: trainer_pb2.RunSpec,
    devices,
    *,
    topology: str,
    auto: bool = False,
    min_headroom: float = 0.0,
    startup: bool = False,
) -> bool:
    """Compiles `spec`'s step for `devices` (a topology's), prints the report and its
    JSON line, and returns whether it fits with `min_headroom`. `startup` also compiles
    the trainer's sharded initialisation of parameters and optimizer state."""
    hbm = aot.usable_hbm_bytes(devices[0])
    spec = spec_lib.with_defaults(spec)  # the trainer's defaults (dtype, ...) for unset fields
    spec.microbatches = spec.microbatches or 1
    # An unset mesh axis as the trainer reads it (train.make_mesh): data takes the rest.
    spec.mesh.fsdp, spec.mesh.tensor = max(spec.mesh.fsdp, 1), max(spec.mesh.tensor, 1)
    spec.mesh.data = spec.mesh.data or len(devices) // (spec.mesh.fsdp * spec.mesh.tensor)
    validate(spec, len(devices))  # errors.FieldError names the field
    shards = max(spec.mesh.data, 1) * max(spec.mesh.fsdp, 1)
    choices = (
        aot.microbatch_choices(spec.global_batch_size, shards) if auto else [spec.microbatches]
    )
    for k in choices:
        spec.microbatches = k
        config, mesh, result = compile_for(spec, devices, hbm)
        print(
            f"microbatches {k:>3}: {_gib(result.bytes_per_chip)} of {_gib(hbm)} "
            f"({'fits' if result.fits else 'does not fit'}; compile {result.compile_s:.0f} s)",
            flush=True,
        )
        if result.fits:
            break
    tokens = spec.global_batch_size * spec.seq_len
    flops_per_step = flops.flops_per_token(config, spec.seq_len) * tokens
    ok = result.fits and result.headroom >= min_headroom
    mesh_shape = dict(mesh.shape)
    # A device is a chip, except on v4, which libtpu compiles for one TensorCore a device.
    print(f"topology   {topology}: {len(devices)} devices, {devices[0].device_kind}")
    print(f"mesh       {mesh_shape}")
    print(
        f"step       preset {spec.preset}, {spec.global_batch_size} x {spec.seq_len} tokens, "
        f"{spec.compute_dtype}, {spec.microbatches} microbatches of "
        f"{spec.global_batch_size // spec.microbatches // shards} sequences a chip, "
        f"remat {config.remat}, attention {config.attention}, loss chunks of "
        f"{config.logits_chunk or spec.seq_len} tokens"
    )
    print(
        f"per chip   arguments {_gib(result.argument_bytes)}, outputs {_gib(result.output_bytes)} "
        f"(aliased {_gib(result.alias_bytes)}), temporaries {_gib(result.temp_bytes)}, "
        f"code {_gib(result.code_bytes)}"
    )
    print(
        f"total      {_gib(result.bytes_per_chip)} of {_gib(hbm)} usable HBM "
        f"(headroom {result.headroom:.1%}): {'FITS' if result.fits else 'DOES NOT FIT'}"
    )
    print(
        f"flops      {flops_per_step:.3e} model FLOPs a step (6N + 6LdT per token, causal, "
        f"libs/model/flops.py)"
    )
    # Time and cost: XLA's count of the compiled step against the chip's datasheet.
    chip = flops.chip_for(devices[0].device_kind)
    roofline_s = chip_hours = model_s = 0.0
    if chip is not None and result.xla_flops:
        roofline_s = result.roofline_s(chip.bf16_flops, chip.hbm_bytes_per_s)
        model_s = flops_per_step / (len(devices) * chip.bf16_flops)  # at MFU 1
        steps = TOKENS_PER_TRAINING / tokens
        chip_hours = steps * max(roofline_s, model_s) * len(devices) / 3600
        # XLA counts a while loop's body once (the scanned layers, the microbatch
        # loop) and not Pallas kernels (splash attention): its figures undercount a
        # scanned step, so the bound also takes the model's own FLOPs at MFU 1.
        print(
            f"xla        {result.xla_flops:.3e} FLOPs and {result.xla_bytes:.3e} bytes a chip a step "
            f"(cost analysis: loop bodies once, custom kernels not counted)"
        )
        print(
            f"roofline   step >= {max(roofline_s, model_s):.2f} s on {chip.name} "
            f"({chip.bf16_flops / 1e12:.0f} TFLOP/s bf16, {chip.hbm_bytes_per_s / 1e9:.0f} GB/s): "
            f"model FLOPs at MFU 1 {model_s:.2f} s, XLA's count {roofline_s:.2f} s"
        )
        print(
            f"cost       {chip_hours:,.0f} chip-hours per {TOKENS_PER_TRAINING / 1e9:.0f}B tokens "
            f"at that bound; {chip_hours / 0.5:,.0f} at MFU 0.5"
        )
    if startup:
        _startup(spec, config, mesh)
    if not result.fits and not auto:
        print("hint       --auto tries more microbatches; --remat=full keeps less per layer")
    print(
        json.dumps(
            {
                "topology": topology,
                "devices": len(devices),
                "preset": spec.preset,
                "global_batch_size": spec.global_batch_size,
                "seq_len": spec.seq_len,
                "mesh": mesh_shape,
                "microbatches": spec.microbatches,
                "remat": config.remat,
                "attention": config.attention,
                "logits_chunk": config.logits_chunk,
                "argument_bytes_per_chip": result.argument_bytes,
                "temp_bytes_per_chip": result.temp_bytes,
                "bytes_per_chip": result.bytes_per_chip,
                "hbm_bytes_per_chip": hbm,
                "headroom": round(result.headroom, 4),
                "flops_per_step": flops_per_step,
                "xla_flops_per_chip": result.xla_flops,
                "xla_bytes_per_chip": result.xla_bytes,
                "roofline_step_s": round(max(roofline_s, model_s), 4),
                "chip_hours_per_200b_tokens": round(chip_hours, 1),
                "fits": result.fits,
                "compile_s": round(result.compile_s, 1),
            }
        )
    )
    return ok


def _startup(spec: trainer_pb2.RunSpec, config, mesh) -> None:
    """The trainer's start-up past the step: parameters and optimizer state created in
    their shards (the jitted initialisers compiled for the topology), and the sharded
    shapes a checkpoint restore would produce (the step's own argument shapes)."""
    program = StepProgram.build(
        config, mesh, spec_lib.with_defaults(spec).optimizer, microbatches=spec.microbatches
    )
    with jax.set_mesh(mesh):
        params = (
            jax.jit(lambda: program.init_params(0), out_shardings=program.param_shardings)
            .lower()
            .compile()
        )
        opt = (
            jax.jit(program.tx.init, out_shardings=program.opt_shardings)
            .lower(program.abstract_params)
            .compile()
        )
    for name, compiled, tree in (
        ("parameters", params, program.abstract_params),
        ("optimizer", opt, program.abstract_opt),
    ):
        shard_bytes = sum(
            math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
            for x in jax.tree.leaves(tree)
        )
        out = compiled.memory_analysis().output_size_in_bytes
        print(
            f"startup    {name}: {len(jax.tree.leaves(tree))} arrays initialised in their shards, "
            f"{_gib(shard_bytes)} a chip restored ({_gib(out)} a chip compiled)"
        )
