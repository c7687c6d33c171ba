"""Every attention implementation equals the reference, in values and gradients.

The TPU (splash) and GPU (Pallas Triton) kernels run here in Pallas interpret mode, on
packed rows of several documents and padding, unsharded and sharded over two CPU devices
(so the shard_map around each kernel is exercised too).
"""

import os

# Two host devices, so the kernels also run under a (data=2) mesh. Set before jax starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()

import dataclasses  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from libs.model import attention, sharding  # noqa: E402
from libs.model import model as model_lib  # noqa: E402
from libs.model.config import DEFAULT_SHARDING_RULES  # noqa: E402
from libs.model.presets import get_preset  # noqa: E402

KERNELS = ("splash", "pallas_gpu")


def _packed_segments(b: int, t: int) -> jnp.ndarray:
    """Rows of several documents of uneven lengths, the last row ending in padding."""
    seg = np.ones((b, t), np.int32)
    seg[0, t // 3 :] = 2
    seg[0, t // 3 + 37 :] = 3
    seg[1, 5:] = 2
    seg[1, t - 20 :] = 0
    return jnp.asarray(seg)


def _qkv(b=2, h=2, t=256, d=32, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return tuple(jax.random.normal(k, (b, h, t, d), dtype) for k in keys)


def _value_and_grads(fn, q, k, v):
    def loss(q, k, v):
        out = fn(q, k, v)
        return (out * jnp.cos(out)).sum(), out  # a loss whose gradient varies per element

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _reference(seg):
    mask = attention.causal_segment_mask(seg, seg)
    return lambda q, k, v: attention.reference(q, k, v, mask)


def _assert_close(got, want, atol):
    out, grads = got
    ref_out, ref_grads = want
    np.testing.assert_allclose(out, ref_out, atol=atol)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=atol * 10)


def test_reference_mask_is_causal_within_documents():
    seg = jnp.asarray([[1, 1, 2, 2, 0]])
    mask = attention.causal_segment_mask(seg, seg)[0, 0]
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("implementation", ("xla",) + KERNELS)
def test_each_implementation_equals_the_reference(implementation):
    q, k, v = _qkv()
    seg = _packed_segments(2, 256)
    fn = functools.partial(
        attention.attend, segment_ids_bt=seg, implementation=implementation, interpret=True
    )
    got = _value_and_grads(lambda q, k, v: fn(q, k, v), q, k, v)
    _assert_close(got, _value_and_grads(_reference(seg), q, k, v), atol=1e-5)


@pytest.mark.parametrize("implementation", KERNELS)
def test_kernels_equal_the_reference_under_a_mesh(implementation):
    """Batch sharded over two devices: each device runs the kernel on its rows."""
    q, k, v = _qkv(b=4, t=128)
    seg = jnp.concatenate([_packed_segments(2, 128)] * 2)
    mesh = sharding.make_mesh(data=2)

    @jax.jit
    def run(q, k, v):
        return _value_and_grads(
            lambda q, k, v: attention.attend(
                q,
                k,
                v,
                seg,
                implementation=implementation,
                rules=DEFAULT_SHARDING_RULES,
                interpret=True,
            ),
            q,
            k,
            v,
        )

    with jax.set_mesh(mesh):
        got = run(q, k, v)
    _assert_close(got, _value_and_grads(_reference(seg), q, k, v), atol=1e-5)


@pytest.mark.parametrize("implementation", KERNELS)
def test_model_with_a_kernel_equals_the_model_with_the_reference(implementation, monkeypatch):
    """The whole model's loss and gradients, packed rows, bfloat16 off (exact path)."""
    monkeypatch.setattr(attention, "attend", functools.partial(attention.attend, interpret=True))
    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=256, max_seq_len=128)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 129), 0, 256)
    seg = _packed_segments(2, 128)

    def loss_and_grads(cfg):
        net = model_lib.Transformer(cfg, rngs=nnx.Rngs(0))

        def loss(net):
            per_token = net.token_losses(tokens[:, :-1], tokens[:, 1:], segment_ids_bt=seg)
            return per_token.mean()

        return nnx.value_and_grad(loss)(net)

    ref_loss, ref_grads = loss_and_grads(cfg)
    loss, grads = loss_and_grads(dataclasses.replace(cfg, attention=implementation))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), grads, ref_grads)


def test_platform_defaults():
    assert attention.for_platform("tpu") == "splash"
    assert attention.for_platform("gpu") == "pallas_gpu"
    assert attention.for_platform("cpu") == "xla"


def test_unknown_implementation_is_named():
    q, k, v = _qkv(t=16)
    with pytest.raises(ValueError, match="attention: 'flash'"):
        attention.attend(q, k, v, _packed_segments(2, 16), implementation="flash")
