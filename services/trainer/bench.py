"""Training throughput and MFU, end to end: data service, trainer loop, model.

For each preset a short run is trained through the real path (a local data
service process over gRPC, the Trainer loop with its metrics and
checkpoints); tokens/s comes from the loop's own logging intervals after the
first (which holds compilation), and MFU from libs.model.flops against the
matmul peak measured in this process (and, with --nominal_peak_tflops, against
a datasheet peak). The attention kernel is the platform's (splash on TPU, the
Pallas flash kernel on GPU, XLA on CPU). The last line is one JSON object.

On a GPU, the paper's 470m at sequence 8192:

    bazel run //services/trainer:bench -- --presets=470m --seq_len=8192 --batch=8 \
        --microbatches=2 --dtype=bfloat16 --steps=20 --nominal_peak_tflops=989
"""

from __future__ import annotations

import json
import statistics
import tempfile

import jax
from absl import app, flags, logging

from libs.model import flops
from proto import data_pb2, trainer_pb2
from services.trainer import data_link, spec as spec_lib
from services.trainer.events import EventLog
from services.trainer.train import Trainer

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["tiny", "small"], "Presets to measure.")
flags.DEFINE_integer("steps", 40, "Training steps per preset.")
flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
flags.DEFINE_integer("batch", 8, "Sequences per step.")
flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
flags.DEFINE_string("data_address", "", "Data service; default: start a local one.")
flags.DEFINE_integer("microbatches", 1, "Gradient-accumulation microbatches a step.")
flags.DEFINE_float(
    "nominal_peak_tflops",
    0.0,
    "Also report MFU against this datasheet peak (e.g. 989 for an H100/H200 in bfloat16 "
    "dense); 0: only against the measured peak.",
)


def _spec(preset: str, checkpoint_dir: str) -> trainer_pb2.RunSpec:
    mixture = data_pb2.MixtureSpec(
        name="code25",
        stages=[
            data_pb2.MixtureStage(
                weights=[
                    data_pb2.SourceWeight(source="text", weight=0.75),
                    data_pb2.SourceWeight(source="code", weight=0.25),
                ]
            )
        ],
    )
    steps = FLAGS.steps
    return spec_lib.with_defaults(
        trainer_pb2.RunSpec(
            run_id=f"bench-{preset}",
            preset=preset,
            global_batch_size=FLAGS.batch,
            seq_len=FLAGS.seq_len,
            compute_dtype=FLAGS.dtype,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_steps=10 * steps,
            log_every_steps=max(steps // 8, 1),
            microbatches=FLAGS.microbatches,
            data_address=FLAGS.data_address,
            phases=[
                trainer_pb2.Phase(
                    name="pretrain",
                    from_scratch=True,
                    token_budget=steps * FLAGS.batch * FLAGS.seq_len,
                    mixture=mixture,
                    schedule=trainer_pb2.LRSchedule(
                        kind=trainer_pb2.LRSchedule.COSINE, peak_lr=1e-3, warmup_steps=5
                    ),
                )
            ],
        )
    )


def main(argv):
    logging.set_verbosity(logging.WARNING)
    peak = flops.measure_peak_flops()
    print(
        f"device: {jax.devices()[0].device_kind}; matmul peak (best of float32 and "
        f"bfloat16) {peak / 1e9:.1f} GFLOP/s"
    )
    figures = {
        "device": jax.devices()[0].device_kind,
        "dtype": FLAGS.dtype,
        "seq_len": FLAGS.seq_len,
        "batch": FLAGS.batch,
        "microbatches": FLAGS.microbatches,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for preset in FLAGS.presets:
            spec = _spec(preset, tmp)
            link = data_link.connect(spec, echo=False)
            events = EventLog(spec.run_id)
            trainer = Trainer(
                spec,
                batches=link.batches,
                vocab_size=link.vocab_size,
                tokenizer_json=link.tokenizer_json,
                events=events,
                console=False,
                peak_flops=peak,
            )
            trainer.run()
            link.close()
            # Load on the machine while the peak was measured must not inflate MFU.
            peak = max(peak, flops.measure_peak_flops())
            metrics = [e.metrics for e in events.events() if e.WhichOneof("event") == "metrics"]
            steady = metrics[1:] or metrics  # the first interval holds compilation
            tps = statistics.median(m.tokens_per_second for m in steady)
            mfu = flops.mfu(tps, trainer.config, FLAGS.seq_len, peak)
            print(
                f"{preset:>6}: {tps:,.0f} tokens/s, MFU {mfu:.3f} "
                f"({flops.flops_per_token(trainer.config, FLAGS.seq_len) / 1e6:.1f} MFLOP/token, "
                f"final loss {metrics[-1].loss:.3f})"
            )
            figures[f"{preset}_tokens_per_s"] = round(tps)
            figures[f"{preset}_mfu"] = round(mfu, 4)
            figures[f"{preset}_attention"] = trainer.config.attention
            if FLAGS.nominal_peak_tflops > 0:
                nominal = flops.mfu(
                    tps, trainer.config, FLAGS.seq_len, FLAGS.nominal_peak_tflops * 1e12
                )
                print(
                    f"        MFU {nominal:.3f} against a nominal {FLAGS.nominal_peak_tflops:g} TFLOP/s"
                )
                figures[f"{preset}_mfu_nominal"] = round(nominal, 4)
    figures["matmul_peak_gflops"] = round(peak / 1e9, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    app.run(main)
