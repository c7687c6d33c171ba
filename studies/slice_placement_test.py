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

import json
import os
import signal
import time

import numpy as np
import pytest

from proto import trainer_pb2
from services.data.api import client as data_client
from services.data.api import testing as data_testing
from studies import backends_ray, tpu_cluster_testing
from studies.backends import PhaseFailed, PhaseJob

S = trainer_pb2.LRSchedule
STEPS = 8
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


def _spec(run_id: str, checkpoint_dir: str, data_address: str) -> trainer_pb2.RunSpec:
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


def _losses(checkpoint_dir: str, run_id: str) -> list[float]:
    by_step = {}
    with open(os.path.join(checkpoint_dir, run_id, "metrics.jsonl")) as f:
        for record in map(json.loads, f):
            by_step[int(record["step"])] = record["loss"]  # a resumed run logs again: newest wins
    assert sorted(by_step) == list(range(1, STEPS + 1))
    return [by_step[k] for k in sorted(by_step)]


def _trainer_pid(run_id: str, process_id: int) -> int:
    """The trainer process of this run's gang with this process id."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            if "services.trainer.api.main" not in argv or f"--process_id={process_id}" not in argv:
                continue
            spec = next(a for a in argv if a.startswith("--run_spec=")).removeprefix("--run_spec=")
            with open(spec) as f:
                if f'run_id: "{run_id}"' in f.read():
                    return int(entry)
        except (OSError, StopIteration):
            continue
    raise AssertionError(f"no trainer process {process_id} of {run_id}")


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
        name: PhaseJob(name, _spec(name, out, cluster)) for name in ("killed", "whole", "third")
    }
    futures = {name: backend.submit(job) for name, job in jobs.items()}
    # Kill host 1's trainer of one gang once it has committed a checkpoint.
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "checkpoints" / "2").exists():
        assert not futures["killed"].done(), futures["killed"].result()
        assert time.monotonic() < deadline, "no checkpoint committed in 300s"
        time.sleep(0.1)
    os.kill(_trainer_pid("killed", 1), signal.SIGKILL)
    killed, whole, third = (futures[n].result(timeout=900) for n in ("killed", "whole", "third"))
    backend.close()

    for r in (killed, whole, third):
        # One slice's two hosts, process id = TPU worker id.
        slice_name = r.hosts[0].split("/")[0]
        assert r.hosts == (f"{slice_name}/0", f"{slice_name}/1"), r
        assert r.final.step == STEPS and r.final.phase_end
    assert whole.attempts == third.attempts == 1
    assert killed.attempts == 2 and killed.preemptions == 1 and killed.failures == 0
    # Two slices, three gangs: the first two overlap, the third starts after one ends.
    first, second = sorted((killed, whole), key=lambda r: r.started_at)
    assert second.started_at < first.finished_at
    assert third.started_at >= min(killed.finished_at, whole.finished_at)
    reference = _losses(out, "whole")
    np.testing.assert_allclose(_losses(out, "killed"), reference, rtol=2e-4)
    np.testing.assert_allclose(_losses(out, "third"), reference, rtol=2e-4)
    deadline = time.monotonic() + 30
    while not _released(ray):
        assert time.monotonic() < deadline, ray.util.placement_group_table()
        time.sleep(0.5)


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
            backend.submit(PhaseJob("late", _spec("late", str(tmp_path), cluster))).result(
                timeout=120
            )
    finally:
        backend.close()
        for pg in held:
            ray.util.remove_placement_group(pg)
    assert tpu.get_num_tpu_slices(TOPOLOGY, "TPU-V4") == 2
    deadline = time.monotonic() + 30
    while not _released(ray):
        assert time.monotonic() < deadline, ray.util.placement_group_table()
        time.sleep(0.5)


def test_no_slice_of_the_topology_is_a_clear_error(cluster):
    policy = backends_ray.GangPolicy(tpu_topology="4x4", tpu_version="v5litepod")
    with pytest.raises(
        ValueError, match="tpu_topology: the Ray cluster has no intact v5litepod 4x4 slice"
    ):
        backends_ray.RayBackend(policy=policy)
