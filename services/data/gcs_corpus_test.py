"""A corpus on gs:// (the GCS emulator), built there by the sharded build and
served from it by range reads: the same corpus and the same batches as on
local disk, across shard, stage and epoch boundaries, for 1, 2 and 4
trainer shards, after a restart mid-stream and through the data service."""

import json
import threading

import numpy as np
import pytest

from libs.storage import testing as storage_testing
from services.data import corpus, mixture, pipeline, sources
from services.data.api import client as data_client

SEQ, BATCH = 128, 8
# Two stages: text-heavy, then code-heavy from 20 steps' tokens on.
MIXTURE = mixture.Mixture.from_json(
    {
        "stages": [
            {"until_tokens": 20 * BATCH * SEQ, "weights": {"text": 0.8, "code": 0.2}},
            {"weights": {"text": 0.3, "code": 0.7}},
        ]
    }
)
STEPS = 60  # several epochs of both sources


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    specs = []
    for name, files in (("text", 3), ("code", 2)):
        for f in range(files):
            with open(root / f"{name}-{f}.jsonl", "w") as out:
                for _ in range(40):
                    n = int(rng.integers(5, 200))
                    text = " ".join(rng.choice(words, n)) + f" {name}"
                    out.write(json.dumps({"text": text}) + "\n")
        specs.append(
            sources.SourceSpec(
                name,
                name,
                "test files",
                (sources.Input(path="json", data_files=(str(root / f"{name}-*.jsonl"),)),),
            )
        )
    config = corpus.BuildConfig(vocab_size=300, benchmarks_dir="", include_humaneval=False)
    local = str(tmp_path_factory.mktemp("local") / "corpus")
    pipeline.build_sharded(specs, local, config, log=print)
    with storage_testing.gcs_emulator(bucket="bkt") as gcs:
        remote = gcs.uri("corpus")
        pipeline.build_sharded(specs, remote, config, log=print)
        yield local, remote


def _fields(batch):
    return (batch.tokens, batch.targets, batch.segment_ids, batch.source_ids)


def test_the_same_corpus_on_gcs(corpora):
    local, remote = corpora
    a, b = corpus.Corpus(local), corpus.Corpus(remote)
    assert a.corpus_id == b.corpus_id
    assert [len(s["shards"]) for s in b.manifest["sources"]] == [3, 2]
    assert b.heldout("text") == a.heldout("text")
    assert b.tokenizer().sha256 == a.tokenizer().sha256


@pytest.mark.parametrize("num_shards", [1, 2, 4])
@pytest.mark.parametrize("staged", [False, True])
def test_batches_from_gcs_equal_local(corpora, num_shards, staged, tmp_path):
    local, remote = corpora
    # By range with a small cache (blocks evicted and read again), or staged.
    a = corpus.Corpus(local)
    # Blocks of 256 bytes: a document spans several.
    b = corpus.Corpus(
        remote, cache_bytes=1, stage_dir=str(tmp_path) if staged else "", block_bytes=256
    )
    for shard in range(num_shards):
        geometry = dict(
            seed=7, global_batch_size=BATCH, seq_len=SEQ, shard_index=shard, num_shards=num_shards
        )
        ra, rb = (
            mixture.BatchReader(a, MIXTURE, **geometry),
            mixture.BatchReader(b, MIXTURE, **geometry),
        )
        for step in range(STEPS):
            for x, y in zip(_fields(ra.batch(step)), _fields(rb.batch(step))):
                np.testing.assert_array_equal(x, y)
    if staged:
        assert sorted(p.name for p in tmp_path.rglob("*.u32")) == [
            "shard-00000.tokens.u32",
            "shard-00000.tokens.u32",
            "shard-00001.tokens.u32",
            "shard-00001.tokens.u32",
            "shard-00002.tokens.u32",
        ]
    else:
        assert b._blocks.fetched > 0


def test_a_step_reads_its_blocks_at_once_and_the_next_step_ahead(corpora, monkeypatch):
    """By range, a step's blocks come in one batch of concurrent reads, and the
    next step's in the background while the step is used: once the reader has
    started, the step's own thread reads nothing."""
    local, remote = corpora
    calls = []  # (thread name, blocks) of each batch of ranged reads
    singles = []  # blocks read one at a time

    read_ranges, read_range = corpus.storage.read_ranges, corpus.storage.read_range

    def counted_ranges(ranges):
        calls.append((threading.current_thread().name, len(ranges)))
        return read_ranges(ranges)

    def counted_range(uri, start, length):
        singles.append(start)
        return read_range(uri, start, length)

    monkeypatch.setattr(corpus.storage, "read_ranges", counted_ranges)
    monkeypatch.setattr(corpus.storage, "read_range", counted_range)
    # 64 blocks of 256 bytes: more than a step reads, far less than the corpus.
    b = corpus.Corpus(remote, cache_bytes=64 * 256, block_bytes=256)
    geometry = dict(seed=7, global_batch_size=BATCH, seq_len=SEQ)
    ra = mixture.BatchReader(corpus.Corpus(local), MIXTURE, **geometry)
    rb = mixture.BatchReader(b, MIXTURE, **geometry)
    for step in range(STEPS):
        for x, y in zip(_fields(ra.batch(step)), _fields(rb.batch(step))):
            np.testing.assert_array_equal(x, y)
        rb._prefetch_pending.result()  # the next step's warm-up, finished
    mine = [n for name, n in calls if name == threading.current_thread().name]
    ahead = [n for name, n in calls if name.startswith("block-prefetch")]
    assert len(mine) == 1 and mine[0] > 1  # step 0, all its blocks at once
    assert len(ahead) >= STEPS // 2 and max(ahead) > 1
    assert singles == []
    assert b._blocks.fetched > 64  # blocks were evicted and read again


def test_a_staged_shard_that_differs_from_the_manifest_is_refused(corpora, tmp_path):
    from libs import storage

    _, remote = corpora
    c = corpus.Corpus(remote, stage_dir=str(tmp_path))
    shard = c.manifest["sources"][1]["shards"][0]
    uri = storage.join(remote, shard["tokens_file"])
    original = storage.read_bytes(uri)
    storage.write_bytes(uri, original[:-4] + b"\0\0\0\0")
    try:
        with pytest.raises(ValueError, match="sha256"):
            c.tokens("code")
    finally:
        storage.write_bytes(uri, original)


def test_a_restart_mid_stream_reads_the_same_batches(corpora):
    _, remote = corpora
    geometry = dict(seed=7, global_batch_size=BATCH, seq_len=SEQ)
    first = mixture.BatchReader(corpus.Corpus(remote), MIXTURE, **geometry)
    expected = [first.batch(step) for step in range(STEPS)]
    again = mixture.BatchReader(corpus.Corpus(remote), MIXTURE, **geometry)  # a new process's view
    for step in range(STEPS // 2, STEPS):
        for x, y in zip(_fields(again.batch(step)), _fields(expected[step])):
            np.testing.assert_array_equal(x, y)


def test_the_data_service_serves_a_gcs_corpus(corpora):
    local, remote = corpora
    server = data_client.start_local_server(
        remote, build_default_corpus=False, extra_args=["--cache_mb=1"]
    )
    try:
        reader = mixture.BatchReader(
            corpus.Corpus(local), MIXTURE, seed=7, global_batch_size=BATCH, seq_len=SEQ
        )
        with data_client.DataClient(server.address) as data:
            assert [s.name for s in data.list_sources().sources] == ["text", "code"]
            stream = data.stream(
                MIXTURE, seed=7, global_batch_size=BATCH, seq_len=SEQ, start_step=10, num_steps=30
            )
            for step, got in zip(range(10, 40), stream):
                for x, y in zip(_fields(got), _fields(reader.batch(step))):
                    np.testing.assert_array_equal(x, y)
    finally:
        server.stop()
