"""Service children die with their runner, and a new runner waits for them."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from studies import service_processes as services

# A stand-in service: prints its listening line, then serves until SIGTERM.
FAKE_SERVICE = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("Fake listening on 127.0.0.1:9", flush=True)
    while True:
        time.sleep(0.1)
""")

# A stand-in runner: starts the fake service as the runner does, prints its pid.
RUNNER = textwrap.dedent("""
    import sys, time
    from libs.serving import process
    argv = process.module_command("fake_service")
    child = process.start(argv, timeout=60, shared_lock=sys.argv[1])
    print(child.process.pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_runner_takes_its_services_along(tmp_path):
    (tmp_path / "fake_service.py").write_text(FAKE_SERVICE)
    lock = str(tmp_path / services.LOCK_FILE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, lock], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        child = int(runner.stdout.readline())
        assert _alive(child)
        # While the child lives, a new runner would wait for it.
        with pytest.raises(RuntimeError, match="still hold"):
            services.wait_for_orphans(str(tmp_path), log=lambda s: None, timeout=1)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the service outlived its runner"
        services.wait_for_orphans(str(tmp_path), log=lambda s: None, timeout=10)
    finally:
        if runner.poll() is None:
            runner.kill()


def test_services_given_by_address_are_not_started(tmp_path):
    s = services.Services(str(tmp_path), addresses={"trainer": "127.0.0.1:1"})
    assert s.address("trainer") == "127.0.0.1:1"
    assert s.started() == []
    s.close()
