"""The trainer's TPU entry on this CPU host, and the CPU trainer kept free of libtpu.

The TPU entry (main_tpu.py) finds libtpu in its runfiles and, with no TPU here, stops
with an error naming --require_platform; the CPU entry's environment gives JAX no
libtpu at all.
"""

import collections
import os
import subprocess
import sys

from libs.serving import process
from services.trainer.api import main

LIBTPU = os.path.join("libtpu_wheel", "site", "libtpu", "libtpu.so")
# A spec that needs no data service before it fails.
NO_DATA = ["--data_address=127.0.0.1:1"]


def _run(module, args, env=None):
    env = process.child_env(env)
    env.pop("TPU_LIBRARY_PATH", None)  # libtpu comes from the runfiles or not at all
    return subprocess.run(
        process.module_command(module) + args, capture_output=True, text=True, timeout=120, env=env
    )


def test_the_tpu_entry_finds_libtpu_and_refuses_cpu_devices_naming_the_flag():
    result = _run("services.trainer.api.main_tpu", NO_DATA)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --require_platform=tpu: JAX's devices here are "), error
    assert " cpu " in error
    # The library JAX was pointed at: @libtpu_wheel's, from the entry's runfiles.
    assert "TPU_LIBRARY_PATH=/" in error and f"{LIBTPU};" in error, error


def test_the_cpu_trainer_passes_the_check_on_cpu_and_names_a_mesh_too_large():
    result = _run(
        "services.trainer.api.main", ["--require_platform=cpu", "--mesh=1,16,1"] + NO_DATA
    )
    assert result.returncode != 0
    assert "spec.mesh: data*fsdp*tensor = 16 != 1 devices" in result.stderr


def test_the_cpu_trainer_environment_has_no_libtpu():
    probe = (
        "import importlib.util, os\n"
        "import services.trainer.api.main\n"
        "from jax._src import cloud_tpu_init\n"
        "import jax\n"
        "print(importlib.util.find_spec('libtpu'), os.environ.get('TPU_LIBRARY_PATH'),\n"
        "      cloud_tpu_init.get_tpu_library_path(), jax.devices()[0].platform)\n"
    )
    env = process.child_env()
    env.pop("TPU_LIBRARY_PATH", None)
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None", "None", "cpu"]
    assert "libtpu" not in result.stderr


def test_the_main_environment_is_locked_without_libtpu():
    with open("requirements.lock") as f:
        names = [line.split("==")[0].strip().lower() for line in f if "==" in line]
    assert names and not [n for n in names if n.startswith("libtpu")]


Device = collections.namedtuple("Device", "platform id")


def test_platform_error_names_the_flag_and_the_devices():
    cpus = [Device("cpu", i) for i in range(8)]
    error = main.platform_error("tpu", cpus)
    assert error.startswith("--require_platform=tpu: JAX's devices here are 8 cpu (")
    assert ", ...), not tpu" in error
    assert main.platform_error("tpu", [Device("tpu", 0), Device("tpu", 1)]) is None
    mixed = main.platform_error("tpu", [Device("tpu", 0), Device("cpu", 1)])
    assert "2 cpu+tpu" in mixed
    assert "TPU_LIBRARY_PATH" not in main.platform_error("gpu", cpus)
