"""The preset table: every named model size, defined once.

`470m` and `2.8b` are the paper's sizes with its 256k vocabulary (exact shapes are not
published; these land within 2% of the stated counts with tied embeddings and sequence
length 8192), with the remat policy and loss chunks that fit their TPU v5e slices at the
paper's 512 x 8192 batch (measured by `bazel run //services/trainer:compile`; see
docs/scaling.md). `tiny` is for tests; `small` is the CPU-trainable model: few, wide layers,
because small matrices waste a CPU. The trainer replaces vocab_size with its tokenizer's
size (`dataclasses.replace(cfg, vocab_size=n)`), so the small presets carry a modest
default vocabulary.
"""

from __future__ import annotations

from libs import errors
from libs.model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=4096, d_model=128, num_layers=2, num_heads=4, d_ff=512, max_seq_len=512
    ),
    "small": ModelConfig(
        vocab_size=8192, d_model=512, num_layers=6, num_heads=8, d_ff=2048, max_seq_len=1024
    ),
    "470m": ModelConfig(
        vocab_size=256_000,
        d_model=1024,
        num_layers=12,
        num_heads=16,
        d_ff=4096,
        max_seq_len=8192,
        remat="save_dots",
        logits_chunk=1024,
    ),
    "2.8b": ModelConfig(
        vocab_size=256_000,
        d_model=2560,
        num_layers=24,
        num_heads=20,
        d_ff=8192,
        max_seq_len=8192,
        remat="full",
        logits_chunk=1024,
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise errors.InvalidArgument(
            "preset", f"unknown name {name!r}; known presets: {sorted(PRESETS)}"
        ) from None
