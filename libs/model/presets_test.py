"""Tests for presets.py: the paper's sizes and the CPU sizes, counted without allocation."""

import dataclasses

import jax.numpy as jnp
import pytest
from flax import nnx

from libs.model import flops, model, presets, presets_main


@pytest.mark.parametrize("name, target", [("470m", 470e6), ("2.8b", 2.8e9)])
def test_paper_sizes_within_five_percent(name, target):
    cfg = presets.get_preset(name)
    assert cfg.vocab_size == 256_000
    assert abs(model.param_count(cfg) - target) / target < 0.05


def test_cpu_sizes():
    assert model.param_count(presets.get_preset("tiny")) <= 2_000_000
    assert 20e6 <= model.param_count(presets.get_preset("small")) <= 35e6


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_matmul_params_match_the_model(name):
    cfg = presets.get_preset(name)
    norms = (cfg.num_layers + 1) * cfg.d_model
    for tied in (True, False):
        c = dataclasses.replace(cfg, tie_embeddings=tied)
        assert model.param_count(c) - norms - model.embedding_param_count(c) == flops.matmul_params(
            c
        )


def test_small_presets_take_any_vocabulary():
    cfg = dataclasses.replace(presets.get_preset("tiny"), vocab_size=1001)
    logits = model.Transformer(cfg, rngs=nnx.Rngs(0))(jnp.zeros((1, 8), jnp.int32))
    assert logits.shape == (1, 8, 1001)


def test_table_lists_every_preset():
    text = presets_main.table()
    for name, cfg in presets.PRESETS.items():
        assert name in text
        assert f"{model.param_count(cfg):,}" in text
