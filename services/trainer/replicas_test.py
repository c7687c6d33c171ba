"""Data replicas: two data-service processes serving one corpus.

A RunSpec listing both (data_addresses) sends process i to replica i mod 2;
each process's shard of every batch is the same as the one it gets when
every process reads a single service.
"""

import numpy as np
import pytest

from libs import errors
from proto import trainer_pb2
from services.data.api import client as data_client
from services.data.api import testing as data_testing
from services.trainer import data_link

FIELDS = ("tokens", "targets", "segment_ids", "positions", "loss_mask", "source_ids")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    corpus = data_testing.build_small_corpus(str(tmp_path_factory.mktemp("corpus")))
    servers = [
        data_client.start_local_server(corpus.path, build_default_corpus=False) for _ in range(2)
    ]
    try:
        yield [s.address for s in servers]
    finally:
        for s in servers:
            s.stop()


def _spec(**addresses) -> trainer_pb2.RunSpec:
    mixture = data_testing.one_stage_mixture(text=0.5, code=0.5)
    return trainer_pb2.RunSpec(
        run_id="replicas",
        global_batch_size=8,
        seq_len=64,
        seed=3,
        phases=[trainer_pb2.Phase(name="p", mixture=mixture, token_budget=8 * 64 * 6)],
        **addresses,
    )


def _shard(spec, index: int, steps: int = 6):
    link = data_link.connect(spec, shard_index=index, num_shards=2, echo=False)
    try:
        batches = link.batches(0, spec.phases[0], start_step=0)
        out = [next(batches) for _ in range(steps)]
        batches.close()
        return link.address, out
    finally:
        link.close()


def test_two_replicas_serve_the_batches_of_one(replicas):
    one = _spec(data_address=replicas[0])
    two = _spec(data_addresses=replicas)
    for index in range(2):
        single_address, single = _shard(one, index)
        replica_address, replicated = _shard(two, index)
        assert single_address == replicas[0]
        assert replica_address == replicas[index % 2]  # process i reads replica i mod R
        for a, b in zip(single, replicated, strict=True):
            for name in FIELDS:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        # The two processes' shards differ: each reads its own rows.
    assert not np.array_equal(_shard(one, 0)[1][0].tokens, _shard(one, 1)[1][0].tokens)


def test_a_bad_replica_list_names_its_field(replicas):
    with pytest.raises(errors.FieldError, match=r"data_addresses\[1\]"):
        data_link.connect(_spec(data_addresses=[replicas[0], " "]), echo=False)
    with pytest.raises(errors.FieldError, match="data_address"):
        data_link.connect(_spec(data_address="127.0.0.1:1", data_addresses=replicas), echo=False)
    # A dead replica is named by its index, for process 1 of 2.
    with pytest.raises(errors.FieldError, match=r"data_addresses\[1\].*cannot reach"):
        data_link.connect(
            _spec(data_addresses=[replicas[0], "127.0.0.1:1"]),
            shard_index=1,
            num_shards=2,
            echo=False,
        )


def test_the_data_services_verdict_on_a_mixture_names_the_runspec_field(replicas):
    link = data_link.connect(_spec(data_address=replicas[0]), echo=False)
    try:
        link.check_mixture("phases[0].mixture", data_testing.one_stage_mixture(text=1, code=1))
        unknown = data_testing.one_stage_mixture(text=1, web=1)
        with pytest.raises(errors.NotFound) as e:
            link.check_mixture("phases[0].mixture", unknown)
        assert e.value.field == "phases[0].mixture.stages[0].weights[1].source"
        assert e.value.message.startswith("unknown source 'web'")
        negative = data_testing.one_stage_mixture(text=1, code=-1)
        with pytest.raises(errors.InvalidArgument) as e:
            link.check_mixture("phases[1].mixture", negative)
        assert e.value.field == "phases[1].mixture.stages[0].weights[1].weight"
    finally:
        link.close()
