"""Starting a service binary as a child process and learning its address.

Used by tests, by the trainer (which starts a local data service when given
no address) and by the study runner. The child prints
`<Name> listening on HOST:PORT`; the parent waits for that line.
"""

from __future__ import annotations

import dataclasses
import fcntl
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

# Runs first in the child, then becomes the service (exec keeps both settings).
# argv: parent pid (0: none), lock path ("": none), then the service's argv.
# With a parent pid the child gets SIGTERM when the parent dies, even by SIGKILL,
# so a killed trainer leaves no data service behind. With a lock path the child
# holds a shared flock on it for its whole life (see `start`). (A preexec_fn
# would fork a multithreaded JAX process.)
_LAUNCHER = """
import ctypes, fcntl, os, signal, sys
parent, lock_path = int(sys.argv[1]), sys.argv[2]
if parent:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit("the parent exited before the service started")
if lock_path:
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_SH)
    os.set_inheritable(lock, True)
os.execvp(sys.argv[3], sys.argv[3:])
"""
# For `spawn`: argv: parent pid, the signal the child gets when that parent
# dies, then the command.
_SPAWN_LAUNCHER = """
import ctypes, os, sys
parent, signum = int(sys.argv[1]), int(sys.argv[2])
ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit("the parent exited before the command started")
os.execvp(sys.argv[3], sys.argv[3:])
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
    shared_lock: str | None = None,
) -> ServiceProcess:
    """Starts `argv` and waits until it prints its listening line.

    Its output keeps being drained on a thread (and echoed when `echo`), so
    the child never blocks on a full pipe. Raises RuntimeError with the
    child's last output when it exits or times out first. Started from the
    main thread, the child gets SIGTERM when this process dies. With
    `shared_lock` (a path) the child holds a shared flock on that file
    until it exits, so that whoever takes it exclusively (wait_for_lock)
    knows every such child, orphans of a killed parent included, is gone.
    """
    # The kernel's parent-death signal follows the *thread* that forked, so it is
    # asked for only from the main thread, whose end is the process's end.
    parent = os.getpid() if threading.current_thread() is threading.main_thread() else 0
    argv = list(argv)
    if parent or shared_lock:
        argv = [sys.executable, "-c", _LAUNCHER, str(parent), shared_lock or ""] + argv
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


def spawn(
    argv: Sequence[str],
    *,
    death_signal: int = signal.SIGKILL,
    env: dict[str, str] | None = None,
    stdout=None,
    stderr=None,
) -> subprocess.Popen:
    """Starts `argv` (no listening line expected) so that it gets `death_signal`
    when the calling thread's process dies. For workers whose owner may be
    killed at any moment (a Ray actor): SIGKILL by default, since what such a
    worker would do on SIGTERM (say, a last checkpoint) may wait forever on
    peers that are gone."""
    launcher = [sys.executable, "-c", _SPAWN_LAUNCHER, str(os.getpid()), str(int(death_signal))]
    return subprocess.Popen(
        launcher + list(argv),
        env=env if env is not None else child_env(),
        stdout=stdout,
        stderr=stderr,
    )


def wait_for_lock(path: str, timeout: float, on_wait=lambda: None) -> None:
    """Blocks until no child started with `shared_lock=path` is alive (the
    exclusive flock on `path` is free); `on_wait` is called once if it has
    to wait. Raises RuntimeError after `timeout` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if not waited:
                    on_wait()
                    waited = True
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"processes still hold {path} after {timeout:.0f}s; stop them and run again"
                    )
                time.sleep(0.5)
    finally:
        os.close(fd)


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
