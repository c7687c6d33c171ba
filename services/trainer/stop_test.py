"""A stop every process agrees on, and checkpoints by time.

Two trainer processes (jax.distributed over gloo); the second is sent SIGTERM
while the first already waits in the next step's collectives. Both must save
the same step, end STOPPED with the stop exit status, and a restart of both
must resume there and give the losses of an uninterrupted run. Run as a
script, this file is one trainer process:
`stop_test.py OUT COORD N I [PAUSE_STEP MARKER]`.
"""

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
from proto import trainer_pb2
from services.trainer import spec as spec_lib
from services.trainer.runs import STOPPED_EXIT_STATUS
from services.trainer.train_test import (
    LONG_COOLDOWN,
    VOCAB,
    make_spec,
    synthetic_batches,
    train,
)

# LONG_COOLDOWN: 6 + 5 steps, checkpoints every 2 steps. Process 1 holds the batch of
# step 5 until its SIGTERM, so step 5 (off the cadence) is where both must stop.
PAUSE_BEFORE_STEP = 5


def _losses(run_dir) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {int(r["step"]): r["loss"] for r in map(json.loads, f)}


def _checkpoint_steps(events):
    return [e.checkpoint.step for e in events if e.WhichOneof("event") == "checkpoint"]


def _process(out: str, shard: int, num_shards: int, pause_step: int | None, marker: str) -> int:
    from services.trainer.events import EventLog
    from services.trainer.train import Trainer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def batches(phase_index, phase, start_step):
        source = synthetic_batches(
            phase_index, phase, start_step, shard=shard, num_shards=num_shards
        )
        for k, batch in enumerate(source, start_step):
            if pause_step is not None and phase_index == 0 and k + 1 == pause_step:
                with open(marker, "w"):
                    pass
                # The other process is in step k+1's collectives by now, or soon.
                assert stop.wait(120), "no SIGTERM came"
            yield batch

    spec = make_spec(out, phases=LONG_COOLDOWN)
    os.makedirs(out, exist_ok=True)
    trainer = Trainer(
        spec,
        batches=batches,
        vocab_size=VOCAB,
        tokenizer_json="{}",
        events=EventLog(spec.run_id),
        stop=stop,
        console=False,
        peak_flops=1e11,
    )
    state = trainer.run()
    # What this process saw committed: every process must see the same last step.
    with open(os.path.join(out, f"process{shard}.json"), "w") as f:
        json.dump(
            {"state": trainer_pb2.RunState.Name(state), "latest": trainer.writer.latest_step()}, f
        )
    if state == trainer_pb2.STOPPED:
        return STOPPED_EXIT_STATUS
    return 0 if state == trainer_pb2.SUCCEEDED else 1


def _start_pair(out, extra=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    me = [sys.executable, os.path.abspath(__file__), str(out), f"127.0.0.1:{port}", "2"]
    return [
        subprocess.Popen(me + [str(i)] + (list(extra) if i == 1 else []), env=env) for i in range(2)
    ]


def _reports(out):
    reports = []
    for i in range(2):
        with open(os.path.join(out, f"process{i}.json")) as f:
            reports.append(json.load(f))
    return reports


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_resumes(tmp_path):
    reference = make_spec(tmp_path / "one", phases=LONG_COOLDOWN)
    state, _ = train(reference)
    assert state == trainer_pb2.SUCCEEDED
    expected = _losses(os.path.join(reference.checkpoint_dir, reference.run_id))

    out = tmp_path / "two"
    marker = tmp_path / "paused"
    workers = _start_pair(out, [str(PAUSE_BEFORE_STEP), str(marker)])
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, "process 1 never reached the pause"
            assert all(w.poll() is None for w in workers), [w.returncode for w in workers]
            time.sleep(0.1)
        workers[1].send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=300) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert codes == [STOPPED_EXIT_STATUS, STOPPED_EXIT_STATUS]
    # Step 5 is off the 2-step cadence: saved only because of the agreed stop.
    assert _reports(out) == [{"state": "STOPPED", "latest": PAUSE_BEFORE_STEP}] * 2
    stopped_at = _losses(str(out / "r"))
    assert sorted(stopped_at) == list(range(1, PAUSE_BEFORE_STEP + 1))

    # Both restarted: they resume from step 5 and finish.
    assert [w.wait(timeout=300) for w in _start_pair(out)] == [0, 0]
    assert _reports(out) == [{"state": "SUCCEEDED", "latest": 11}] * 2
    got = _losses(str(out / "r"))
    assert sorted(got) == sorted(expected) == list(range(1, 12))
    # Sums are reduced across processes in another order: equal to float32 round-off.
    np.testing.assert_allclose(
        [got[k] for k in sorted(got)], [expected[k] for k in sorted(expected)], rtol=2e-4
    )


def test_checkpoints_by_time_as_well_as_by_steps(tmp_path):
    # A cadence in steps longer than the run: only phase ends are saved...
    by_steps = make_spec(tmp_path / "steps", phases=LONG_COOLDOWN, checkpoint_every_seconds=3600)
    by_steps.checkpoint_every_steps = 100
    state, events = train(by_steps)
    assert state == trainer_pb2.SUCCEEDED
    assert _checkpoint_steps(events) == [6, 11]
    # ...unless a time cadence has passed: here at every step, never at a phase's start.
    by_time = make_spec(tmp_path / "time", phases=LONG_COOLDOWN, checkpoint_every_seconds=1e-6)
    by_time.checkpoint_every_steps = 100
    state, events = train(by_time)
    assert state == trainer_pb2.SUCCEEDED
    assert _checkpoint_steps(events) == list(range(1, 12))
    # The time-based saves are ordinary checkpoints: the same losses as without them.
    a = _losses(os.path.join(by_steps.checkpoint_dir, "r"))
    b = _losses(os.path.join(by_time.checkpoint_dir, "r"))
    assert a == b


@pytest.mark.parametrize("seconds", [-1.0, float("nan")])
def test_bad_checkpoint_every_seconds_names_the_field(tmp_path, seconds):
    spec = make_spec(tmp_path, checkpoint_every_seconds=seconds)
    with pytest.raises(errors.InvalidArgument) as err:
        spec_lib.validate(spec)
    assert err.value.field == "checkpoint_every_seconds"


if __name__ == "__main__":
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        sys.argv[2], num_processes=int(sys.argv[3]), process_id=int(sys.argv[4])
    )
    pause = (int(sys.argv[5]), sys.argv[6]) if len(sys.argv) == 7 else (None, "")
    sys.exit(_process(sys.argv[1], int(sys.argv[4]), int(sys.argv[3]), *pause))
