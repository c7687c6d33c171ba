"""Evaluation throughput on this machine: scoring, generation and sandboxed programs.

- multiple choice: HellaSwag examples/s through LanguageModel.loglikelihood (4 requests
  an example), twice in the same process: packed and length-bucketed (scoring.py, what
  the evaluator uses) and through libs/model's padded batches (`packed=False`: rows of
  one request padded to a power-of-two length, full logits), with the ratio; and the
  padded path's MFU: real (unpadded) tokens/s times the forward FLOPs per token
  (libs/model's training FLOPs / 3) over the matmul peak measured in this same
  process, with the padding its length buckets add;
- continuous metrics: the evaluator's HellaSwag acc_norm, gold BPB, normalised gold
  probability and margin with their bootstrap intervals (a random model: near chance,
  BPB near log2 of the vocabulary per token);
- generation: new tokens/s of greedy TriviaQA answers (KV-cache decoding);
- code: MBPP reference programs/s through the sandbox (run_many, one per CPU).

A random model of the chosen preset with a BPE of the preset's vocabulary trained on
the benchmark text: throughput does not depend on the weights. The last line printed
is one JSON object with every figure.

    bazel run //services/eval:bench -- --preset=tiny
"""

import os

# As libs/model/bench.py: oneDNN matmuls were the fastest here; set before jax loads.
if "xla_cpu_use_onednn" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_onednn=true"
    ).strip()

import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from libs.model import flops, model as model_lib, presets  # noqa: E402
from services.eval import code_exec, evaluator, flag_defs, tasks  # noqa: E402
from services.eval.lm import LanguageModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", "Model preset (libs/model presets).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("mc_examples", 128, "HellaSwag examples timed.")
flags.DEFINE_integer("gen_prompts", 32, "TriviaQA prompts timed.")
flags.DEFINE_integer("gen_tokens", 64, "New tokens per prompt.")
flags.DEFINE_integer("programs", 100, "MBPP reference programs timed.")
flags.DEFINE_integer("batch_size", 16, "Rows per scoring / generation batch.")


def _tokenizer(vocab_size: int, benchmarks_dir: str, cache_dir: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    for name in ("arc_easy", "boolq", "triviaqa", "mbpp"):
        ds = tasks.load_examples(
            tasks.TASKS[name], benchmarks_dir=benchmarks_dir, cache_dir=cache_dir, limit=2000
        )
        texts += [json.dumps(row) for row in ds]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<pad>", "<eos>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return tok


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _mc_seconds(lm: LanguageModel, requests: list[tuple[str, str]]) -> float:
    lm.loglikelihood(requests[: 4 * lm.batch_size])  # compile the common buckets
    lm.loglikelihood(requests)  # and the rest
    _, seconds = _timed(lambda: lm.loglikelihood(requests))
    return seconds


def bench_multiple_choice(lm: LanguageModel, examples: list[dict], peak: float) -> dict:
    requests = [r for ex in examples for r in evaluator.mc_requests(ex)]
    padded_lm = LanguageModel(lm.model, lm.tokenizer, batch_size=lm.batch_size, packed=False)
    packed_s = _mc_seconds(lm, requests)
    padded_s = _mc_seconds(padded_lm, requests)
    cfg = lm.cfg
    lengths = [min(sum(map(len, lm.encode_pair(c, x))) - 1, cfg.max_seq_len) for c, x in requests]
    tokens = sum(lengths)
    mean_len = tokens / len(lengths)
    # The model's training FLOPs per token are forward + backward = 3 x forward.
    forward_flops = flops.flops_per_token(cfg, max(1, round(mean_len))) / 3
    padded = sum(_padded_rows(lengths, lm.batch_size, cfg.max_seq_len))
    return {
        "mc_examples_per_s": len(examples) / packed_s,
        "mc_examples_per_s_padded": len(examples) / padded_s,
        "mc_packed_speedup": padded_s / packed_s,
        "mc_tokens_per_s": tokens / packed_s,
        "mc_padded_mfu": tokens / padded_s * forward_flops / peak,
        "mc_padded_padding_fraction": 1 - tokens / padded,
        "mc_mean_tokens": mean_len,
    }


def continuous_metrics(lm: LanguageModel, ev: evaluator.Evaluator, limit: int) -> dict:
    r = ev.evaluate_task(lm, tasks.TASKS["hellaswag"], limit=limit)
    out = {f"hellaswag_{r.metric}": r.value, f"hellaswag_{r.metric}_ci": [r.ci_low, r.ci_high]}
    for name in evaluator.CONTINUOUS:
        out[f"hellaswag_{name}"] = r.extra[name]
        out[f"hellaswag_{name}_ci"] = list(r.intervals[name])
    return out


def _padded_rows(lengths, batch_size, max_len):
    # What decode.score_continuations computes on: batches of similar lengths, each
    # padded to a power-of-two bucket (at least 16) and to a full batch.
    ordered = sorted(lengths, reverse=True)
    for first in range(0, len(ordered), batch_size):
        longest = ordered[first]
        bucket = min(max(16, 1 << (longest - 1).bit_length()), max_len)
        yield bucket * batch_size


def bench_generation(lm: LanguageModel, prompts: list[str], new_tokens: int) -> dict:
    lm.generate(prompts, max_new_tokens=new_tokens)  # compile
    _, seconds = _timed(lambda: lm.generate(prompts, max_new_tokens=new_tokens))
    generated = len(prompts) * new_tokens  # no stop strings: every row runs to the end
    return {"gen_tokens_per_s": generated / seconds, "gen_prompts_per_s": len(prompts) / seconds}


def bench_sandbox(examples: list[dict]) -> dict:
    runner = code_exec.CodeRunner(parallelism=flag_defs.sandbox_parallelism())
    jobs = [(code_exec.program(ex, ex["canonical_solution"]), ex["tests"]) for ex in examples]
    runner.passed(jobs[:4])  # warm up
    passed, seconds = _timed(lambda: runner.passed(jobs))
    assert all(passed), "a reference solution failed in the sandbox"
    return {"sandbox_programs_per_s": len(jobs) / seconds}


def main(argv):
    del argv
    benchmarks_dir = flag_defs.benchmarks_dir()
    cache_dir = FLAGS.cache_dir or tempfile.mkdtemp(prefix="eval_bench_")
    cfg = presets.get_preset(FLAGS.preset)
    tok = _tokenizer(cfg.vocab_size, benchmarks_dir, cache_dir)
    cfg = dataclasses.replace(cfg, vocab_size=tok.get_vocab_size(), dtype=FLAGS.dtype)
    lm = LanguageModel(
        model_lib.Transformer(cfg, rngs=nnx.Rngs(0)), tok, batch_size=FLAGS.batch_size
    )
    peak = flops.measure_matmul_peak_flops()

    def examples(name, limit):
        return tasks.load_examples(
            tasks.TASKS[name], benchmarks_dir=benchmarks_dir, cache_dir=cache_dir, limit=limit
        ).to_list()

    figures = {
        "preset": FLAGS.preset,
        "dtype": FLAGS.dtype,
        "device": jax.devices()[0].platform,
        "cpus": os.cpu_count(),
        "peak_matmul_flops": peak,
    }
    figures.update(bench_multiple_choice(lm, examples("hellaswag", FLAGS.mc_examples), peak))
    print(
        f"multiple choice: {figures['mc_examples_per_s']:.1f} HellaSwag examples/s packed and "
        f"bucketed ({figures['mc_tokens_per_s']:.0f} tokens/s), "
        f"{figures['mc_examples_per_s_padded']:.1f} in padded batches "
        f"(MFU {figures['mc_padded_mfu']:.3f}, padding {figures['mc_padded_padding_fraction']:.0%}; "
        f"peak {peak / 1e9:.0f} GFLOP/s): {figures['mc_packed_speedup']:.2f}x",
        flush=True,
    )
    ev = evaluator.Evaluator(benchmarks_dir=benchmarks_dir, cache_dir=cache_dir)
    figures.update(continuous_metrics(lm, ev, FLAGS.mc_examples))
    print(
        "continuous metrics (HellaSwag, random model): "
        + ", ".join(
            f"{name} {figures['hellaswag_' + name]:.3f} "
            f"[{figures['hellaswag_' + name + '_ci'][0]:.3f}, "
            f"{figures['hellaswag_' + name + '_ci'][1]:.3f}]"
            for name in ("acc_norm", *evaluator.CONTINUOUS)
        ),
        flush=True,
    )
    prompts = [ex["prompt"] for ex in examples("triviaqa", FLAGS.gen_prompts)]
    figures.update(bench_generation(lm, prompts, FLAGS.gen_tokens))
    print(
        f"generation: {figures['gen_tokens_per_s']:.0f} new tokens/s "
        f"({FLAGS.gen_prompts} prompts x {FLAGS.gen_tokens} tokens)",
        flush=True,
    )
    figures.update(bench_sandbox(examples("mbpp", FLAGS.programs)))
    print(f"sandbox: {figures['sandbox_programs_per_s']:.1f} MBPP programs/s", flush=True)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
