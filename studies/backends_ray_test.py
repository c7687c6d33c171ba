"""The Ray backend on a local Ray cluster, with real trainers and a real data service.

The cluster has 2 CPUs and two units of the slice resource (capacity 2),
plus one unit of a second resource standing for a one-slice cluster. Each
gang host takes one CPU. Checked here:

- a 2-host gang (jax.distributed over gloo, each process its own shard)
  ends with the losses of a 1-host gang;
- a gang whose host 1 trainer is SIGKILLed after a committed checkpoint is
  restarted (one preemption) and ends with the uninterrupted losses;
- a gang whose host 1 trainer stops (SIGSTOP) logs no step; the watchdog
  ends it after `stall_timeout_s` (one failure) and the restarted gang ends
  with the uninterrupted losses;
- two independent phases run at the same time with capacity 2, one after
  the other with capacity 1 (the trainers' own start and end times).
"""

import json
import os
import signal
import time
import uuid

import numpy as np
import pytest

from proto import trainer_pb2
from services.data.api import client as data_client
from services.data.api import testing as data_testing
from studies import backends_ray
from studies.backends import PhaseJob

S = trainer_pb2.LRSchedule
STEPS = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    corpus = data_testing.build_small_corpus(str(tmp_path_factory.mktemp("corpus")))
    data = data_client.start_local_server(corpus.path, build_default_corpus=False)
    ray.init(
        address="local",
        num_cpus=2,
        resources={"code_lab_slice": 2, "one_slice": 1},
        include_dashboard=False,
    )
    try:
        yield data.address
    finally:
        ray.shutdown()
        data.stop()


def _spec(run_id: str, checkpoint_dir: str, data_address: str) -> trainer_pb2.RunSpec:
    mixture = data_testing.one_stage_mixture(text=0.5, code=0.5)
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
                mixture=mixture,
                schedule=S(kind=S.COSINE, peak_lr=3e-3, warmup_steps=2),
            )
        ],
    )


def _losses(checkpoint_dir: str, run_id: str) -> list[float]:
    by_step = {}
    with open(os.path.join(checkpoint_dir, run_id, "metrics.jsonl")) as f:
        for record in map(json.loads, f):
            by_step[int(record["step"])] = record["loss"]  # a resumed run logs again: newest wins
    assert sorted(by_step) == list(range(1, STEPS + 1))
    return [by_step[k] for k in sorted(by_step)]


@pytest.fixture(scope="module")
def one_host(cluster, tmp_path_factory):
    """An uninterrupted 1-host run: the reference losses."""
    out = str(tmp_path_factory.mktemp("one"))
    backend = backends_ray.RayBackend(log=print)
    result = backend.submit(PhaseJob("one", _spec("one", out, cluster))).result(timeout=600)
    backend.close()
    assert result.attempts == 1 and result.final.step == STEPS
    return _losses(out, "one")


def test_a_two_host_gang_matches_one_host(cluster, one_host, tmp_path):
    backend = backends_ray.RayBackend(log=print)
    result = backend.submit(PhaseJob("two", _spec("two", str(tmp_path), cluster), hosts=2)).result(
        timeout=600
    )
    backend.close()
    assert result.attempts == 1 and result.preemptions == result.failures == 0
    assert result.final.step == STEPS and result.final.phase_end
    assert [r["step"] for r in result.metrics] == list(range(1, STEPS + 1))
    # The same global batches, reduced across processes in another order.
    np.testing.assert_allclose(_losses(str(tmp_path), "two"), one_host, rtol=2e-4)


def _trainer_pids(run_id: str, process_id: int) -> list[int]:
    """Trainer processes of this run's gang (their run_spec file names the run)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "services.trainer.api.main" not in argv or f"--process_id={process_id}" not in argv:
            continue
        spec_flag = next((a for a in argv if a.startswith("--run_spec=")), "")
        try:
            with open(spec_flag.removeprefix("--run_spec=")) as f:
                if f'run_id: "{run_id}"' in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def test_a_killed_gang_worker_restarts_the_gang_from_its_checkpoint(cluster, one_host, tmp_path):
    run_id = f"killed-{uuid.uuid4().hex[:6]}"
    backend = backends_ray.RayBackend(log=print)
    future = backend.submit(PhaseJob("killed", _spec(run_id, str(tmp_path), cluster), hosts=2))
    committed = tmp_path / run_id / "checkpoints" / "2"
    deadline = time.monotonic() + 300
    while not committed.exists():
        assert not future.done(), future.result()
        assert time.monotonic() < deadline, "no checkpoint committed in 300s"
        time.sleep(0.1)
    (pid,) = _trainer_pids(run_id, 1)
    os.kill(pid, signal.SIGKILL)
    result = future.result(timeout=600)
    backend.close()
    assert result.attempts == 2, result
    assert result.preemptions == 1 and result.failures == 0
    assert result.final.step == STEPS
    np.testing.assert_allclose(_losses(str(tmp_path), run_id), one_host, rtol=2e-4)


def test_a_stalled_gang_is_ended_and_restarted(cluster, one_host, tmp_path):
    # Host 1's trainer stopped (SIGSTOP): host 0 waits in a collective, no
    # step is logged, and the watchdog ends the gang after stall_timeout_s.
    run_id = f"stalled-{uuid.uuid4().hex[:6]}"
    policy = backends_ray.GangPolicy(stall_timeout_s=30, watch_interval_s=1)
    backend = backends_ray.RayBackend(policy=policy, log=print)
    future = backend.submit(PhaseJob("stalled", _spec(run_id, str(tmp_path), cluster), hosts=2))
    committed = tmp_path / run_id / "checkpoints" / "2"
    deadline = time.monotonic() + 300
    while not committed.exists():
        assert not future.done(), future.result()
        assert time.monotonic() < deadline, "no checkpoint committed in 300s"
        time.sleep(0.1)
    (pid,) = _trainer_pids(run_id, 1)
    os.kill(pid, signal.SIGSTOP)
    result = future.result(timeout=600)
    backend.close()
    assert result.attempts == 2 and result.failures == 1 and result.preemptions == 0, result
    assert result.final.step == STEPS
    np.testing.assert_allclose(_losses(str(tmp_path), run_id), one_host, rtol=2e-4)


@pytest.mark.parametrize("resource,overlap", [("code_lab_slice", True), ("one_slice", False)])
def test_capacity_is_the_slice_resource(cluster, tmp_path, resource, overlap):
    policy = backends_ray.GangPolicy(slice_resource=resource)
    backend = backends_ray.RayBackend(policy=policy, log=print)
    assert backend.capacity == (2 if overlap else 1)
    futures = [
        backend.submit(PhaseJob(name, _spec(name, str(tmp_path), cluster))) for name in ("a", "b")
    ]
    a, b = (f.result(timeout=600) for f in futures)
    backend.close()
    if overlap:
        assert a.started_at < b.finished_at and b.started_at < a.finished_at, (a, b)
    else:
        first, second = sorted((a, b), key=lambda r: r.started_at)
        assert first.finished_at <= second.started_at, (a, b)


def test_no_slice_resource_is_a_clear_error(cluster):
    with pytest.raises(ValueError, match="slice_resource: the Ray cluster offers no 'tpu-v5e'"):
        backends_ray.RayBackend(policy=backends_ray.GangPolicy(slice_resource="tpu-v5e"))
