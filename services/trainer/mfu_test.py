"""MFU is per chip: a run over two (CPU) devices divides its tokens/s by two before
comparing with one chip's peak, so the same run's MFU does not double with the
device count."""

import os

# Two host devices, before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
)

import json  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from libs.model import flops  # noqa: E402
from proto import trainer_pb2  # noqa: E402
from services.trainer import train as train_lib  # noqa: E402
from services.trainer.train_test import VOCAB, make_spec, train  # noqa: E402


def test_mfu_over_two_devices_is_per_chip(tmp_path):
    assert len(jax.devices()) == 2
    spec = make_spec(tmp_path, mesh=trainer_pb2.Mesh(data=1, fsdp=2, tensor=1))
    state, _ = train(spec)
    assert state == trainer_pb2.SUCCEEDED
    with open(os.path.join(tmp_path, spec.run_id, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records
    config = train_lib.model_config(spec, VOCAB, "cpu")
    fpt = flops.flops_per_token(config, spec.seq_len)
    for r in records:
        # train() gives the trainer a peak of 1e11 FLOP/s a chip.
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] / 2 * fpt / 1e11, rel=1e-6)
