"""Mixtures: exact proportions, determinism, shards, stages, packing, validation.

The corpus here is written directly: every token is distinct, so a served
token says which source, document and position it came from.
"""

import math

import numpy as np
import pytest

from libs import errors
from services.data import mixture
from services.data.api import testing
from services.data.mixture import Mixture

SIZES = {
    "a": [5, 40, 3, 17, 60, 8, 25, 12, 9, 31],
    "b": [100, 7, 55, 20],
    "c": [2, 3, 4, 2, 6, 3, 2, 5, 2, 3, 4, 7, 2, 3],
    "tiny": [2],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return testing.numbered_corpus(str(tmp_path_factory.mktemp("corpus")), SIZES)


def stream_of(corpus, name, seed, epochs):
    """Source `name`'s stream as the reader defines it: each epoch a seeded
    permutation of its documents, each document + <eos>."""
    reader = mixture.BatchReader(
        corpus, Mixture.of({name: 1}), seed=seed, global_batch_size=1, seq_len=8
    )
    stream = reader._streams[0]
    out = []
    for e in range(epochs):
        starts, files = stream.epoch(e)
        for f, n in zip(files, np.diff(starts)):
            out.extend(corpus.tokens(name)[f : f + n].tolist())
    return out


def flat_tokens(batch, source_index=None):
    """The batch's tokens in block order (single shard), optionally of one source."""
    t = batch.tokens.ravel()
    if source_index is None:
        return t.tolist()
    return t[batch.source_ids.ravel() == source_index].tolist()


def test_largest_remainder_is_exact_and_stable():
    assert mixture.largest_remainder([1, 1, 1], 10).tolist() == [4, 3, 3]
    assert mixture.largest_remainder([0.5, 0.25, 0.25], 8).tolist() == [4, 2, 2]
    assert mixture.largest_remainder([1, 0, 2], 7).tolist() == [2, 0, 5]
    for total in (1, 7, 1000, 2**40 + 3):
        q = mixture.largest_remainder([0.1, 0.2, 0.3, 0.4], total)
        assert q.sum() == total and (q >= 0).all()
        assert all(abs(x - w * total) < 1 for x, w in zip(q, [0.1, 0.2, 0.3, 0.4]))


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_proportions_are_exact_per_block(corpus, num_shards):
    mix = Mixture.of({"a": 0.5, "b": 0.3, "c": 0.2})
    B, L = 8, 32
    quotas = mixture.largest_remainder([0.5, 0.3, 0.2], B * L)
    for step in range(6):
        counts = np.zeros(3, np.int64)
        for i in range(num_shards):
            r = mixture.BatchReader(
                corpus,
                mix,
                seed=3,
                global_batch_size=B,
                seq_len=L,
                shard_index=i,
                num_shards=num_shards,
            )
            b = r.batch(step)
            assert b.tokens.shape == (B // num_shards, L)
            counts += np.bincount(b.source_ids.ravel(), minlength=3)
            # Source ids agree with the token values (source k's tokens are (k+1)*1e7 + ...).
            real = b.tokens != testing.EOS
            assert ((b.tokens[real] // 10**7) - 1 == b.source_ids[real]).all()
        assert counts.tolist() == quotas.tolist()


def test_batch_is_a_pure_function_of_its_arguments(corpus):
    mix = Mixture.of({"a": 2, "b": 1, "c": 1})
    kw = dict(seed=11, global_batch_size=4, seq_len=24, shard_index=1, num_shards=2)
    r1 = mixture.BatchReader(corpus, mix, **kw)
    forward = [r1.batch(k) for k in range(12)]
    # A fresh reader, steps in another order (a restart at step 7, then a
    # look back): the same bytes.
    r2 = mixture.BatchReader(corpus, mix, **kw)
    for k in [7, 8, 11, 3, 0, 9]:
        assert r2.batch(k) == forward[k]
    assert (
        list(mixture.BatchReader(corpus, mix, **kw).iterate(start_step=5, num_steps=4))
        == forward[5:9]
    )
    # The seed matters.
    other = mixture.BatchReader(corpus, mix, **dict(kw, seed=12)).batch(4)
    assert not np.array_equal(other.tokens, forward[4].tokens)


def test_shards_cover_the_global_batch_exactly_once(corpus):
    mix = Mixture.of({"a": 1, "b": 1, "c": 1})
    B, L = 8, 16
    whole = mixture.BatchReader(corpus, mix, seed=5, global_batch_size=B, seq_len=L)
    for step in range(5):
        rows = []
        for i in range(4):
            part = mixture.BatchReader(
                corpus, mix, seed=5, global_batch_size=B, seq_len=L, shard_index=i, num_shards=4
            ).batch(step)
            rows += [
                (
                    part.tokens[j].tobytes(),
                    part.targets[j].tobytes(),
                    part.segment_ids[j].tobytes(),
                    part.loss_mask[j].tobytes(),
                )
                for j in range(part.batch_size)
            ]
        full = whole.batch(step)
        expected = [
            (
                full.tokens[j].tobytes(),
                full.targets[j].tobytes(),
                full.segment_ids[j].tobytes(),
                full.loss_mask[j].tobytes(),
            )
            for j in range(B)
        ]
        assert sorted(rows) == sorted(expected)


def test_each_source_is_served_as_its_epoch_stream(corpus):
    """Concatenating a source's tokens over steps gives its stream exactly:
    every document once per epoch, whole, in the seeded order; epochs are
    reported as consumed tokens / source tokens."""
    mix = Mixture.of({"a": 3, "c": 1})
    B, L = 2, 40
    reader = mixture.BatchReader(corpus, mix, seed=9, global_batch_size=B, seq_len=L)
    got = {0: [], 1: []}
    for step in range(30):
        b = reader.batch(step)
        for s in (0, 1):
            got[s] += flat_tokens(b, s)
        total = {s: len(got[s]) for s in got}
        assert b.epochs == pytest.approx(
            (total[0] / corpus.source("a").num_tokens, total[1] / corpus.source("c").num_tokens)
        )
    for s, name in enumerate(["a", "c"]):
        n = corpus.source(name).num_tokens
        epochs = math.ceil(len(got[s]) / n) + 1
        assert got[s] == stream_of(corpus, name, 9, epochs)[: len(got[s])]
        # Each whole epoch holds every document exactly once.
        for e in range(len(got[s]) // n):
            epoch = got[s][e * n : (e + 1) * n]
            assert sorted(epoch) == sorted(corpus.tokens(name).tolist())
    # Different epochs are shuffled differently.
    n = corpus.source("c").num_tokens
    assert got[1][:n] != got[1][n : 2 * n]


def test_stage_boundary_neither_repeats_nor_skips(corpus):
    B, L = 2, 16
    block = B * L
    mix = Mixture.staged([(5 * block - 3, {"a": 1, "b": 1}), (0, {"a": 1, "c": 3})])
    reader = mixture.BatchReader(corpus, mix, seed=1, global_batch_size=B, seq_len=L)
    a_tokens, stages = [], []
    for step in range(12):
        b = reader.batch(step)
        stages.append(b.stage)
        assert b.tokens_before == step * block
        a_tokens += flat_tokens(b, 0)
        counts = b.source_token_counts()
        if b.stage == 0:
            assert counts == {"a": 16, "b": 16, "c": 0}
        else:
            assert counts == {"a": 8, "b": 0, "c": 24}
    # The stage ends at the first block boundary at or after until_tokens.
    assert stages == [0] * 5 + [1] * 7
    assert a_tokens == stream_of(corpus, "a", 1, 3)[: len(a_tokens)]


def test_packing_segments_positions_targets_and_loss_mask(corpus):
    mix = Mixture.of({"a": 1, "b": 1, "c": 2})
    reader = mixture.BatchReader(corpus, mix, seed=2, global_batch_size=4, seq_len=32)
    for step in range(8):
        b = reader.batch(step)
        assert (
            b.tokens.dtype == np.int32
            and b.loss_mask.dtype == np.uint8
            and b.source_ids.dtype == np.uint8
        )
        for row in range(b.batch_size):
            tok, tgt, seg, pos, mask = (
                x[row] for x in (b.tokens, b.targets, b.segment_ids, b.positions, b.loss_mask)
            )
            assert seg[0] == 1 and pos[0] == 0
            assert (np.diff(seg) >= 0).all() and (np.diff(seg) <= 1).all()
            new = np.concatenate([[True], np.diff(seg) == 1])
            # A new segment starts after every <eos> and wherever the source changes.
            after_eos = np.concatenate([[False], tok[:-1] == testing.EOS])
            source_change = np.concatenate([[False], np.diff(b.source_ids[row].astype(int)) != 0])
            assert (new[1:] == (after_eos | source_change)[1:]).all()
            # Positions restart at each segment and count up within it.
            cont = np.flatnonzero(~new)
            assert (pos[new] == 0).all() and (pos[cont] == pos[cont - 1] + 1).all()
            # The loss is off exactly at <eos> (its target is the next document).
            assert (mask == (tok != testing.EOS)).all()
            # Targets: the next token of the same document (distinct tokens
            # make "next" checkable: token + 1, or <eos> at the end).
            real = mask == 1
            assert ((tgt[real] == tok[real] + 1) | (tgt[real] == testing.EOS)).all()
            assert not (tok == testing.PAD).any()


def test_a_source_smaller_than_a_block_wraps_many_epochs(corpus):
    mix = Mixture.of({"a": 1, "tiny": 1})
    reader = mixture.BatchReader(corpus, mix, seed=0, global_batch_size=2, seq_len=64)
    b = reader.batch(0)
    tiny = flat_tokens(b, 1)
    assert len(tiny) == 64
    assert tiny == ([4 * 10**7, 4 * 10**7 + 1, testing.EOS] * 22)[:64]
    assert b.epochs[1] == pytest.approx(64 / 3)


def test_bounded_mixture_ends_and_start_past_end_is_out_of_range(corpus):
    mix = Mixture.staged([(100, {"a": 1}), (200, {"b": 1})])
    reader = mixture.BatchReader(
        corpus, mix, seed=0, global_batch_size=2, seq_len=16
    )  # 32-token blocks
    assert reader.num_steps == 7  # ceil(200 / 32)
    assert [b.step for b in reader.iterate()] == list(range(7))
    assert [b.stage for b in reader.iterate()] == [0, 0, 0, 0, 1, 1, 1]
    with pytest.raises(errors.OutOfRange) as e:
        reader.iterate(start_step=7)
    assert e.value.field == "start_step"


def test_plan_and_epoch_cap(corpus):
    available = {s.name: s.num_tokens for s in corpus.sources}
    budget, plan = mixture.plan(Mixture.of({"a": 3, "b": 1}), available, 1000)
    assert budget == 1000 and plan["a"][0] == 750 and plan["b"][0] == 250
    assert plan["a"][1] == pytest.approx(750 / available["a"])
    staged = Mixture.staged([(400, {"a": 1}), (0, {"a": 1, "b": 1})])
    assert mixture.plan(staged, available, 1000)[1] == {
        "a": (700, pytest.approx(700 / available["a"])),
        "b": (300, pytest.approx(300 / available["b"])),
    }
    capped = Mixture.of({"a": 1}, max_epochs=2)
    with pytest.raises(errors.InvalidArgument) as e:
        mixture.plan(capped, available, 3 * available["a"])
    assert e.value.field == "mixture.max_epochs"
    # Requests: a bounded request over the cap is refused up front; an open
    # one stops with OUT_OF_RANGE when the cap is reached.
    reader = mixture.BatchReader(corpus, capped, seed=0, global_batch_size=1, seq_len=10)
    with pytest.raises(errors.InvalidArgument):
        reader.iterate(0, 1000)
    served = []
    with pytest.raises(errors.OutOfRange) as e:
        for b in reader.iterate(0, 0):
            served.append(b.step)
    assert e.value.field == "mixture.max_epochs"
    assert len(served) == (2 * available["a"]) // 10


BAD = [
    (Mixture(stages=()), errors.InvalidArgument, "mixture.stages"),
    (Mixture.of({"a": -1}), errors.InvalidArgument, "mixture.stages[0].weights[0].weight"),
    (
        Mixture.of({"a": 1, "b": float("nan")}),
        errors.InvalidArgument,
        "mixture.stages[0].weights[1].weight",
    ),
    (
        Mixture.of({"a": float("inf")}),
        errors.InvalidArgument,
        "mixture.stages[0].weights[0].weight",
    ),
    (Mixture.of({"a": 0, "b": 0}), errors.InvalidArgument, "mixture.stages[0].weights"),
    (Mixture.of({}), errors.InvalidArgument, "mixture.stages[0].weights"),
    (Mixture.of({"a": 1, "nope": 1}), errors.NotFound, "mixture.stages[0].weights[1].source"),
    (Mixture.of({"": 1}), errors.InvalidArgument, "mixture.stages[0].weights[0].source"),
    (
        Mixture(
            stages=(mixture.Stage((mixture.SourceWeight("a", 1), mixture.SourceWeight("a", 2))),)
        ),
        errors.InvalidArgument,
        "mixture.stages[0].weights[1].source",
    ),
    (
        Mixture.staged([(0, {"a": 1}), (10, {"b": 1})]),
        errors.InvalidArgument,
        "mixture.stages[0].until_tokens",
    ),
    (
        Mixture.staged([(10, {"a": 1}), (10, {"b": 1})]),
        errors.InvalidArgument,
        "mixture.stages[1].until_tokens",
    ),
    (
        Mixture.staged([(-5, {"a": 1}), (0, {"b": 1})]),
        errors.InvalidArgument,
        "mixture.stages[0].until_tokens",
    ),
    (Mixture.of({"a": 1}, max_epochs=-1), errors.InvalidArgument, "mixture.max_epochs"),
    (Mixture.of({"a": 1e308, "b": 1e308}), errors.InvalidArgument, "mixture.stages[0].weights"),
]


@pytest.mark.parametrize("mix,error,field", BAD)
def test_invalid_mixtures_name_the_field(corpus, mix, error, field):
    with pytest.raises(error) as e:
        mixture.BatchReader(corpus, mix, seed=0, global_batch_size=2, seq_len=16)
    assert type(e.value) is error
    assert e.value.field == field
    assert str(e.value).startswith(field + ": ")


@pytest.mark.parametrize(
    "geometry,field",
    [
        (dict(global_batch_size=0, seq_len=16), "global_batch_size"),
        (dict(global_batch_size=65537, seq_len=16), "global_batch_size"),
        (dict(global_batch_size=4, seq_len=7), "seq_len"),
        (dict(global_batch_size=4, seq_len=16, num_shards=3), "num_shards"),
        (dict(global_batch_size=4, seq_len=16, num_shards=0), "num_shards"),
        (dict(global_batch_size=4, seq_len=16, num_shards=2, shard_index=2), "shard_index"),
        (dict(global_batch_size=4, seq_len=16, num_shards=2, shard_index=-1), "shard_index"),
        (dict(global_batch_size=8192, seq_len=1 << 20), "global_batch_size"),
    ],
)
def test_invalid_geometry_names_the_field(corpus, geometry, field):
    with pytest.raises(errors.InvalidArgument) as e:
        mixture.BatchReader(corpus, Mixture.of({"a": 1}), seed=0, **geometry)
    assert e.value.field == field


def test_a_mixture_over_the_source_limit_is_refused_naming_the_weight():
    names = [f"s{k:03d}" for k in range(mixture.MAX_SOURCES + 1)]
    available = dict.fromkeys(names, 10)
    flat = Mixture.of(dict.fromkeys(names, 1.0))
    with pytest.raises(errors.InvalidArgument) as e:
        mixture.validate(flat, available)
    field = f"mixture.stages[0].weights[{mixture.MAX_SOURCES}].source"
    assert e.value.field == field and str(e.value).startswith(field + ": ")
    # Sources count once however many stages name them: the one too many is
    # the first new name past the limit, here in the second stage.
    first, rest = names[:200], names[200:]
    staged = Mixture.staged(
        [(100, dict.fromkeys(first, 1.0)), (0, dict.fromkeys(first[:10] + rest, 1.0))]
    )
    with pytest.raises(errors.InvalidArgument) as e:
        mixture.validate(staged, available)
    assert e.value.field == f"mixture.stages[1].weights[{10 + len(rest) - 1}].source"
    # One fewer new name: exactly MAX_SOURCES over the two stages, accepted.
    mixture.validate(
        Mixture.staged(
            [(100, dict.fromkeys(first, 1.0)), (0, dict.fromkeys(first[:10] + rest[:-1], 1.0))]
        ),
        available,
    )
    mixture.validate(Mixture.of(dict.fromkeys(names[:-1], 1.0)), available)


def test_a_mixture_at_the_source_limit_is_served_with_uint8_ids(tmp_path):
    # Every source's tokens are 1000 + its index, so a token says its source.
    names = [f"s{k:03d}" for k in range(mixture.MAX_SOURCES)]
    corpus = testing.write_token_corpus(
        str(tmp_path), {n: [[1000 + k] * 3] for k, n in enumerate(names)}
    )
    at_limit = Mixture.of(dict.fromkeys(names, 1.0))
    b = mixture.BatchReader(corpus, at_limit, seed=0, global_batch_size=4, seq_len=128).batch(0)
    assert b.source_names == tuple(names)
    assert b.source_ids.dtype == np.uint8
    counts = np.bincount(b.source_ids.ravel(), minlength=mixture.MAX_SOURCES)
    assert counts.tolist() == [2] * mixture.MAX_SOURCES
    real = b.tokens != testing.EOS
    assert (b.tokens[real] - 1000 == b.source_ids[real]).all()
    assert b.tokens[b.source_ids == 255].tolist() == [1255, 1255]


def test_mixture_json_and_text_forms():
    m = Mixture.staged(
        [(100, {"text": 0.9, "code": 0.1}), (0, {"text": 0.5, "code": 0.5})], name="x", max_epochs=3
    )
    assert Mixture.from_json(m.to_json()) == m
    assert Mixture.parse("text=0.75, code=0.25") == Mixture.of({"text": 0.75, "code": 0.25})
    assert Mixture.from_json({"text": 1}) == Mixture.of({"text": 1.0})
    assert m.source_names() == ("text", "code")


def test_read_ahead_gives_the_same_batches(corpus):
    mix = Mixture.of({"a": 1, "c": 1})
    reader = mixture.BatchReader(corpus, mix, seed=4, global_batch_size=2, seq_len=16)
    assert list(reader.iterate(3, 6, read_ahead=2)) == list(reader.iterate(3, 6))
    it = reader.iterate(0, 0, read_ahead=2)
    assert next(it).step == 0
    it.close()  # stops the read-ahead thread
