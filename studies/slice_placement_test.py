"""Gangs on TPU slices, placed by Ray on a simulated TPU cluster.

The cluster (studies/tpu_cluster_testing.py) has two v4-16 slices of two
hosts each, declared as TPU VMs declare themselves to Ray; the trainers are
real CPU processes with a real data service. Checked here:

- two gangs train at once, each on one slice's two hosts, process i on the
  slice's TPU worker i; a third gang waits for a slice to come free;
- a gang whose host 1 trainer is killed after a committed checkpoint
  restarts on a slice and ends with the losses of an uninterrupted gang;
- every head reservation and placement group is released at the end;
- a gang that cannot be placed in time fails as "not placed", not as a
  preemption.
"""

import os
import signal
import time

import numpy as np
import pytest

from services.data.api import client as data_client
from services.data.api import testing as data_testing
from studies import backends_ray, gang_testing, tpu_cluster_testing
from studies.backends import PhaseFailed, PhaseJob

TOPOLOGY, VERSION = "2x2x2", "v4"  # v4-16: two hosts of four chips
HEAD = "TPU-v4-16-head"
# The simulated slices' hosts have CPUs only: their gangs run the CPU trainer.
POLICY = backends_ray.GangPolicy(
    tpu_topology=TOPOLOGY,
    tpu_version=VERSION,
    trainer_module=backends_ray.CPU_TRAINER,
    watch_interval_s=1,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    corpus = data_testing.build_small_corpus(str(tmp_path_factory.mktemp("corpus")))
    data = data_client.start_local_server(corpus.path, build_default_corpus=False)
    with tpu_cluster_testing.tpu_slices(
        ["slice-a", "slice-b"], topology=TOPOLOGY, version=VERSION
    ) as c:
        ray.init(address=c.address)
        try:
            yield data.address
        finally:
            ray.shutdown()
            data.stop()


def _wait_released(ray) -> None:
    deadline = time.monotonic() + 30
    while not _released(ray):
        assert time.monotonic() < deadline, ray.util.placement_group_table()
        time.sleep(0.5)


def _released(ray) -> bool:
    live = [
        pg
        for pg in ray.util.placement_group_table().values()
        if pg["state"] not in ("REMOVED", "RESCHEDULING")
    ]
    return not live and ray.available_resources().get(HEAD) == 2


def test_gangs_take_whole_slices_and_restart_from_their_checkpoint(cluster, tmp_path):
    import ray

    backend = backends_ray.RayBackend(policy=POLICY, log=print)
    assert backend.capacity == 2
    out = str(tmp_path)
    jobs = {
        name: PhaseJob(name, gang_testing.tiny_spec(name, out, cluster))
        for name in ("killed", "whole", "third")
    }
    futures = {name: backend.submit(job) for name, job in jobs.items()}
    # Kill host 1's trainer of one gang once it has committed a checkpoint.
    gang_testing.wait_for_checkpoint(out, "killed", 2, futures["killed"])
    (pid,) = gang_testing.trainer_pids("killed", 1)
    os.kill(pid, signal.SIGKILL)
    killed, whole, third = (futures[n].result(timeout=900) for n in ("killed", "whole", "third"))
    backend.close()

    for r in (killed, whole, third):
        # One slice's two hosts, process id = TPU worker id.
        slice_name = r.hosts[0].split("/")[0]
        assert r.hosts == (f"{slice_name}/0", f"{slice_name}/1"), r
        assert r.final.step == gang_testing.STEPS and r.final.phase_end
    assert whole.attempts == third.attempts == 1
    assert killed.attempts == 2 and killed.preemptions == 1 and killed.failures == 0
    # Two slices, three gangs: the first two overlap, the third starts after one ends.
    first, second = sorted((killed, whole), key=lambda r: r.started_at)
    assert second.started_at < first.finished_at
    assert third.started_at >= min(killed.finished_at, whole.finished_at)
    reference = gang_testing.losses(out, "whole")
    np.testing.assert_allclose(gang_testing.losses(out, "killed"), reference, rtol=2e-4)
    np.testing.assert_allclose(gang_testing.losses(out, "third"), reference, rtol=2e-4)
    _wait_released(ray)


def test_a_gang_not_placed_in_time_is_a_failure_not_a_preemption(cluster, tmp_path):
    import ray
    from ray.util import tpu

    # Another user holds both slices' heads.
    held = [ray.util.placement_group([{HEAD: 1}]) for _ in range(2)]
    ray.get([pg.ready() for pg in held], timeout=60)
    policy = backends_ray.GangPolicy(
        tpu_topology=TOPOLOGY, tpu_version=VERSION, placement_timeout_s=3, max_failures=0
    )
    backend = backends_ray.RayBackend(policy=policy, log=print)
    try:
        with pytest.raises(
            PhaseFailed,
            match="0 preemptions and 1 failures.*gang not placed: no v4 2x2x2 slice's head reserved in 3s",
        ):
            backend.submit(
                PhaseJob("late", gang_testing.tiny_spec("late", str(tmp_path), cluster))
            ).result(timeout=120)
    finally:
        backend.close()
        for pg in held:
            ray.util.remove_placement_group(pg)
    assert tpu.get_num_tpu_slices(TOPOLOGY, "TPU-V4") == 2
    _wait_released(ray)


def test_no_slice_of_the_topology_is_a_clear_error(cluster):
    policy = backends_ray.GangPolicy(tpu_topology="4x4", tpu_version="v5litepod")
    with pytest.raises(
        ValueError, match="tpu_topology: the Ray cluster has no intact v5litepod 4x4 slice"
    ):
        backends_ray.RayBackend(policy=policy)
