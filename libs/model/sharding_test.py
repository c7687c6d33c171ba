"""Tests for sharding.py: rule mapping, and sharded == unsharded on 8 forced CPU devices.

The multi-device check runs in a subprocess: XLA fixes its device count when jax is
imported, and under plain pytest every test file shares one process.
"""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from libs.model import sharding
from libs.model.config import DEFAULT_SHARDING_RULES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_logical_to_spec_uses_each_mesh_axis_once():
    rules = DEFAULT_SHARDING_RULES
    assert sharding.logical_to_spec(("batch", "length", "embed"), rules) == P(
        ("data", "fsdp"), None, None
    )
    assert sharding.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("layers", "embed", None, "heads", "kv"), rules) == P(
        None, "fsdp", None, "tensor", None
    )
    assert sharding.logical_to_spec(("vocab", "embed"), rules) == P("tensor", "fsdp")


def test_constrain_without_mesh_is_identity():
    x = jnp.ones((2, 3))
    assert sharding.constrain(x, ("batch", "embed"), DEFAULT_SHARDING_RULES) is x


def test_mesh_must_cover_the_devices():
    with pytest.raises(ValueError, match="mesh"):
        sharding.make_mesh(data=2, fsdp=2, tensor=2, devices=[object()])


_EIGHT_DEVICES = textwrap.dedent("""
    import dataclasses
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from libs.model import model, sharding
    from libs.model.presets import get_preset

    assert jax.device_count() == 8, jax.devices()
    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=512, max_seq_len=64)
    make = lambda: model.Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (4, 32), 0, cfg.vocab_size)
    segment_ids = jnp.array([[1] * 20 + [2] * 12] * 4)
    forward = lambda net, t: net(t, segment_ids_bt=segment_ids)
    reference = np.asarray(nnx.jit(forward)(make(), tokens))

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    created = sharding.create_sharded(make, mesh, cfg.sharding_rules)
    moved = sharding.shard_model(make(), mesh, cfg.sharding_rules)
    for net in (created, moved):
        kernel = net.blocks.mlp.gate_up_dcf[...]
        assert kernel.sharding.spec == P(None, "fsdp", None, "tensor"), kernel.sharding
        assert len(kernel.addressable_shards) == 8
        with jax.set_mesh(mesh):
            logits = nnx.jit(forward)(net, tokens)
        assert logits.sharding.spec == P(("data", "fsdp"), None, "tensor"), logits.sharding
        np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5)
    print("SHARDED_OK")
""")


def test_sharded_forward_matches_unsharded_on_eight_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stderr[-3000:]
