"""DataService over a real port: the messages match the library, errors name
the field, the server survives any request, auth and TLS work."""

import math
import subprocess

import grpc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from libs import errors
from libs.serving import server, status
from proto import data_pb2, data_pb2_grpc
from services.data import mixture
from services.data.api import client, servicer, testing, wire
from services.data.mixture import Mixture


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return testing.build_small_corpus(str(tmp_path_factory.mktemp("c")))


@pytest.fixture(scope="module")
def running(corpus):
    srv = server.serve(
        [(servicer.add_to_server, servicer.DataServicer(corpus))], [servicer.SERVICE_NAME]
    )
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def stub(running):
    channel = grpc.insecure_channel(running.address, options=server.channel_options())
    yield data_pb2_grpc.DataServiceStub(channel)
    channel.close()


MIX = Mixture.of({"text": 0.5, "code": 0.25, "markup": 0.1, "code_adjacent": 0.15}, name="m")


def request(**kw):
    base = dict(
        mixture=wire.mixture_to_proto(MIX),
        seed=3,
        global_batch_size=4,
        seq_len=64,
        num_shards=1,
        num_steps=3,
    )
    base.update(kw)
    return data_pb2.StreamBatchesRequest(**base)


def test_list_sources(stub, corpus):
    r = stub.ListSources(data_pb2.ListSourcesRequest(), timeout=10)
    assert [s.name for s in r.sources] == [s.name for s in corpus.sources]
    assert [s.kind for s in r.sources] == ["text", "code", "markup", "code_adjacent"]
    assert r.sources[0].num_tokens == corpus.source("text").num_tokens and r.sources[0].content_hash
    assert (r.corpus_id, r.vocab_size, r.eos_id, r.pad_id) == (corpus.corpus_id, 400, 1, 0)
    # The held-out slice's size, as the manifest records it.
    assert [s.heldout_documents for s in r.sources] == [
        e["heldout"]["num_held_out"] for e in corpus.manifest["sources"]
    ]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(r.tokenizer_json)
    assert (
        tok.get_vocab_size() == 400
        and tok.decode(corpus.tokenizer().encode("def f(): pass\n")) == "def f(): pass\n"
    )


def test_validate_mixture_returns_the_plan(stub, corpus):
    r = stub.ValidateMixture(
        data_pb2.ValidateMixtureRequest(mixture=wire.mixture_to_proto(MIX), token_budget=10_000),
        timeout=10,
    )
    assert r.token_budget == 10_000
    assert {p.source: p.tokens for p in r.plan} == {
        "text": 5000,
        "code": 2500,
        "markup": 1000,
        "code_adjacent": 1500,
    }
    assert r.plan[0].epochs == pytest.approx(5000 / corpus.source("text").num_tokens)


@pytest.mark.parametrize("encoding", [data_pb2.BATCH_ENCODING_FULL, data_pb2.BATCH_ENCODING_PACKED])
def test_stream_equals_the_library(stub, corpus, encoding):
    for shard in range(2):
        messages = list(
            stub.StreamBatches(
                request(
                    start_step=5, num_steps=4, shard_index=shard, num_shards=2, encoding=encoding
                ),
                timeout=30,
            )
        )
        got = [wire.batch_from_proto(m) for m in messages]
        reader = mixture.BatchReader(
            corpus, MIX, seed=3, global_batch_size=4, seq_len=64, shard_index=shard, num_shards=2
        )
        assert got == [reader.batch(k) for k in range(5, 9)]
        assert got[0].batch_size == 2 and got[0].source_names == (
            "text",
            "code",
            "markup",
            "code_adjacent",
        )
        if encoding == data_pb2.BATCH_ENCODING_PACKED:
            assert (
                not messages[0].tokens
                and messages[0].packed_token_bytes == 2
                and messages[0].eos_id == corpus.eos_id
            )
        else:
            assert messages[0].tokens and not messages[0].packed_tokens


@pytest.mark.parametrize("per_message,sizes", [(0, [7]), (1, [1] * 7), (3, [3, 3, 1])])
def test_groups_hold_the_same_batches(stub, corpus, per_message, sizes):
    # Through the generated stub, as another team's client would read them.
    groups = list(
        stub.StreamBatchGroups(
            request(
                start_step=4,
                num_steps=7,
                encoding=data_pb2.BATCH_ENCODING_PACKED,
                batches_per_message=per_message,
            ),
            timeout=30,
        )
    )
    assert [len(g.batches) for g in groups] == sizes  # 0: 4 x 64 tokens fit one group
    reader = mixture.BatchReader(corpus, MIX, seed=3, global_batch_size=4, seq_len=64)
    got = [wire.batch_from_proto(b) for g in groups for b in g.batches]
    assert got == [reader.batch(k) for k in range(4, 11)]


def test_a_group_cut_short_by_the_epoch_cap_is_sent_before_the_error(stub, corpus):
    # Room for 13.5 steps of 4 x 64 tokens: the 14th step goes over the cap.
    capped = Mixture.of({"markup": 1}, max_epochs=13.5 * 256 / corpus.source("markup").num_tokens)
    reader = mixture.BatchReader(corpus, capped, seed=3, global_batch_size=4, seq_len=64)
    served = 0
    with pytest.raises(errors.OutOfRange):
        while True:
            reader.batch(served)
            served += 1
    assert served == 13
    received = []
    c, details = error_of(
        lambda: received.extend(
            stub.StreamBatchGroups(
                request(mixture=wire.mixture_to_proto(capped), num_steps=0, batches_per_message=5),
                timeout=30,
            )
        )
    )
    assert c == grpc.StatusCode.OUT_OF_RANGE and details.startswith("mixture.max_epochs")
    assert [len(g.batches) for g in received] == [5, 5, 3]


def test_client_library_streams_and_closes(running, corpus):
    with client.DataClient(running.address) as c:
        assert len(c.list_sources().sources) == 4
        reader = mixture.BatchReader(corpus, MIX, seed=3, global_batch_size=4, seq_len=64)
        for encoding in ("packed", "full"):
            with c.stream(
                MIX,
                seed=3,
                global_batch_size=4,
                seq_len=64,
                start_step=2,
                num_steps=5,
                encoding=encoding,
            ) as s:
                assert list(s) == [reader.batch(k) for k in range(2, 7)]
        # An endless stream stops when closed.
        s = c.stream({"text": 1}, seed=0, global_batch_size=2, seq_len=16, prefetch=2)
        assert [next(s).step for _ in range(3)] == [0, 1, 2]
        s.close()


def error_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


@pytest.mark.parametrize(
    "kw,code,field",
    [
        (
            dict(mixture=wire.mixture_to_proto(Mixture.of({"text": 1, "code": -0.5}))),
            "INVALID_ARGUMENT",
            "mixture.stages[0].weights[1].weight: must be >= 0",
        ),
        (
            dict(mixture=wire.mixture_to_proto(Mixture.of({"text": 0, "code": 0}))),
            "INVALID_ARGUMENT",
            "mixture.stages[0].weights: all weights are 0",
        ),
        (
            dict(mixture=wire.mixture_to_proto(Mixture.of({"text": 1, "web": 1}))),
            "NOT_FOUND",
            "mixture.stages[0].weights[1].source: unknown source 'web'",
        ),
        (dict(mixture=data_pb2.MixtureSpec()), "INVALID_ARGUMENT", "mixture.stages:"),
        (dict(shard_index=2, num_shards=2), "INVALID_ARGUMENT", "shard_index:"),
        (dict(num_shards=3), "INVALID_ARGUMENT", "num_shards:"),
        (dict(global_batch_size=0), "INVALID_ARGUMENT", "global_batch_size:"),
        (dict(global_batch_size=2**31 - 1), "INVALID_ARGUMENT", "global_batch_size:"),
        (dict(global_batch_size=65536, seq_len=1 << 20), "INVALID_ARGUMENT", "global_batch_size:"),
        (dict(seq_len=4), "INVALID_ARGUMENT", "seq_len:"),
        (dict(start_step=-1), "INVALID_ARGUMENT", "start_step:"),
        (dict(num_steps=-2), "INVALID_ARGUMENT", "num_steps:"),
        (dict(encoding=7), "INVALID_ARGUMENT", "encoding:"),
        (dict(start_step=2**62), "INVALID_ARGUMENT", "start_step:"),
        (
            dict(
                mixture=wire.mixture_to_proto(Mixture.of({"text": 1}, max_epochs=1)),
                num_steps=100000,
            ),
            "INVALID_ARGUMENT",
            "mixture.max_epochs:",
        ),
        (
            dict(mixture=wire.mixture_to_proto(Mixture.staged([(1000, {"text": 1})]))),
            "INVALID_ARGUMENT" if False else "OUT_OF_RANGE",
            None,
        ),
    ],
)
def test_bad_requests_name_the_field(stub, kw, code, field):
    if code == "OUT_OF_RANGE":
        kw = dict(kw, start_step=100)
    for method in (stub.StreamBatches, stub.StreamBatchGroups):
        c, details = error_of(lambda: list(method(request(**kw), timeout=30)))
        assert c == grpc.StatusCode[code]
        assert field is None or details.startswith(field), details


def test_the_field_at_fault_travels_in_the_status_details(stub):
    for call in (
        lambda r: stub.ValidateMixture(data_pb2.ValidateMixtureRequest(mixture=r.mixture)),
        lambda r: list(stub.StreamBatches(r, timeout=30)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(request(mixture=wire.mixture_to_proto(Mixture.of({"text": 1, "web": 1}))))
        error = status.field_error(e.value)
        assert type(error) is errors.NotFound
        assert error.field == "mixture.stages[0].weights[1].source"
        assert error.message == "unknown source 'web' (known: code, code_adjacent, markup, text)"


@pytest.mark.parametrize(
    "method,per_message",
    [
        ("StreamBatches", 2),
        ("StreamBatches", -1),
        ("StreamBatchGroups", -1),
        ("StreamBatchGroups", 1025),
        ("StreamBatchGroups", 64),  # 64 x 4 x 2**16 tokens: over one message's limit
    ],
)
def test_bad_group_sizes_name_the_field(stub, method, per_message):
    call = getattr(stub, method)
    kw = dict(batches_per_message=per_message, seq_len=1 << 16)
    c, details = error_of(lambda: list(call(request(**kw), timeout=30)))
    assert c == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("batches_per_message:")


def test_validate_mixture_errors(stub):
    bad = wire.mixture_to_proto(Mixture.staged([(0, {"text": 1}), (5, {"code": 1})]))
    c, details = error_of(
        lambda: stub.ValidateMixture(data_pb2.ValidateMixtureRequest(mixture=bad), timeout=10)
    )
    assert c == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(
        "mixture.stages[0].until_tokens"
    )
    c, details = error_of(
        lambda: stub.ValidateMixture(
            data_pb2.ValidateMixtureRequest(mixture=wire.mixture_to_proto(MIX), token_budget=-1),
            timeout=10,
        )
    )
    assert c == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("token_budget")


# Mostly valid values with the odd bad one, so that both paths are exercised.
NAMES = st.sampled_from(["text", "code", "markup", "code_adjacent"] * 6 + ["", "nope", "TEXT"])
WEIGHTS = st.one_of(
    *[st.floats(0.01, 10)] * 8,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-300, 1e308]),
)
STAGES = st.lists(
    st.builds(
        lambda ws, until: data_pb2.MixtureStage(
            until_tokens=until, weights=[data_pb2.SourceWeight(source=n, weight=w) for n, w in ws]
        ),
        st.lists(st.tuples(NAMES, WEIGHTS), min_size=1, max_size=3, unique_by=lambda t: t[0]),
        st.sampled_from([0] * 12 + [1, 100, 5000, -1, 2**62]),
    ),
    min_size=1,
    max_size=2,
)
OK_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
}


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    stages=STAGES,
    max_epochs=st.sampled_from([0.0] * 8 + [0.5, 2.0, 1e9, -1.0, float("nan"), float("inf")]),
    seed=st.integers(0, 2**64 - 1),
    start_step=st.sampled_from([0, 0, 1, 7, 1000] * 3 + [-1, 2**40, 2**63 - 1]),
    num_steps=st.sampled_from([0, 1, 1, 2] * 3 + [-1]),
    shard=st.tuples(
        st.sampled_from([0] * 12 + [1, 3, -1, 2**31 - 1]), st.sampled_from([1] * 12 + [2, 4, 0, -3])
    ),
    geometry=st.tuples(
        st.sampled_from([1, 2, 4, 8] * 3 + [0, -1, 65536, 65537, 2**31 - 1]),
        st.sampled_from([8, 16, 64, 300] * 3 + [0, 7, 1 << 20, (1 << 20) + 1, -8]),
    ),
    grouping=st.tuples(st.booleans(), st.sampled_from([0, 1, 3] * 4 + [-1, 1024, 1025, 2**31 - 1])),
)
def test_any_request_leaves_the_server_serving(
    stub, stages, max_epochs, seed, start_step, num_steps, shard, geometry, grouping
):
    spec = data_pb2.MixtureSpec(name="h", stages=stages, max_epochs=max_epochs)
    req = data_pb2.StreamBatchesRequest(
        mixture=spec,
        seed=seed,
        start_step=start_step,
        num_steps=num_steps,
        encoding=seed % 2,
        shard_index=shard[0],
        num_shards=shard[1],
        global_batch_size=geometry[0],
        seq_len=geometry[1],
        batches_per_message=grouping[1],
    )
    grouped = grouping[0]
    call = (stub.StreamBatchGroups if grouped else stub.StreamBatches)(req, timeout=30)
    try:
        first = next(call, None)
        code = grpc.StatusCode.OK
        if first is not None:
            assert (first.batches[0] if grouped else first).step == start_step
    except grpc.RpcError as e:
        code = e.code()
        assert e.details() and ":" in e.details()
    finally:
        call.cancel()
    assert code in OK_CODES, code
    v = None
    try:
        v = stub.ValidateMixture(
            data_pb2.ValidateMixtureRequest(mixture=spec, token_budget=max(0, start_step)),
            timeout=30,
        )
    except grpc.RpcError as e:
        assert e.code() in OK_CODES, e
    if v is not None:
        assert all(p.tokens >= 0 and math.isfinite(p.epochs) for p in v.plan)
    assert len(stub.ListSources(data_pb2.ListSourcesRequest(), timeout=10).sources) == 4


def test_auth_token_required(corpus):
    srv = server.serve(
        [(servicer.add_to_server, servicer.DataServicer(corpus))],
        [servicer.SERVICE_NAME],
        auth_token="s3cret",
    )
    try:
        with client.DataClient(srv.address) as anonymous:
            c, _ = error_of(anonymous.list_sources)
            assert c == grpc.StatusCode.UNAUTHENTICATED
            s = anonymous.stream(MIX, seed=0, global_batch_size=2, seq_len=16, num_steps=1)
            c, _ = error_of(lambda: next(s))
            assert c == grpc.StatusCode.UNAUTHENTICATED
        with client.DataClient(srv.address, auth_token="wrong") as wrong:
            assert error_of(wrong.list_sources)[0] == grpc.StatusCode.UNAUTHENTICATED
        with client.DataClient(srv.address, auth_token="s3cret") as ok:
            assert len(ok.list_sources().sources) == 4
            assert [
                b.step for b in ok.stream(MIX, seed=0, global_batch_size=2, seq_len=16, num_steps=2)
            ] == [0, 1]
    finally:
        srv.stop(0)


def test_tls_with_token(corpus, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    srv = server.serve(
        [(servicer.add_to_server, servicer.DataServicer(corpus))],
        [servicer.SERVICE_NAME],
        auth_token="t",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
    )
    try:
        with client.DataClient(
            srv.address, auth_token="t", root_certificates=cert.read_bytes()
        ) as c:
            assert len(c.list_sources().sources) == 4
            assert [
                b.step for b in c.stream(MIX, seed=0, global_batch_size=2, seq_len=16, num_steps=2)
            ] == [0, 1]
        with client.DataClient(
            srv.address, auth_token="t", retry=client.RetryPolicy(give_up_s=0.5)
        ) as plaintext:
            assert error_of(plaintext.list_sources)[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(0)
