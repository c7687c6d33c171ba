"""Starting a service binary as a child process and learning its address.

Used by tests, by the trainer (which starts a local data service when given
no address) and by the study runner. The child prints
`<Name> listening on HOST:PORT`; the parent waits for that line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Runs first in the child, then becomes the service (exec keeps the setting): the
# child gets SIGTERM when the parent dies, even by SIGKILL, so a killed trainer leaves
# no data service behind. (A preexec_fn would fork a multithreaded JAX process.)
_TERMINATE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the parent exited before the service started")
os.execvp(sys.argv[2], sys.argv[2:])
"""
_LISTENING = re.compile(r"(\w+) listening on (\S+:\d+)")


@dataclasses.dataclass
class ServiceProcess:
    """A running service binary."""

    process: subprocess.Popen
    address: str
    log_lines: list[str]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def module_command(module: str) -> list[str]:
    """The argv that runs `python -m module` with this interpreter."""
    return [sys.executable, "-m", module]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the import roots of this process, so a
    child started with `python -m` finds the same modules (Bazel runfiles
    included)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def start(
    argv: Sequence[str],
    *,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    echo: bool = False,
) -> ServiceProcess:
    """Starts `argv` and waits until it prints its listening line.

    Its output keeps being drained on a thread (and echoed when `echo`), so
    the child never blocks on a full pipe. Raises RuntimeError with the
    child's last output when it exits or times out first.
    """
    argv = list(argv)
    # The kernel's parent-death signal follows the *thread* that forked, so it is
    # asked for only from the main thread, whose end is the process's end.
    if threading.current_thread() is threading.main_thread():
        argv = [sys.executable, "-c", _TERMINATE_WITH_PARENT, str(os.getpid())] + argv
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env if env is not None else child_env(),
    )
    lines: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def drain():
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if echo:
                print(line, end="", flush=True)
            match = _LISTENING.search(line)
            if match and not found.is_set():
                address.append(match.group(2))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{argv[0]} did not start in {timeout}s:\n" + "\n".join(lines[-20:]))
    if not address:
        process.wait()
        raise RuntimeError(
            f"{' '.join(argv[:3])} exited with {process.returncode} before listening:\n"
            + "\n".join(lines[-20:])
        )
    return ServiceProcess(process=process, address=address[0], log_lines=lines)


def wait_healthy(address: str, service: str = "", timeout: float = 30.0) -> None:
    """Blocks until the standard health service reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
