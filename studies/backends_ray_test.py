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

import os
import signal
import uuid

import numpy as np
import pytest

from services.data.api import client as data_client
from services.data.api import testing as data_testing
from studies import backends_ray, gang_testing
from studies.backends import PhaseJob


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


@pytest.fixture(scope="module")
def one_host(cluster, tmp_path_factory):
    """An uninterrupted 1-host run: the reference losses."""
    out = str(tmp_path_factory.mktemp("one"))
    backend = backends_ray.RayBackend(log=print)
    result = backend.submit(PhaseJob("one", gang_testing.tiny_spec("one", out, cluster))).result(
        timeout=600
    )
    backend.close()
    assert result.attempts == 1 and result.final.step == gang_testing.STEPS
    return gang_testing.losses(out, "one")


def test_a_two_host_gang_matches_one_host(cluster, one_host, tmp_path):
    backend = backends_ray.RayBackend(log=print)
    result = backend.submit(
        PhaseJob("two", gang_testing.tiny_spec("two", str(tmp_path), cluster), hosts=2)
    ).result(timeout=600)
    backend.close()
    assert result.attempts == 1 and result.preemptions == result.failures == 0
    assert result.final.step == gang_testing.STEPS and result.final.phase_end
    assert [r["step"] for r in result.metrics] == list(range(1, gang_testing.STEPS + 1))
    # The same global batches, reduced across processes in another order.
    np.testing.assert_allclose(gang_testing.losses(str(tmp_path), "two"), one_host, rtol=2e-4)


def test_a_killed_gang_worker_restarts_the_gang_from_its_checkpoint(cluster, one_host, tmp_path):
    run_id = f"killed-{uuid.uuid4().hex[:6]}"
    backend = backends_ray.RayBackend(log=print)
    future = backend.submit(
        PhaseJob("killed", gang_testing.tiny_spec(run_id, str(tmp_path), cluster), hosts=2)
    )
    gang_testing.wait_for_checkpoint(str(tmp_path), run_id, 2, future)
    (pid,) = gang_testing.trainer_pids(run_id, 1)
    os.kill(pid, signal.SIGKILL)
    result = future.result(timeout=600)
    backend.close()
    assert result.attempts == 2, result
    assert result.preemptions == 1 and result.failures == 0
    assert result.final.step == gang_testing.STEPS
    np.testing.assert_allclose(gang_testing.losses(str(tmp_path), run_id), one_host, rtol=2e-4)


def test_a_stalled_gang_is_ended_and_restarted(cluster, one_host, tmp_path):
    # Host 1's trainer stopped (SIGSTOP): host 0 waits in a collective, no
    # step is logged, and the watchdog ends the gang after stall_timeout_s.
    run_id = f"stalled-{uuid.uuid4().hex[:6]}"
    policy = backends_ray.GangPolicy(stall_timeout_s=30, watch_interval_s=1)
    backend = backends_ray.RayBackend(policy=policy, log=print)
    future = backend.submit(
        PhaseJob("stalled", gang_testing.tiny_spec(run_id, str(tmp_path), cluster), hosts=2)
    )
    gang_testing.wait_for_checkpoint(str(tmp_path), run_id, 2, future)
    (pid,) = gang_testing.trainer_pids(run_id, 1)
    os.kill(pid, signal.SIGSTOP)
    result = future.result(timeout=600)
    backend.close()
    assert result.attempts == 2 and result.failures == 1 and result.preemptions == 0, result
    assert result.final.step == gang_testing.STEPS
    np.testing.assert_allclose(gang_testing.losses(str(tmp_path), run_id), one_host, rtol=2e-4)


@pytest.mark.parametrize("resource,overlap", [("code_lab_slice", True), ("one_slice", False)])
def test_capacity_is_the_slice_resource(cluster, tmp_path, resource, overlap):
    policy = backends_ray.GangPolicy(slice_resource=resource)
    backend = backends_ray.RayBackend(policy=policy, log=print)
    assert backend.capacity == (2 if overlap else 1)
    futures = [
        backend.submit(PhaseJob(name, gang_testing.tiny_spec(name, str(tmp_path), cluster)))
        for name in ("a", "b")
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
