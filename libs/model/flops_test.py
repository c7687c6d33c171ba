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
    assert flops.flops_per_token(CFG, 64) == 6 * n + 12 * 2 * 16 * 64


def test_mfu_is_achieved_over_peak():
    fpt = flops.flops_per_token(CFG, 32)
    assert flops.mfu(1000.0, CFG, 32, peak_flops=2000.0 * fpt) == pytest.approx(0.5)


def test_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        flops.flops_per_token(CFG, 0)


def test_measured_peak_is_a_rate():
    peak = flops.measure_matmul_peak_flops(jnp.float32, n=256, repeats=2)
    assert math.isfinite(peak) and peak > 1e6
