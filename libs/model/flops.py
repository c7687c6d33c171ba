"""Model FLOPs and MFU: the one formula behind every MFU figure in the project.

Training FLOPs per token (forward + backward, PaLM appendix B convention):

    flops_per_token = 6 * N + 6 * L * d * T

- N = matmul parameters = L * (4 d^2 + 3 d f) + V d: per layer the fused q/k/v and output
  projections (4 d^2, since heads * head_dim = d) and the three SwiGLU matrices (3 d f),
  plus the output projection V d (counted once whether tied or not; the input embedding
  is a lookup, not a matmul). Norm scales are not matmuls.
- 6 L d T: attention scores q k^T and the weighted sum over values, 2 * 2 T d forward
  per token per layer over the full length T, times 3 for forward + backward, halved
  for the causal mask (a query attends to the keys before it: T/2 on average). This
  is MaxText's convention (`calculate_tflops_training_per_device` divides attention
  FLOPs by 2 for causal masks); PaLM's appendix B counts the full 12 L d T, so an MFU
  here is lower than PaLM's by that term's half. `causal=False` gives PaLM's count.

MFU is per chip: tokens/s per chip (global tokens/s over the chips of the mesh)
times flops_per_token, over one chip's bf16 peak. The peak is a datasheet figure
for the accelerators in CHIPS and is measured in the same process on a CPU
(`measure_peak_flops`), where the devices of a mesh share the same cores.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from libs.model.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    d, f, layers = cfg.d_model, cfg.d_ff, cfg.num_layers
    return layers * (4 * d * d + 3 * d * f) + cfg.vocab_size * d


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token of the attention scores and weighted sums (no params)."""
    return (6.0 if causal else 12.0) * cfg.num_layers * cfg.d_model * seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True) -> float:
    """Training (forward + backward) FLOPs per token at sequence length `seq_len`."""
    if seq_len <= 0:
        raise ValueError(f"seq_len: must be positive, got {seq_len}")
    return 6.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len, causal)


def mfu(
    tokens_per_s: float, cfg: ModelConfig, seq_len: int, peak_flops: float, chips: int = 1
) -> float:
    """Model FLOPs utilisation per chip: `tokens_per_s` (all chips together) over
    `chips` chips, each of peak `peak_flops` FLOP/s."""
    if chips < 1:
        raise ValueError(f"chips: must be at least 1, got {chips}")
    return tokens_per_s / chips * flops_per_token(cfg, seq_len) / peak_flops


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator's datasheet figures: dense bf16 FLOP/s and HBM bytes/s."""

    name: str
    bf16_flops: float
    hbm_bytes_per_s: float
    device_kinds: tuple[str, ...]  # substrings of jax's Device.device_kind


# Vendors' datasheets, per chip. v5e's device_kind is "TPU v5 lite", so it is
# matched before v5p's "TPU v5".
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 1228e9, ("TPU v4",)),
    "v5e": Chip("TPU v5e", 197e12, 819e9, ("TPU v5 lite", "TPU v5e")),
    "v5p": Chip("TPU v5p", 459e12, 2765e9, ("TPU v5p", "TPU v5")),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 3350e9, ("H100",)),
    "h200": Chip("NVIDIA H200", 989e12, 4800e9, ("H200",)),
}


def chip_for(device_kind: str) -> Chip | None:
    """The CHIPS entry of a jax device_kind, or None (a CPU, an unknown accelerator)."""
    for chip in CHIPS.values():
        if any(kind.lower() in device_kind.lower() for kind in chip.device_kinds):
            return chip
    return None


def peak_flops_per_chip(device=None) -> tuple[float, str]:
    """One chip's peak FLOP/s and where it comes from: the datasheet for a chip in
    CHIPS, else the matmul peak measured now on this device."""
    device = device or jax.devices()[0]
    chip = chip_for(device.device_kind)
    if chip is not None:
        return chip.bf16_flops, f"{chip.name} bf16 datasheet"
    return measure_peak_flops(), f"measured matmul peak ({device.device_kind})"


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
