"""The client against the real data binary: a server killed with SIGKILL
mid-stream and restarted is invisible in the batches the client yields."""

import re

import grpc
import pytest

from libs.serving import process
from services.data import mixture
from services.data.api import client, testing
from services.data.mixture import Mixture

MIX = Mixture.of({"text": 0.6, "code": 0.2, "code_adjacent": 0.2})
# Batches (16 KiB packed) and groups small enough, and a stream long enough
# (about 3 MiB), that the HTTP/2 window cannot hold the rest of it when the
# server is killed, so the client must reconnect. gRPC grows the window with
# its bandwidth estimate, and 30 batches (480 KiB) sometimes fit entirely.
GEOMETRY = dict(seed=17, global_batch_size=8, seq_len=1024)
STEPS = 200
PER_MESSAGE = pytest.mark.parametrize("per_message", [1, 4])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return testing.build_small_corpus(str(tmp_path_factory.mktemp("c")))


@pytest.fixture(scope="module")
def expected(corpus):
    reader = mixture.BatchReader(corpus, MIX, **GEOMETRY)
    return [reader.batch(k) for k in range(STEPS)]


def start(corpus, port=0):
    return client.start_local_server(
        corpus.path, build_default_corpus=False, port=port, timeout=120
    )


def test_binary_prints_its_address(corpus):
    server = start(corpus)
    try:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", server.address)
        assert f"DataService listening on {server.address}" in server.log_lines
        process.wait_healthy(server.address, "codelab.data.v1.DataService")
    finally:
        assert server.stop() == 0


@PER_MESSAGE
def test_sigkill_and_restart_on_the_same_port_is_invisible(corpus, expected, per_message):
    server = start(corpus)
    port = int(server.address.rsplit(":", 1)[1])
    data = client.DataClient(
        server.address, retry=client.RetryPolicy(max_backoff_s=0.5, give_up_s=60)
    )
    got = []
    try:
        with data.stream(
            MIX, **GEOMETRY, num_steps=STEPS, prefetch=2, batches_per_message=per_message
        ) as stream:
            for batch in stream:
                got.append(batch)
                if len(got) == 8:
                    server.kill()  # SIGKILL, mid-stream
                    server = start(corpus, port=port)
            assert stream.reconnects >= 1
    finally:
        data.close()
        server.stop()
    assert [b.step for b in got] == list(range(STEPS))
    assert got == expected


@PER_MESSAGE
def test_reconnect_target_follows_a_server_to_a_new_port(corpus, expected, per_message):
    box = {"server": start(corpus)}
    data = client.DataClient(
        lambda: box["server"].address, retry=client.RetryPolicy(max_backoff_s=0.5, give_up_s=60)
    )
    got = []
    try:
        with data.stream(
            MIX,
            **GEOMETRY,
            start_step=10,
            num_steps=12,
            prefetch=1,
            batches_per_message=per_message,
        ) as stream:
            for batch in stream:
                got.append(batch)
                if len(got) == 3:
                    box["server"].kill()
                    box["server"] = start(corpus)  # port 0: most likely another port
    finally:
        data.close()
        box["server"].stop()
    assert got == expected[10:22]


def test_errors_other_than_unavailable_reach_the_caller(corpus):
    server = start(corpus)
    try:
        with client.DataClient(server.address) as data:
            stream = data.stream({"text": 1, "missing": 1}, **GEOMETRY)
            with pytest.raises(grpc.RpcError) as e:
                next(stream)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert "mixture.stages[0].weights[1].source" in e.value.details()
            assert data.validate_mixture({"text": 1}, 1000).plan[0].tokens == 1000
    finally:
        server.stop()


def test_gives_up_when_no_server_comes_back():
    data = client.DataClient(
        "127.0.0.1:1",
        retry=client.RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, give_up_s=0.3),
    )
    stream = data.stream({"text": 1}, **GEOMETRY)
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    data.close()
