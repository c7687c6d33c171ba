"""Tests for config.py: validation names the offending field; configs round-trip."""

import dataclasses
import json

import pytest

from libs.model.config import ModelConfig
from libs.model.presets import PRESETS, get_preset

TINY = dict(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_seq_len=16)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_heads=6, d_model=512), "num_heads: 6 does not divide d_model 512"),
        (dict(d_model=-8), "d_model"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_layers=-1), "num_layers"),
        (dict(d_ff=2.5), "d_ff"),
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(d_model=12, num_heads=4), "num_heads"),  # odd head_dim: no rotary pairs
        (dict(dtype="int8"), "dtype"),
        (dict(param_dtype="fp8"), "param_dtype"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(norm_eps=-1.0), "norm_eps"),
        (dict(tie_embeddings="yes"), "tie_embeddings"),
        (dict(sharding_rules=(("bogus", None),)), "sharding_rules"),
        (dict(sharding_rules=(("batch", "pipeline"),)), "sharding_rules"),
        (dict(sharding_rules=(("batch", None), ("batch", "data"))), "sharding_rules"),
    ],
)
def test_bad_config_names_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**TINY, **overrides})


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_preset("7b")
    for name in PRESETS:
        assert name in str(err.value)


def test_round_trips_through_json_and_stays_hashable():
    cfg = dataclasses.replace(get_preset("small"), vocab_size=1234, dtype="bfloat16")
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert hash(back) == hash(cfg)


def test_replace_is_validated():
    with pytest.raises(ValueError, match="vocab_size"):
        dataclasses.replace(get_preset("tiny"), vocab_size=-1)
