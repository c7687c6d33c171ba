"""Tests for flops.py: the FLOPs formula by hand, MFU arithmetic, the measured peak."""

import math

import jax.numpy as jnp
import pytest

from libs.model import flops
from libs.model.config import ModelConfig

CFG = ModelConfig(vocab_size=100, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=64)


def test_flops_per_token_by_hand():
    n = 2 * (4 * 16 * 16 + 3 * 16 * 32) + 100 * 16
    assert flops.matmul_params(CFG) == n
    assert flops.flops_per_token(CFG, 64) == 6 * n + 6 * 2 * 16 * 64  # causal: half of 12 L d T
    assert flops.flops_per_token(CFG, 64, causal=False) == 6 * n + 12 * 2 * 16 * 64


def test_mfu_is_achieved_over_peak():
    fpt = flops.flops_per_token(CFG, 32)
    assert flops.mfu(1000.0, CFG, 32, peak_flops=2000.0 * fpt) == pytest.approx(0.5)


def test_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        flops.flops_per_token(CFG, 0)


def test_measured_peak_is_a_rate():
    peak = flops.measure_matmul_peak_flops(jnp.float32, n=256, repeats=2)
    assert math.isfinite(peak) and peak > 1e6


def test_mfu_is_per_chip():
    fpt = flops.flops_per_token(CFG, 32)
    # 4,000 tokens/s over 2 chips is 2,000 a chip: half of each chip's peak.
    assert flops.mfu(4000.0, CFG, 32, peak_flops=4000.0 * fpt, chips=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="chips"):
        flops.mfu(1.0, CFG, 32, peak_flops=1.0, chips=0)


@pytest.mark.parametrize(
    "device_kind, name",
    [
        ("TPU v4", "TPU v4"),
        ("TPU v5 lite", "TPU v5e"),
        ("TPU v5e", "TPU v5e"),
        ("TPU v5p", "TPU v5p"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
        ("NVIDIA H200", "NVIDIA H200"),
    ],
)
def test_known_chips_have_datasheet_peaks(device_kind, name):
    chip = flops.chip_for(device_kind)
    assert chip.name == name and chip.bf16_flops >= 1e14 and chip.hbm_bytes_per_s >= 5e11


def test_a_cpu_peak_is_measured():
    assert flops.chip_for("cpu") is None
    peak, source = flops.peak_flops_per_chip()
    assert peak > 1e6 and source.startswith("measured")
