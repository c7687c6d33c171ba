"""Causal self-attention within packed documents: one entry point, one kernel per platform.

Token i attends to token j of the same row when j <= i and segment[i] == segment[j]
(segment 0 is padding, which attends only to padding). Implementations:

- `xla`: the reference. Materialises [b, heads, T, S] float32 scores; serves every case,
  including decoding with a KV cache (queries at slots [start, start + t) of S slots).
- `splash`: Pallas splash attention for TPU (jax.experimental.pallas.ops.tpu); blockwise
  online softmax, never materialises [T, T]; packed documents through its segment ids.
- `pallas_gpu`: the Pallas (Triton) flash-attention kernel for GPU
  (jax.experimental.pallas.ops.gpu.attention), which takes segment ids too (cuDNN's fused
  attention through jax.nn.dot_product_attention does not take per-token segment ids).

The two kernels serve training and scoring (queries and keys are the same t tokens); a
KV-cache decode step always takes the reference path. Each kernel runs on a CPU in Pallas
interpret mode (`interpret=True`: slow, exact), which is how the tests hold it equal to
the reference. Under a mesh the kernels run per shard (shard_map): batch over the batch
axes, heads over the heads axis, as the sharding rules say.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from libs.model.sharding import logical_to_spec

IMPLEMENTATIONS = ("xla", "splash", "pallas_gpu")

# The attention a platform gets when none is asked for.
_BY_PLATFORM = {"tpu": "splash", "gpu": "pallas_gpu", "cuda": "pallas_gpu"}

_NEG_INF = -1e30  # finite, so a fully masked row gives a uniform softmax, not NaN


def for_platform(platform: str) -> str:
    """The fastest implementation for devices of `platform` ("cpu", "tpu", "gpu")."""
    return _BY_PLATFORM.get(platform, "xla")


def causal_segment_mask(segment_q_bt, segment_k_bs, start=0) -> jax.Array:
    """[b, 1, t, s] bool: slot order decides causality; segment ids must match.

    Queries sit at slots [start, start + t) of the s key slots.
    """
    t, s = segment_q_bt.shape[1], segment_k_bs.shape[1]
    q_slot_t = start + jnp.arange(t)
    k_slot_s = jnp.arange(s)
    causal_ts = k_slot_s[None, :] <= q_slot_t[:, None]
    same_doc_bts = segment_q_bt[:, :, None] == segment_k_bs[:, None, :]
    return (causal_ts[None] & same_doc_bts)[:, None]


def reference(q_bhtk, k_bhsk, v_bhsk, mask_b1ts) -> jax.Array:
    """Masked softmax attention in XLA; scores and softmax in float32. -> [b, h, t, k]."""
    scale = q_bhtk.shape[-1] ** -0.5
    scores_bhts = (
        jnp.einsum("bhtk,bhsk->bhts", q_bhtk, k_bhsk, preferred_element_type=jnp.float32) * scale
    )
    scores_bhts = jnp.where(mask_b1ts, scores_bhts, _NEG_INF)
    probs_bhts = jax.nn.softmax(scores_bhts, axis=-1).astype(v_bhsk.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", probs_bhts, v_bhsk)


def attend(
    q_bhtk,
    k_bhtk,
    v_bhtk,
    segment_ids_bt,
    *,
    implementation: str = "xla",
    rules=(),
    interpret: bool = False,
) -> jax.Array:
    """Causal attention of t tokens over themselves within documents. -> [b, h, t, k].

    `rules` (ModelConfig.sharding_rules) place the kernels' shards when a mesh is in
    context; `interpret` runs a Pallas kernel in interpret mode (CPU tests).
    """
    if implementation == "xla":
        mask_b1ts = causal_segment_mask(segment_ids_bt, segment_ids_bt)
        return reference(q_bhtk, k_bhtk, v_bhtk, mask_b1ts)
    if implementation == "splash":
        kernel = functools.partial(_splash, interpret=interpret)
    elif implementation == "pallas_gpu":
        kernel = functools.partial(_pallas_gpu, interpret=interpret)
    else:
        raise ValueError(f"attention: {implementation!r} is not one of {IMPLEMENTATIONS}")
    if jax.sharding.get_abstract_mesh().empty:
        return kernel(q_bhtk, k_bhtk, v_bhtk, segment_ids_bt)
    # A Pallas call is opaque to XLA's partitioner: run it on each device's shard.
    qkv_spec = logical_to_spec(("batch", "heads", "length", "kv"), rules)
    seg_spec = PartitionSpec(qkv_spec[0], None)
    return jax.shard_map(
        kernel,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
        out_specs=qkv_spec,
        check_vma=False,
    )(q_bhtk, k_bhtk, v_bhtk, segment_ids_bt)


def _block(t: int, preferred: int) -> int:
    """The largest power-of-two block <= preferred that divides t (t itself if small)."""
    block = preferred
    while block > 8 and t % block:
        block //= 2
    return min(block, t) if t % block == 0 else t


def _splash(q_bhtk, k_bhtk, v_bhtk, segment_ids_bt, *, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    _, h, t, d = q_bhtk.shape
    # 512-token blocks (MaxText's default) keep the TPU's matrix unit busy at T = 8192.
    b = _block(t, 512)
    blocks = sk.BlockSizes(
        block_q=b,
        block_kv=b,
        block_kv_compute=b,
        block_q_dkv=b,
        block_kv_dkv=b,
        block_kv_dkv_compute=b,
        block_q_dq=b,
        block_kv_dq=b,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
    kernel = sk.make_splash_mha(
        mask, head_shards=1, q_seq_shards=1, block_sizes=blocks, interpret=interpret
    )
    # The kernel takes one row [h, t, d] and does not scale q itself.
    q_bhtk = q_bhtk * jnp.asarray(d**-0.5, q_bhtk.dtype)

    def one_row(q_htk, k_htk, v_htk, seg_t):
        return kernel(q_htk, k_htk, v_htk, segment_ids=sk.SegmentIds(q=seg_t, kv=seg_t))

    return jax.vmap(one_row)(q_bhtk, k_bhtk, v_bhtk, segment_ids_bt.astype(jnp.int32))


def _pallas_gpu(q_bhtk, k_bhtk, v_bhtk, segment_ids_bt, *, interpret: bool):
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    t, d = q_bhtk.shape[2], q_bhtk.shape[3]
    fwd, bwd = _block(t, 128), _block(t, 64)  # the backward kernels hold more per block
    blocks = gpu_attention.BlockSizes(
        block_q=fwd, block_k=fwd, block_q_dkv=bwd, block_kv_dkv=bwd, block_q_dq=bwd, block_kv_dq=bwd
    )
    # The kernel's layout is [b, t, h, d].
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_bhtk, k_bhtk, v_bhtk))
    out_bthk = gpu_attention.mha(
        q,
        k,
        v,
        segment_ids_bt.astype(jnp.int32),
        sm_scale=d**-0.5,
        causal=True,
        block_sizes=blocks,
        interpret=interpret,
    )
    return out_bthk.transpose(0, 2, 1, 3)
