"""What the Ray backend's tests share: a tiny run's spec, its losses, its
trainer processes, and waiting for a committed checkpoint."""

from __future__ import annotations

import json
import os
import time

from proto import trainer_pb2
from services.data.api import testing as data_testing

STEPS = 8


def tiny_spec(run_id: str, checkpoint_dir: str, data_address: str) -> trainer_pb2.RunSpec:
    """STEPS steps of `tiny` on 4 x 64 tokens, a checkpoint every 2 steps."""
    S = trainer_pb2.LRSchedule
    return trainer_pb2.RunSpec(
        run_id=run_id,
        preset="tiny",
        data_address=data_address,
        global_batch_size=4,
        seq_len=64,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_steps=2,
        phases=[
            trainer_pb2.Phase(
                name="pretrain",
                from_scratch=True,
                token_budget=STEPS * 4 * 64,
                mixture=data_testing.one_stage_mixture(text=0.5, code=0.5),
                schedule=S(kind=S.COSINE, peak_lr=3e-3, warmup_steps=2),
            )
        ],
    )


def losses(checkpoint_dir: str, run_id: str) -> list[float]:
    """The run's loss at each step 1..STEPS (a resumed run logs again: newest wins)."""
    by_step = {}
    with open(os.path.join(checkpoint_dir, run_id, "metrics.jsonl")) as f:
        for record in map(json.loads, f):
            by_step[int(record["step"])] = record["loss"]
    assert sorted(by_step) == list(range(1, STEPS + 1))
    return [by_step[k] for k in sorted(by_step)]


def trainer_pids(run_id: str, process_id: int) -> list[int]:
    """Trainer processes of this run's gang with this process id (their
    run_spec file names the run)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            if f"--process_id={process_id}" not in argv or not any(
                a.startswith("services.trainer.api.main") for a in argv
            ):
                continue
            spec = next(a for a in argv if a.startswith("--run_spec=")).removeprefix("--run_spec=")
            with open(spec) as f:
                if f'run_id: "{run_id}"' in f.read():
                    pids.append(int(entry))
        except (OSError, StopIteration):
            continue
    return pids


def wait_for_checkpoint(checkpoint_dir: str, run_id: str, step: int, future, timeout: float = 300):
    """Returns once the run has committed `step`; fails if its phase ended first."""
    committed = os.path.join(checkpoint_dir, run_id, "checkpoints", str(step))
    deadline = time.monotonic() + timeout
    while not os.path.exists(committed):
        assert not future.done(), future.result()
        assert time.monotonic() < deadline, f"no checkpoint {step} committed in {timeout:.0f}s"
        time.sleep(0.1)
