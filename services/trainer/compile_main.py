"""Does a run's training step fit a TPU slice? Compile it ahead of time and see.

    bazel run //services/trainer:compile -- --preset=470m --topology=v5e-16 \\
        --global_batch_size=512 --seq_len=8192 [--microbatches=K | --auto]
    bazel run //services/trainer:compile -- --spec=studies/specs/470m.textproto --topology=v5e-16

Prints per-chip memory against the chip's usable HBM, the step's FLOPs, the mesh, the
microbatches and the remat policy, and ends with one JSON line. Exits 1 when the step does
not fit. Runs on a CPU-only host (libtpu compiles for the topology); see aot.py.
"""

from __future__ import annotations

from services.trainer import aot

aot.use_libtpu()  # before JAX starts any backend

import json  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from libs import errors  # noqa: E402
from libs.cli import logs, paths  # noqa: E402
from libs.model import flops, presets  # noqa: E402
from proto import study_pb2, trainer_pb2  # noqa: E402
from services.trainer import spec as spec_lib  # noqa: E402
from services.trainer import train  # noqa: E402
from services.trainer.step import StepProgram  # noqa: E402

FLAGS = flags.FLAGS
# The paper's training budget: what the chip-hours are quoted for.
TOKENS_PER_TRAINING = 200e9
flags.DEFINE_string("topology", "v5e-16", f"TPU slice: one of {', '.join(aot.TOPOLOGY_SHAPES)}.")
flags.DEFINE_string("spec", "", "A study spec (textproto): take preset, batch, mesh, ... from it.")
flags.DEFINE_string("preset", "470m", "Model preset.")
flags.DEFINE_integer("global_batch_size", 512, "Sequences per step, all devices together.")
flags.DEFINE_integer("seq_len", 8192, "Tokens per sequence.")
flags.DEFINE_integer("microbatches", 0, "Gradient-accumulation microbatches (0: the spec's, or 1).")
flags.DEFINE_bool("auto", False, "Pick the fewest microbatches that fit.")
flags.DEFINE_enum("remat", "", ["", "none", "full", "save_dots"], "Remat policy ('': preset's).")
flags.DEFINE_enum("attention", "", ["", "xla", "splash"], "Attention ('': splash on TPU).")
flags.DEFINE_list("mesh", [], "data,fsdp,tensor (default: the spec's, or fsdp over every chip).")
flags.DEFINE_string("dtype", "bfloat16", "Compute dtype (a spec's own wins).")
flags.DEFINE_float("min_headroom", 0.0, "Fail unless at least this fraction of HBM is left.")


def _run_spec(num_devices: int) -> trainer_pb2.RunSpec:
    """The RunSpec whose step is compiled: from --spec and the flags, flags winning."""
    spec = trainer_pb2.RunSpec(
        run_id="compile",
        preset=FLAGS.preset,
        global_batch_size=FLAGS.global_batch_size,
        seq_len=FLAGS.seq_len,
        compute_dtype=FLAGS.dtype,
        mesh=trainer_pb2.Mesh(data=1, fsdp=num_devices, tensor=1),
        microbatches=1,
    )
    if FLAGS.spec:
        with open(paths.resolve(FLAGS.spec)) as f:
            study = text_format.Parse(f.read(), study_pb2.Study())
        spec.preset = study.preset or spec.preset
        spec.global_batch_size = study.global_batch_size or spec.global_batch_size
        spec.seq_len = study.seq_len or spec.seq_len
        spec.compute_dtype = study.compute_dtype or spec.compute_dtype
        spec.microbatches = study.microbatches or 1
        spec.remat, spec.attention = study.remat, study.attention
        if study.HasField("mesh"):
            spec.mesh.CopyFrom(study.mesh)
    for flag in ("preset", "global_batch_size", "seq_len"):
        if FLAGS[flag].present:
            setattr(spec, flag, FLAGS[flag].value)
    if FLAGS.microbatches:
        spec.microbatches = FLAGS.microbatches
    if FLAGS.remat:
        spec.remat = trainer_pb2.Remat.Value(f"REMAT_{FLAGS.remat.upper()}")
    if FLAGS.attention:
        spec.attention = trainer_pb2.Attention.Value(f"ATTENTION_{FLAGS.attention.upper()}")
    if FLAGS.mesh:
        data, fsdp, tensor = (int(x) for x in FLAGS.mesh)
        spec.mesh.CopyFrom(trainer_pb2.Mesh(data=data, fsdp=fsdp, tensor=tensor))
    return spec


def _validate(spec: trainer_pb2.RunSpec, num_devices: int) -> None:
    """The trainer's own checks of the fields that shape the step."""
    probe = trainer_pb2.RunSpec()
    probe.CopyFrom(spec)
    probe.phases.add(name="compile", from_scratch=True, token_budget=1).schedule.CopyFrom(
        trainer_pb2.LRSchedule(kind=trainer_pb2.LRSchedule.CONSTANT, peak_lr=1e-3)
    )
    probe.phases[0].mixture.stages.add()
    spec_lib.validate(spec_lib.with_defaults(probe), num_devices=num_devices)


def _compile(spec, devices, hbm):
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


def main(argv):
    del argv
    logs.quiet_libraries()
    devices = aot.topology_devices(FLAGS.topology)
    hbm = aot.usable_hbm_bytes(devices[0])
    spec = _run_spec(len(devices))
    try:
        _validate(spec, len(devices))
    except errors.FieldError as e:
        raise app.UsageError(str(e)) from None
    shards = max(spec.mesh.data, 1) * max(spec.mesh.fsdp, 1)
    choices = (
        aot.microbatch_choices(spec.global_batch_size, shards)
        if FLAGS.auto
        else [spec.microbatches]
    )
    for k in choices:
        spec.microbatches = k
        config, mesh, result = _compile(spec, devices, hbm)
        print(
            f"microbatches {k:>3}: {_gib(result.bytes_per_chip)} of {_gib(hbm)} "
            f"({'fits' if result.fits else 'does not fit'}; compile {result.compile_s:.0f} s)",
            flush=True,
        )
        if result.fits:
            break
    tokens = spec.global_batch_size * spec.seq_len
    flops_per_step = flops.flops_per_token(config, spec.seq_len) * tokens
    ok = result.fits and result.headroom >= FLAGS.min_headroom
    mesh_shape = dict(mesh.shape)
    # A device is a chip, except on v4, which libtpu compiles for one TensorCore a device.
    print(f"topology   {FLAGS.topology}: {len(devices)} devices, {devices[0].device_kind}")
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
    if not result.fits and not FLAGS.auto:
        print("hint       --auto tries more microbatches; --remat=full keeps less per layer")
    print(
        json.dumps(
            {
                "topology": FLAGS.topology,
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
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    app.run(main)
