"""The training loop on tiny runs: phases, lineage, and resume after SIGKILL.

Batches come from a deterministic generator here (the data service has its
own tests; tests/ runs the two together). Run as a script, this file is the
worker that the resume test kills.
"""

import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from libs import errors
from libs.checkpoint import checkpoint
from proto import data_pb2, trainer_pb2
from services.trainer import spec as spec_lib
from services.trainer.events import EventLog
from services.data.api import client as data_client
from services.data.api.client import Batch
from services.trainer.step import BATCH_FIELDS
from services.trainer.train import Trainer

VOCAB = 512
S = trainer_pb2.LRSchedule


def synthetic_batches(
    phase_index, phase, start_step, *, batch=4, seq_len=32, shard=0, num_shards=1
):
    """Batch k of a phase is a pure function of (phase_index, k), like the data service's;
    shard i of n holds rows [i*batch/n, (i+1)*batch/n) of it."""
    rows = slice(shard * batch // num_shards, (shard + 1) * batch // num_shards)
    for full in _global_batches(phase_index, start_step, batch, seq_len):
        yield dataclasses.replace(
            full, shard_index=shard, **{name: getattr(full, name)[rows] for name in BATCH_FIELDS}
        )


def _global_batches(phase_index, start_step, batch, seq_len):
    step = start_step
    while True:
        rng = np.random.default_rng([phase_index, step])
        # Learnable structure: each row counts up from a random start.
        start = rng.integers(0, VOCAB, size=(batch, 1))
        seq = (start + np.arange(seq_len + 1)) % VOCAB
        segment = np.where(np.arange(seq_len) < seq_len // 2, 1, 2)[None].repeat(batch, 0)
        positions = np.where(segment == 1, np.arange(seq_len), np.arange(seq_len) - seq_len // 2)
        mask = np.ones((batch, seq_len), np.uint8)
        mask[:, seq_len // 2 - 1] = 0  # no target across the document boundary
        yield Batch(
            step=step,
            shard_index=0,
            tokens_before=step * batch * seq_len,
            stage=0,
            epochs=(0.0, 0.0),
            tokens=seq[:, :-1].astype(np.int32),
            targets=seq[:, 1:].astype(np.int32),
            segment_ids=segment.astype(np.int32),
            positions=positions.astype(np.int32),
            loss_mask=mask,
            source_ids=(np.arange(batch)[:, None] % 2 * np.ones((1, seq_len), np.int64)).astype(
                np.uint8
            ),
            source_names=("text", "code"),
        )
        step += 1


def _mixture():
    return data_pb2.MixtureSpec(
        stages=[data_pb2.MixtureStage(weights=[data_pb2.SourceWeight(source="text", weight=1)])]
    )


# Init 6 steps, then a cooldown of 5 (steps 7-11, checkpoints at 8, 10, 11), so that
# a run can be killed in the middle of an anneal that continues the previous phase.
LONG_COOLDOWN = [
    trainer_pb2.Phase(
        name="init",
        from_scratch=True,
        token_budget=4 * 32 * 6,
        mixture=data_pb2.MixtureSpec(
            stages=[data_pb2.MixtureStage(weights=[data_pb2.SourceWeight(source="text", weight=1)])]
        ),
        schedule=S(kind=S.COSINE, peak_lr=1e-2, warmup_steps=2),
    ),
    trainer_pb2.Phase(
        name="cooldown",
        continue_previous=True,
        token_budget=4 * 32 * 5,
        mixture=data_pb2.MixtureSpec(
            stages=[data_pb2.MixtureStage(weights=[data_pb2.SourceWeight(source="text", weight=1)])]
        ),
        schedule=S(kind=S.LINEAR_ANNEAL),
    ),
]


def make_spec(checkpoint_dir, run_id="r", phases=None, **kw):
    phases = phases or [
        trainer_pb2.Phase(
            name="init",
            from_scratch=True,
            token_budget=4 * 32 * 6,
            mixture=_mixture(),
            schedule=S(kind=S.COSINE, peak_lr=1e-2, warmup_steps=2),
        ),
        trainer_pb2.Phase(
            name="cooldown",
            continue_previous=True,
            token_budget=4 * 32 * 3,
            mixture=_mixture(),
            schedule=S(kind=S.LINEAR_ANNEAL),
        ),
    ]
    spec = trainer_pb2.RunSpec(
        run_id=run_id,
        preset="tiny",
        phases=phases,
        global_batch_size=4,
        seq_len=32,
        checkpoint_dir=str(checkpoint_dir),
        checkpoint_every_steps=2,
        **kw,
    )
    return spec_lib.with_defaults(spec)


def train(spec, stop=None, shard=0, num_shards=1, batches=None):
    """Runs `spec` to its end (or `stop`); its events, replayed from earlier runs too."""
    os.makedirs(spec.checkpoint_dir, exist_ok=True)
    events = EventLog(spec.run_id, os.path.join(spec.checkpoint_dir, spec.run_id + ".events"))
    batches = batches or functools.partial(synthetic_batches, shard=shard, num_shards=num_shards)
    trainer = Trainer(
        spec,
        batches=batches,
        vocab_size=VOCAB,
        tokenizer_json="{}",
        events=events,
        stop=stop,
        console=False,
        peak_flops=1e11,
    )
    state = trainer.run()
    events.close()
    return state, events.events()


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_phases_lineage_and_loss_goes_down(tmp_path):
    spec = make_spec(tmp_path)
    state, events = train(spec)
    assert state == trainer_pb2.SUCCEEDED
    ckpts = [e.checkpoint for e in events if e.WhichOneof("event") == "checkpoint"]
    assert [c.step for c in ckpts] == [2, 4, 6, 8, 9]
    assert [c.phase_end for c in ckpts] == [False, False, True, False, True]
    assert ckpts[0].lineage.phase == "init" and ckpts[-1].lineage.phase == "cooldown"
    # The cooldown continues from the init phase's last checkpoint.
    assert ckpts[-1].lineage.parent_uri == ckpts[2].uri
    assert ckpts[-1].lineage.tokens_seen == 9 * 4 * 32
    assert dict(ckpts[-1].lineage.tokens_per_source) == {"text": 9 * 2 * 32, "code": 9 * 2 * 32}
    # One resumable record on disk; the lineage the event carried is derived from it.
    meta = checkpoint.read_meta(ckpts[-1].uri)
    assert not {"lineage", "step", "preset"} & set(meta)
    assert trainer_pb2.Lineage(**checkpoint.lineage(meta)) == ckpts[-1].lineage
    metrics = [e.metrics for e in events if e.WhichOneof("event") == "metrics"]
    assert metrics[-1].learning_rate == pytest.approx(1e-6)
    assert metrics[-1].loss < metrics[0].loss
    assert set(metrics[0].source_loss) == {"text", "code"}
    # A new run initialised from the cooldown checkpoint's weights.
    child = make_spec(
        tmp_path,
        run_id="child",
        phases=[
            trainer_pb2.Phase(
                name="continue",
                init_checkpoint=ckpts[-1].uri,
                token_budget=4 * 32 * 2,
                mixture=_mixture(),
                schedule=S(kind=S.CONSTANT, peak_lr=1e-3),
            )
        ],
    )
    spec_lib.validate(child)
    state, events = train(child)
    child_ckpts = [e.checkpoint for e in events if e.WhichOneof("event") == "checkpoint"]
    assert child_ckpts[-1].lineage.parent_uri == ckpts[-1].uri
    child_metrics = [e.metrics for e in events if e.WhichOneof("event") == "metrics"]
    assert child_metrics[0].loss < metrics[0].loss  # starts from trained weights


def test_bad_specs_name_the_field(tmp_path):
    good = make_spec(tmp_path)
    cases = {
        "phases[0].token_budget": lambda s: setattr(s.phases[0], "token_budget", -5),
        "preset": lambda s: setattr(s, "preset", "huge"),
        "phases[1].init_checkpoint": lambda s: setattr(
            s.phases[1], "init_checkpoint", str(tmp_path / "none" / "3")
        ),
        "phases[0].continue_previous": lambda s: setattr(s.phases[0], "continue_previous", True),
        "phases[0].schedule.kind": lambda s: s.phases[0].schedule.Clear(),
        "global_batch_size": lambda s: setattr(s, "global_batch_size", -1),
        # The data service's bound and the model's training dtypes, not copies of them.
        "seq_len": lambda s: setattr(s, "seq_len", data_client.MAX_SEQ_LEN + 1),
        "compute_dtype": lambda s: setattr(s, "compute_dtype", "float16"),
    }
    for field, mutate in cases.items():
        spec = trainer_pb2.RunSpec()
        spec.CopyFrom(good)
        mutate(spec)
        with pytest.raises(errors.FieldError) as err:
            spec_lib.validate(spec)
        assert err.value.field == field, (field, str(err.value))
    # A missing parent is NOT_FOUND:
    spec = trainer_pb2.RunSpec()
    spec.CopyFrom(good)
    spec.phases[1].init_checkpoint = str(tmp_path / "none" / "3")
    with pytest.raises(errors.NotFound):
        spec_lib.validate(spec)


def test_init_checkpoint_with_optimizer_carries_on_the_parents_run(tmp_path):
    parent = make_spec(tmp_path)
    _, events = train(parent)
    ckpts = [e.checkpoint for e in events if e.WhichOneof("event") == "checkpoint"]
    init_end = next(c for c in ckpts if c.phase_end and c.lineage.phase == "init")
    parent_lrs = [e.metrics.learning_rate for e in events if e.WhichOneof("event") == "metrics"]
    child = make_spec(
        tmp_path,
        run_id="cooldown-of-init",
        phases=[
            trainer_pb2.Phase(
                name="cooldown",
                init_checkpoint=init_end.uri,
                with_optimizer=True,
                token_budget=4 * 32 * 3,
                mixture=_mixture(),
                schedule=S(kind=S.LINEAR_ANNEAL),
            )
        ],
    )
    spec_lib.validate(child)
    _, events = train(child)
    metrics = [e.metrics for e in events if e.WhichOneof("event") == "metrics"]
    # The anneal starts where the parent's schedule ended, as continue_previous does.
    assert metrics[0].learning_rate == pytest.approx(parent_lrs[5])
    assert metrics[-1].learning_rate == pytest.approx(1e-6)
    lineage = [e.checkpoint for e in events if e.WhichOneof("event") == "checkpoint"][-1].lineage
    assert lineage.parent_uri == init_end.uri
    # Without init_checkpoint the flag means nothing: rejected by name.
    bad = make_spec(tmp_path, run_id="bad")
    bad.phases[0].with_optimizer = True
    with pytest.raises(errors.FieldError) as err:
        spec_lib.validate(bad)
    assert err.value.field == "phases[0].with_optimizer"


@pytest.mark.parametrize("kill_after_checkpoint", [4, 8])  # in the init phase; in the cooldown
def test_resume_after_sigkill_gives_identical_losses(tmp_path, kill_after_checkpoint):
    reference = make_spec(tmp_path / "ref", phases=LONG_COOLDOWN)
    train(reference)
    expected = _losses(os.path.join(reference.checkpoint_dir, reference.run_id))

    killed_dir = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    worker = [sys.executable, os.path.abspath(__file__), str(killed_dir), "long-cooldown"]
    proc = subprocess.Popen(worker, env=env)
    run_dir = killed_dir / "r"
    deadline = time.monotonic() + 240
    # Kill once the checkpoint has committed and training has gone on.
    while time.monotonic() < deadline:
        if (run_dir / "checkpoints" / str(kill_after_checkpoint)).exists() and len(
            _safe_losses(run_dir)
        ) > kill_after_checkpoint:
            break
        assert proc.poll() is None, "worker ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert subprocess.run(worker, env=env).returncode == 0
    # Steps replayed after the restart overwrite nothing: compare the last value per step.
    assert _losses(run_dir) == expected


def _safe_losses(run_dir):
    try:
        return _losses(run_dir)
    except (OSError, json.JSONDecodeError):
        return {}


def _metrics(events):
    return [e.metrics for e in events if e.WhichOneof("event") == "metrics"]


def test_microbatched_run_equals_whole_batches_and_resumes_in_place(tmp_path):
    """Gradient accumulation changes neither the losses, the per-source losses, nor the
    data position; a microbatched run stopped mid-phase resumes at the same step."""
    _, whole = train(make_spec(tmp_path / "whole"))
    stop = threading.Event()
    spec = make_spec(tmp_path / "micro", microbatches=2)
    # Stopped right after step 4, a checkpoint step: the stop must not save it twice.
    steps_before_stop = 4

    def stopping_batches(phase_index, phase, start_step):
        for i, batch in enumerate(synthetic_batches(phase_index, phase, start_step)):
            if phase_index == 0 and start_step + i == steps_before_stop - 1:
                stop.set()
            yield batch

    state, _ = train(spec, stop=stop, batches=stopping_batches)
    assert state == trainer_pb2.STOPPED
    state, events = train(spec)  # the stopped run's events, then the resumed run's
    assert state == trainer_pb2.SUCCEEDED
    steps = [m.step for m in _metrics(events)]
    assert steps == list(range(1, 10))  # resumed at step 5: no step ran twice or was skipped
    by_step = {m.step: m for m in _metrics(events)}
    for m in _metrics(whole):
        got = by_step[m.step]
        assert got.loss == pytest.approx(m.loss, rel=1e-5), m.step
        assert dict(got.source_loss) == pytest.approx(dict(m.source_loss), rel=1e-5)
        assert got.tokens_seen == m.tokens_seen
    last = [e.checkpoint for e in events if e.WhichOneof("event") == "checkpoint"][-1]
    assert dict(last.lineage.tokens_per_source) == {"text": 9 * 2 * 32, "code": 9 * 2 * 32}


def test_two_processes_with_cpu_collectives_match_one(tmp_path):
    """jax.distributed over gloo: 2 processes, each feeding its own half of every batch."""
    reference = make_spec(tmp_path / "one")
    train(reference)
    expected = _losses(os.path.join(reference.checkpoint_dir, reference.run_id))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                str(tmp_path / "two"),
                f"127.0.0.1:{port}",
                "2",
                str(i),
            ],
            env=env,
        )
        for i in range(2)
    ]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]
    got = _losses(str(tmp_path / "two" / "r"))
    assert sorted(got) == sorted(expected)
    # Sums are reduced across processes in another order: equal to float32 round-off.
    np.testing.assert_allclose(
        [got[k] for k in sorted(got)], [expected[k] for k in sorted(expected)], rtol=2e-4
    )


if __name__ == "__main__":
    directory = sys.argv[1]
    shard, num_shards = 0, 1
    if len(sys.argv) == 5:  # coordinator address, number of processes, this process's index
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            sys.argv[2], num_processes=int(sys.argv[3]), process_id=int(sys.argv[4])
        )
        shard, num_shards = int(sys.argv[4]), int(sys.argv[3])
    phases = LONG_COOLDOWN if sys.argv[-1] == "long-cooldown" else None
    state, _ = train(make_spec(directory, phases=phases), shard=shard, num_shards=num_shards)
    sys.exit(0 if state == trainer_pb2.SUCCEEDED else 1)
