"""The paper's decoder-only transformer (Aryabumi et al. 2024, arXiv 2408.10914) in Flax NNX.

Architecture choices. From the paper: decoder-only; parallel attention and MLP; SwiGLU;
no biases; a 256k vocabulary at the paper's sizes (presets.py). Ours, where the paper is
silent: RMSNorm, rotary positions, tied embeddings by default. In full:
- pre-norm RMSNorm (scale only), and one final RMSNorm before the output projection;
- parallel block: one norm feeds both attention and the MLP, and their sum goes into the
  residual:  x <- x + Attention(norm(x)) + MLP(norm(x));
- SwiGLU MLP: down(silu(gate(h)) * up(h)), hidden width cfg.d_ff;
- no biases anywhere;
- rotary position embeddings (half-split pairs, theta = cfg.rope_theta);
- causal attention that respects document boundaries in packed rows: token i attends to
  j only if j <= i and segment[i] == segment[j] (segment 0 = padding); positions restart
  at 0 for each document unless given; attention.py holds the reference and the TPU/GPU
  kernels (cfg.attention), which never materialise [T, T];
- tied or untied output embedding (cfg.tie_embeddings);
- float32 parameters, compute in cfg.dtype (bfloat16 optional); softmax, norms and logits
  in float32;
- layers stacked (nnx.vmap) and applied with jax.lax.scan, so compile time does not grow
  with depth; rematerialisation of each block by policy name (cfg.remat);
- the training loss can be taken in chunks of the sequence (cfg.logits_chunk), so the
  [b, T, V] float32 logits never exist at once (`Transformer.token_losses`).

The same forward serves training (no cache) and decoding (a KVCache written at slot
`start`); decode.py owns the generation loop. Parameters carry logical axis names for
sharding.py.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from libs.model import attention
from libs.model.config import ModelConfig
from libs.model.sharding import constrain

# jax.checkpoint policy of each ModelConfig.remat name ("none" is no checkpoint at all).
# Projection and MLP matmuls have no batch dimensions in dot_general terms; attention's
# score and value matmuls batch over (b, heads), so save_dots never stores [T, T] scores.
REMAT_POLICY = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs, shape, std, logical_axes, cfg: ModelConfig) -> nnx.Param:
    init = jax.nn.initializers.truncated_normal(std, dtype=jnp.dtype(cfg.param_dtype))
    # eager_sharding=False: sharding is applied explicitly by sharding.py, so a model can
    # be built (or eval_shape'd) with no mesh in context.
    return nnx.Param(init(rngs.params(), shape), out_sharding=logical_axes, eager_sharding=False)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer at every slot, and each slot's segment id.

    Keys and values are stacked [layers, b, heads, slots, head_dim] arrays, or tuples of
    one [b, heads, slots, head_dim] array per layer for unrolled decoding (see
    Transformer.forward's `layers`).
    """

    k_lbhsk: jax.Array | tuple[jax.Array, ...]
    v_lbhsk: jax.Array | tuple[jax.Array, ...]
    segment_ids_bs: jax.Array  # 0 = empty or padding

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, per_layer: bool = False) -> "KVCache":
        shape = (batch, cfg.num_heads, length, cfg.head_dim)
        if per_layer:
            zeros = tuple(jnp.zeros(shape, jnp.dtype(cfg.dtype)) for _ in range(cfg.num_layers))
        else:
            zeros = jnp.zeros((cfg.num_layers, *shape), jnp.dtype(cfg.dtype))
        return cls(zeros, zeros, jnp.zeros((batch, length), jnp.int32))


def document_positions(segment_ids_bt: jax.Array) -> jax.Array:
    """Position of each token within its (contiguous) document: 0, 1, ... per segment."""
    t = segment_ids_bt.shape[1]
    idx_bt = jnp.broadcast_to(jnp.arange(t), segment_ids_bt.shape)
    starts_bt = jnp.concatenate(
        [
            jnp.ones_like(segment_ids_bt[:, :1], bool),
            segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1],
        ],
        axis=1,
    )
    start_idx_bt = jax.lax.cummax(jnp.where(starts_bt, idx_bt, 0), axis=1)
    return idx_bt - start_idx_bt


def rotary(x_bthd: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
    half = x_bthd.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_bt1f = (positions_bt.astype(jnp.float32)[..., None] * inv_freq)[:, :, None, :]
    sin, cos = jnp.sin(angle_bt1f), jnp.cos(angle_bt1f)
    x1, x2 = jnp.split(x_bthd.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_bthd.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        scale = jnp.ones((cfg.d_model,), jnp.dtype(cfg.param_dtype))
        self.scale = nnx.Param(scale, out_sharding=("embed",), eager_sharding=False)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x = x_btd.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
        return (x * self.scale[...].astype(jnp.float32)).astype(jnp.dtype(self.cfg.dtype))


class Attention(nnx.Module):
    """Multi-head causal self-attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, hd = cfg.d_model, cfg.num_heads, cfg.head_dim
        # q, k and v fused into one matmul: one larger matrix uses a CPU/TPU better.
        self.qkv_dchk = _param(rngs, (d, 3, h, hd), d**-0.5, ("embed", None, "heads", "kv"), cfg)
        out_std = (h * hd) ** -0.5 / math.sqrt(2 * cfg.num_layers)
        self.out_hkd = _param(rngs, (h, hd, d), out_std, ("heads", "kv", "embed"), cfg)

    def __call__(self, x_btd, positions_bt, segment_ids_bt, mask_b1ts, start, kv=None):
        """With `mask_b1ts` None (training, no cache) cfg.attention computes the causal
        within-document mask from `segment_ids_bt` itself."""
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        rules = cfg.sharding_rules
        # Output dimensions in the kernel's order: a transposed einsum output made XLA:CPU
        # copy the kernel on every call (decoding was 3x slower).
        qkv_btchk = jnp.einsum("btd,dchk->btchk", x_btd, self.qkv_dchk[...].astype(dtype))
        q_bthk = rotary(qkv_btchk[:, :, 0], positions_bt, cfg.rope_theta)
        k_bthk = rotary(qkv_btchk[:, :, 1], positions_bt, cfg.rope_theta)
        q_bthk = constrain(q_bthk, ("batch", "length", "heads", "kv"), rules)
        # Heads before length from here on (and in the cache), so each attention matmul
        # reads keys and values contiguously instead of transposing the whole cache.
        q_bhtk, k_bhtk, v_bhtk = (
            a.transpose(0, 2, 1, 3) for a in (q_bthk, k_bthk, qkv_btchk[:, :, 2])
        )
        if kv is not None:  # write this chunk's keys/values at slots [start, start + t)
            k_bhsk = jax.lax.dynamic_update_slice(kv[0], k_bhtk, (0, 0, start, 0))
            v_bhsk = jax.lax.dynamic_update_slice(kv[1], v_bhtk, (0, 0, start, 0))
        else:
            k_bhsk, v_bhsk = k_bhtk, v_bhtk
        if mask_b1ts is None:
            attn_bhtk = attention.attend(
                q_bhtk,
                k_bhsk,
                v_bhsk,
                segment_ids_bt,
                implementation=cfg.attention,
                rules=rules,
            )
        else:
            attn_bhtk = attention.reference(q_bhtk, k_bhsk, v_bhsk, mask_b1ts)
        attn_bthk = attn_bhtk.transpose(0, 2, 1, 3)
        out_btd = jnp.einsum("bthk,hkd->btd", attn_bthk, self.out_hkd[...].astype(dtype))
        return out_btd, (k_bhsk, v_bhsk)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f = cfg.d_model, cfg.d_ff
        self.gate_up_dcf = _param(rngs, (d, 2, f), d**-0.5, ("embed", None, "mlp"), cfg)
        down_std = f**-0.5 / math.sqrt(2 * cfg.num_layers)
        self.down_fd = _param(rngs, (f, d), down_std, ("mlp", "embed"), cfg)

    def __call__(self, x_btd):
        dtype = jnp.dtype(self.cfg.dtype)
        gate_up_btcf = jnp.einsum("btd,dcf->btcf", x_btd, self.gate_up_dcf[...].astype(dtype))
        hidden_btf = jax.nn.silu(gate_up_btcf[:, :, 0]) * gate_up_btcf[:, :, 1]
        hidden_btf = constrain(hidden_btf, ("batch", "length", "mlp"), self.cfg.sharding_rules)
        return jnp.einsum("btf,fd->btd", hidden_btf, self.down_fd[...].astype(dtype))


class Block(nnx.Module):
    """The parallel block: x + Attention(norm(x)) + MLP(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(cfg)
        self.attention = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_btd, positions_bt, segment_ids_bt, mask_b1ts, start, kv=None):
        h_btd = self.norm(x_btd)
        attn_btd, kv = self.attention(h_btd, positions_bt, segment_ids_bt, mask_b1ts, start, kv)
        return x_btd + attn_btd + self.mlp(h_btd), kv


class Transformer(nnx.Module):
    """Token embedding, cfg.num_layers parallel blocks (stacked), final norm, logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_vd = _param(
            rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, ("vocab", "embed"), cfg
        )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs):
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_embeddings:
            self.unembed_dv = _param(
                rngs, (cfg.d_model, cfg.vocab_size), cfg.d_model**-0.5, ("embed", "vocab"), cfg
            )

    def __call__(self, tokens_bt, *, segment_ids_bt=None, positions_bt=None):
        """Logits (float32) for every position of a batch of (possibly packed) rows."""
        logits_btv, _ = self.forward(
            tokens_bt, segment_ids_bt=segment_ids_bt, positions_bt=positions_bt
        )
        return logits_btv

    def forward(
        self, tokens_bt, *, segment_ids_bt=None, positions_bt=None, cache=None, start=0, layers=None
    ):
        """Logits (float32), and the updated cache when `cache` is given.

        With a cache, the t tokens occupy slots [start, start + t) and attend to every
        earlier slot of the same segment; callers keep segment ids 0 for empty slots.
        Default positions restart at each document boundary (plus `start`), which suits
        training rows and unpadded decoding; decode.py passes its own for padded rows.

        `layers` (from `unstack_layers`, with a per-layer cache) unrolls the layers instead
        of scanning them. Memory-bound decoding uses it: XLA:CPU copies each scanned
        layer's weights out of the stack on every step, which halved decoding speed.
        """
        h_btd, new_cache = self.hidden(
            tokens_bt,
            segment_ids_bt=segment_ids_bt,
            positions_bt=positions_bt,
            cache=cache,
            start=start,
            layers=layers,
        )
        return self.logits(h_btd), new_cache

    def hidden(
        self, tokens_bt, *, segment_ids_bt=None, positions_bt=None, cache=None, start=0, layers=None
    ):
        """The final-norm hidden states [b, t, d] (and the cache): `forward` without the
        output projection. Arguments as for `forward`."""
        cfg, rules = self.cfg, self.cfg.sharding_rules
        b, t = tokens_bt.shape
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones((b, t), jnp.int32)
        if positions_bt is None:  # a chunk after `start` continues its row's document
            positions_bt = document_positions(segment_ids_bt) + start
        if cache is not None:
            seg_k_bs = jax.lax.dynamic_update_slice(
                cache.segment_ids_bs, segment_ids_bt, (0, start)
            )
        else:
            seg_k_bs = segment_ids_bt
        # Slot order, not positions, decides causality, so positions can restart per doc.
        # Without a cache the attention implementation builds its own mask (or none).
        mask_b1ts = (
            None
            if cache is None
            else attention.causal_segment_mask(segment_ids_bt, seg_k_bs, start)
        )

        x_btd = jnp.take(self.embed_vd[...], tokens_bt, axis=0).astype(jnp.dtype(cfg.dtype))
        x_btd = constrain(x_btd, ("batch", "length", "embed"), rules)
        graphdef, block_state = nnx.split(self.blocks)

        def layer(x_btd, xs):
            state, kv = xs
            y_btd, kv = nnx.merge(graphdef, state)(
                x_btd, positions_bt, segment_ids_bt, mask_b1ts, start, kv
            )
            y_btd = constrain(y_btd, ("batch", "length", "embed"), rules)
            return y_btd, (kv if cache is not None else None)

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, prevent_cse=False, policy=REMAT_POLICY[cfg.remat])
        if layers is None:
            kv_in = (cache.k_lbhsk, cache.v_lbhsk) if cache is not None else None
            x_btd, kv_out = jax.lax.scan(layer, x_btd, (block_state, kv_in))
        else:
            kv_layers = []
            for i, state in enumerate(layers):
                kv_in = (cache.k_lbhsk[i], cache.v_lbhsk[i]) if cache is not None else None
                x_btd, kv = layer(x_btd, (state, kv_in))
                kv_layers.append(kv)
            kv_out = None if cache is None else tuple(zip(*kv_layers))

        new_cache = None if cache is None else KVCache(kv_out[0], kv_out[1], seg_k_bs)
        return self.final_norm(x_btd), new_cache

    def logits(self, h_btd) -> jax.Array:
        """float32 logits [b, t, V] of hidden states [b, t, d] (the output projection)."""
        if self.cfg.tie_embeddings:
            unembed = self.embed_vd[...].astype(h_btd.dtype)
            logits_btv = jnp.einsum(
                "btd,vd->btv", h_btd, unembed, preferred_element_type=jnp.float32
            )
        else:
            unembed = self.unembed_dv[...].astype(h_btd.dtype)
            logits_btv = jnp.einsum(
                "btd,dv->btv", h_btd, unembed, preferred_element_type=jnp.float32
            )
        return constrain(
            logits_btv.astype(jnp.float32), ("batch", "length", "vocab"), self.cfg.sharding_rules
        )

    def token_losses(self, tokens_bt, targets_bt, *, segment_ids_bt=None, positions_bt=None):
        """Next-token cross-entropy of every position [b, t] (float32, unmasked), taken
        cfg.logits_chunk positions at a time: equal to the loss of `__call__`'s logits."""
        h_btd, _ = self.hidden(tokens_bt, segment_ids_bt=segment_ids_bt, positions_bt=positions_bt)
        return chunked_token_losses(self.logits, h_btd, targets_bt, self.cfg.logits_chunk)

    def unstack_layers(self) -> list[nnx.State]:
        """Each layer's parameters as separate arrays (a copy of the stacked weights)."""
        state = nnx.state(self.blocks)
        return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(self.cfg.num_layers)]


def cross_entropy(logits_btv, targets_bt, mask_bt=None):
    """(mean loss over mask, per-token loss) in float32; per-token loss is 0 where masked.

    The trainer averages per-token losses per data source; `mask_bt` excludes padding
    and anything not to be learned.
    """
    per_token_bt = token_losses(logits_btv, targets_bt)
    if mask_bt is None:
        mask_bt = jnp.ones_like(per_token_bt)
    mask_bt = mask_bt.astype(jnp.float32)
    per_token_bt = per_token_bt * mask_bt
    return per_token_bt.sum() / jnp.maximum(mask_bt.sum(), 1.0), per_token_bt


def token_losses(logits_btv, targets_bt) -> jax.Array:
    """Per-token cross-entropy [b, t] in float32: logsumexp minus the target's logit."""
    logits_btv = logits_btv.astype(jnp.float32)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_btv, axis=-1) - target_logit_bt


def chunked_token_losses(logits_fn, h_btd, targets_bt, chunk: int) -> jax.Array:
    """`token_losses(logits_fn(h_btd), targets_bt)` with only [b, chunk, V] logits alive.

    The sequence is cut into chunks (the largest divisor of t that is <= `chunk`; 0 or
    >= t: one chunk) mapped one after another; each chunk is rematerialised, so the
    backward pass also holds one chunk's logits at a time.
    """
    t = h_btd.shape[1]
    if chunk <= 0 or chunk >= t:
        return token_losses(logits_fn(h_btd), targets_bt)
    chunk = max(c for c in range(1, chunk + 1) if t % c == 0)
    n = t // chunk

    @jax.checkpoint
    def one_chunk(xs):
        h_bcd, targets_bc = xs
        return token_losses(logits_fn(h_bcd), targets_bc)

    # [b, n * c, ...] -> [n, b, c, ...]: chunk i holds positions [i c, (i + 1) c).
    h_nbcd = h_btd.reshape(h_btd.shape[0], n, chunk, -1).swapaxes(0, 1)
    targets_nbc = targets_bt.reshape(targets_bt.shape[0], n, chunk).swapaxes(0, 1)
    losses_nbc = jax.lax.map(one_chunk, (h_nbcd, targets_nbc))
    return losses_nbc.swapaxes(0, 1).reshape(targets_bt.shape)


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model's shapes and metadata with no parameter allocated."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def param_count(cfg: ModelConfig) -> int:
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def embedding_param_count(cfg: ModelConfig) -> int:
    """Parameters used only as a lookup table (the input embedding of an untied model)."""
    return 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
