"""A gang host's trainer process, without Ray.

A TPU policy's hosts run the trainer's TPU entry; spawned here the way a TPU
gang spawns it (the runner's import path, no runfiles variables), it finds
libtpu through that path and, on this CPU host, exits with an error naming
--require_platform instead of training on the CPU.
"""

import os

from google.protobuf import text_format

from proto import trainer_pb2
from studies import backends_ray

TPU_POLICY = dict(tpu_topology="4x4", tpu_version="v5litepod")


def test_tpu_policies_run_the_tpu_entry_and_others_the_trainer():
    assert backends_ray.GangPolicy().trainer() == backends_ray.CPU_TRAINER
    assert backends_ray.GangPolicy(**TPU_POLICY).trainer() == backends_ray.TPU_TRAINER
    cpu_hosts = backends_ray.GangPolicy(**TPU_POLICY, trainer_module=backends_ray.CPU_TRAINER)
    assert cpu_hosts.trainer() == backends_ray.CPU_TRAINER


def test_a_tpu_gang_host_on_a_cpu_host_refuses_naming_the_flag(tmp_path, monkeypatch):
    # A TPU VM's Ray worker knows nothing of the runner's runfiles but its import path.
    for name in ("RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "TEST_SRCDIR", "TPU_LIBRARY_PATH"):
        monkeypatch.delenv(name, raising=False)
    spec = trainer_pb2.RunSpec(run_id="t", preset="tiny", data_address="127.0.0.1:1")
    log = tmp_path / "host-0.log"
    code, tail = backends_ray.TrainerHost().train(
        text_format.MessageToString(spec),
        "",
        1,
        0,
        [],
        backends_ray.default_env(),
        str(log),
        module=backends_ray.TPU_TRAINER,
    )
    assert code == 1, tail
    error = tail.strip().splitlines()[-1]
    assert error.startswith("error: --require_platform=tpu: JAX's devices here are "), error
    assert os.path.join("libtpu_wheel", "site", "libtpu", "libtpu.so") in error
