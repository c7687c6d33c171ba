"""Model FLOPs and MFU: the one formula behind every MFU figure in the project.

Training FLOPs per token (forward + backward, PaLM appendix B convention):

    flops_per_token = 6 * N + 12 * L * d * T

- N = matmul parameters = L * (4 d^2 + 3 d f) + V d: per layer the fused q/k/v and output
  projections (4 d^2, since heads * head_dim = d) and the three SwiGLU matrices (3 d f),
  plus the output projection V d (counted once whether tied or not; the input embedding
  is a lookup, not a matmul). Norm scales are not matmuls.
- 12 L d T: attention scores q k^T and the weighted sum over values, 2 * 2 T d forward
  per token per layer, times 3 for forward + backward, over the full length T (causal
  masking is not discounted, as in PaLM, so figures compare across codebases).

MFU = tokens/s * flops_per_token / peak, with peak measured in the same process
(`measure_matmul_peak_flops`) on CPU, or a datasheet figure labelled as such elsewhere.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from libs.model.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    d, f, layers = cfg.d_model, cfg.d_ff, cfg.num_layers
    return layers * (4 * d * d + 3 * d * f) + cfg.vocab_size * d


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token at sequence length `seq_len`."""
    if seq_len <= 0:
        raise ValueError(f"seq_len: must be positive, got {seq_len}")
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_layers * cfg.d_model * seq_len


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, peak_flops: float) -> float:
    """Model FLOPs utilisation of a training run against `peak_flops` FLOP/s."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / peak_flops


def measure_matmul_peak_flops(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n matmul on the default device: the best of `repeats` runs.

    Best, not mean: the peak is what the hardware can do, and other processes on a
    shared machine only ever slow a run down.
    """
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def measure_peak_flops() -> float:
    """The device's matmul peak: the larger of the float32 and bfloat16 peaks, so that a
    dtype that is slow on this device (bfloat16 on many CPUs) cannot flatter an MFU."""
    return max(measure_matmul_peak_flops(jnp.float32), measure_matmul_peak_flops(jnp.bfloat16))
