"""The wire format: hand-written encoding equals protobuf's, decoding is exact."""

import numpy as np
import pytest

from libs import errors
from proto import data_pb2
from services.data import mixture
from services.data.api import testing, wire
from services.data.batch import Batch, PackedBatch


def make_batch(step=7, rows=3, cols=10, stage=1):
    rng = np.random.default_rng(step)
    return Batch(
        step=step,
        shard_index=2,
        tokens=rng.integers(0, 2**31 - 1, (rows, cols), dtype=np.int32),
        targets=rng.integers(0, 50000, (rows, cols), dtype=np.int32),
        segment_ids=rng.integers(1, 5, (rows, cols), dtype=np.int32),
        positions=rng.integers(0, cols, (rows, cols), dtype=np.int32),
        loss_mask=rng.integers(0, 2, (rows, cols), dtype=np.uint8),
        source_ids=rng.integers(0, 3, (rows, cols), dtype=np.uint8),
        source_names=("text", "code", "süß"),
        tokens_before=step * rows * cols * 4,
        stage=stage,
        epochs=(0.5, 1e-9, 123.25),
    )


@pytest.mark.parametrize("step,stage", [(0, 0), (7, 1), (2**40, 3)])
def test_encode_matches_protobuf_and_decodes_exactly(step, stage):
    b = make_batch(step=step, stage=stage)
    raw = wire.encode_batch(b)
    assert raw == wire.batch_to_proto(b).SerializeToString()
    assert wire.decode_batch(raw) == b
    assert wire.batch_from_proto(data_pb2.Batch.FromString(raw)) == b


def test_decode_accepts_other_valid_encodings():
    b = make_batch()
    msg = wire.batch_to_proto(b)
    # Unknown fields (a newer server) are skipped.
    raw = msg.SerializeToString() + b"\xa8\x06\x05" + b"\xb2\x06\x03abc"
    assert wire.decode_batch(raw) == b
    # Field order does not matter.
    raw = (
        b"".join(
            data_pb2.Batch(**{f.name: getattr(msg, f.name)}).SerializeToString()
            for f in reversed(data_pb2.Batch.DESCRIPTOR.fields)
            if f.name not in ("source_names", "epochs")
        )
        + data_pb2.Batch(source_names=msg.source_names, epochs=msg.epochs).SerializeToString()
    )
    assert wire.decode_batch(raw) == b


def test_decoded_arrays_are_views_of_the_message():
    raw = wire.encode_batch(make_batch())
    d = wire.decode_batch(raw)
    assert not d.tokens.flags.writeable and d.tokens.base is not None


def test_mixture_round_trip():
    m = mixture.Mixture.staged(
        [(1000, {"text": 0.9, "code": 0.1}), (0, {"code": 1.0})], name="c", max_epochs=2.5
    )
    assert wire.mixture_from_proto(wire.mixture_to_proto(m)) == m


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    corpus = testing.numbered_corpus(
        str(tmp_path_factory.mktemp("c")), {"a": [5, 9, 30, 2], "b": [70, 3, 3]}
    )
    return mixture.BatchReader(
        corpus,
        mixture.Mixture.of({"a": 1, "b": 2}),
        seed=1,
        global_batch_size=4,
        seq_len=16,
        shard_index=1,
        num_shards=2,
    )


@pytest.mark.parametrize("width", [2, 4])
def test_packed_encoding_round_trips_to_the_full_batch(reader, width):
    for step in range(5):
        packed = reader.packed(step)
        if width == 2:  # numbered tokens do not fit 16 bits; keep the test to the encoding
            packed = PackedBatch(**{**packed.__dict__, "tokens": packed.tokens % 60000})
        raw = wire.encode_batch(packed, width)
        assert raw == wire.batch_to_proto(packed, width).SerializeToString()
        assert wire.decode(raw) == packed
        assert wire.decode_batch(raw) == packed.unpack()
        assert wire.batch_from_proto(data_pb2.Batch.FromString(raw)) == packed.unpack()
    assert wire.decode_batch(wire.encode_batch(reader.packed(3), 4)) == reader.batch(3)
    # The packed message is several times smaller.
    assert len(wire.encode_batch(reader.packed(3), 4)) * 3 < len(wire.encode_batch(reader.batch(3)))


def test_token_width():
    assert (
        wire.token_width(8192) == 2
        and wire.token_width(65536) == 2
        and wire.token_width(65537) == 4
    )


def test_group_encoding_matches_protobuf_and_splits_into_views(reader):
    batches = [make_batch(step=3), reader.packed(4), make_batch(step=5)]
    raw = wire.encode_group(batches, 4)
    expected = data_pb2.BatchGroup(batches=[wire.batch_to_proto(b, 4) for b in batches])
    assert raw == expected.SerializeToString()
    assert wire.decode_group(raw) == [batches[0], reader.batch(4), batches[2]]
    messages = list(wire.group_messages(raw))
    assert all(m.obj is raw for m in messages)  # views, not copies
    # Unknown fields of a newer server are skipped.
    assert len(list(wire.group_messages(b"\x10\x05" + raw + b"\x1a\x02ab"))) == 3
    assert wire.encode_group([]) == b"" and wire.decode_group(b"") == []
    with pytest.raises(ValueError, match="truncated"):
        wire.decode_group(raw[:-1])


def test_batches_per_message():
    # 16 x 2048 packed at 2 bytes a token is 64 KiB: eight to a 512 KiB group.
    assert wire.batches_per_message(0, 16, 2048, packed=True, token_bytes=2) == 8
    assert wire.batches_per_message(0, 16, 2048, packed=True, token_bytes=4) == 4
    # A FULL batch (18 bytes a token) is already larger than a group.
    assert wire.batches_per_message(0, 16, 2048, packed=False, token_bytes=2) == 1
    assert wire.batches_per_message(0, 1, 8, packed=True, token_bytes=2) == 1024
    assert wire.batches_per_message(7, 16, 2048, packed=True, token_bytes=2) == 7
    for bad in (-1, 1025):
        with pytest.raises(errors.InvalidArgument, match="must be in") as e:
            wire.batches_per_message(bad, 4, 64, packed=True, token_bytes=2)
        assert e.value.field == "batches_per_message"
    # A group holds no more tokens than one message may carry.
    assert wire.batches_per_message(2, 512, 4096, packed=True, token_bytes=2) == 2
    with pytest.raises(errors.InvalidArgument, match="tokens one message may carry") as e:
        wire.batches_per_message(3, 512, 4096, packed=True, token_bytes=2)
    assert e.value.field == "batches_per_message"
