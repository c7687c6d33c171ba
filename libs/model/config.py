"""ModelConfig: the one description of a transformer's shape, numerics and sharding.

A config is data: a frozen, hashable dataclass (so it can be a static jit argument),
validated when built, with every error naming the offending field. The preset table
lives in presets.py; this module only knows what a valid config is.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis names used on parameters and activations. "layers" is the stacked-layer
# axis that nnx.vmap adds to every block parameter.
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers")

MeshAxes = Union[None, str, tuple[str, ...]]

# MaxText-style defaults: batch over data and fsdp; weights' embed dimension fully
# sharded over fsdp; heads, MLP hidden and vocabulary split over tensor. A mesh axis
# already used earlier in one array's spec is skipped (see sharding.logical_to_spec),
# so "embed" -> fsdp applies to weights while activations keep fsdp on batch.
DEFAULT_SHARDING_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)

DTYPES = ("float32", "bfloat16", "float16")
# What a training run may compute in: float16 would need loss scaling, which the
# trainer does not do.
TRAINING_DTYPES = ("float32", "bfloat16")

# What a layer keeps for the backward pass (model.py maps each to a jax.checkpoint policy):
# none keeps everything; full keeps only the layer's input; save_dots keeps the weight
# matmuls' outputs and recomputes attention scores and elementwise work.
REMAT_POLICIES = ("none", "full", "save_dots")

# Attention implementations (attention.py): xla is the reference; the kernels never
# materialise [T, T] scores.
ATTENTION_IMPLEMENTATIONS = ("xla", "splash", "pallas_gpu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of the decoder-only transformer (see model.py)."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int  # SwiGLU hidden width (each of the gate and up projections)
    max_seq_len: int
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "float32"  # activations and matmul inputs
    param_dtype: str = "float32"  # stored parameters (and optimizer state)
    remat: str = "none"  # one of REMAT_POLICIES
    attention: str = "xla"  # one of ATTENTION_IMPLEMENTATIONS
    # Tokens of the sequence whose logits exist at once in the loss (loss.py); 0: all.
    # At a 256k vocabulary the whole [b, T, V] float32 logits of one 8k sequence are 8 GB.
    logits_chunk: int = 0
    sharding_rules: tuple[tuple[str, MeshAxes], ...] = DEFAULT_SHARDING_RULES

    def __post_init__(self):
        # Accept lists (e.g. a config read back from JSON) and freeze them so the
        # config stays hashable.
        rules = tuple(
            (str(name), tuple(axes) if isinstance(axes, list) else axes)
            for name, axes in self.sharding_rules
        )
        object.__setattr__(self, "sharding_rules", rules)
        if isinstance(self.remat, bool):  # configs saved when remat was on/off
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}: must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide d_model {self.d_model}")
        if self.head_dim % 2:
            raise ValueError(
                f"num_heads: head_dim {self.head_dim} (d_model/num_heads) must be even "
                "for rotary embeddings"
            )
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {DTYPES}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings: must be a bool, got {self.tie_embeddings!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat: {self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention: {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
            )
        if not isinstance(self.logits_chunk, int) or self.logits_chunk < 0:
            raise ValueError(f"logits_chunk: must be an int >= 0, got {self.logits_chunk!r}")
        seen = set()
        for logical, axes in self.sharding_rules:
            if logical not in LOGICAL_AXES:
                raise ValueError(
                    f"sharding_rules: unknown logical axis {logical!r}; known: {LOGICAL_AXES}"
                )
            if logical in seen:
                raise ValueError(f"sharding_rules: logical axis {logical!r} given twice")
            seen.add(logical)
            for axis in _as_tuple(axes):
                if axis not in MESH_AXES:
                    raise ValueError(
                        f"sharding_rules: mesh axis {axis!r} for {logical!r} is not one of "
                        f"{MESH_AXES}"
                    )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def portable(self) -> "ModelConfig":
        """The same model with how it is computed (remat, attention kernel, loss chunks)
        at the defaults, which run on any platform; checkpoints store this, and whoever
        loads one picks the computation for their own devices."""
        return dataclasses.replace(self, remat="none", attention="xla", logits_chunk=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**d)


def _as_tuple(axes: Optional[MeshAxes]) -> tuple[str, ...]:
    if axes is None:
        return ()
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes)
