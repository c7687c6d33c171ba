"""Run untrusted, model-generated Python in a throwaway bubblewrap sandbox.

This module owns everything between "here is some generated code" and "here is
what it did": the sandbox (namespaces, mounts, uid, rlimits, syscall filter),
the I/O pump with its output caps, the watchdogs (wall clock, aggregate
memory), the cleanup of every process the program started, and the pass
evidence for `run_tests`. The eval service (pass@k on HumanEval/MBPP) and the
data service (keep a synthetic problem only if its tests pass) both use it.

How one run is built (running it needs root on the host; nothing is installed
beyond Debian's `bubblewrap` and `util-linux`). `_command_line` writes this
whole command line as a pure function of a `_Launch` (tools, pool uid, limits,
fds, argv), so the policy is read in one place and tested without root:

    bwrap  --ro-bind / /  --dev /dev  --proc /proc                 (fresh, per run)
           --tmpfs /tmp (size-capped, holds the work dir /tmp/work)
           --tmpfs /dev/shm (size-capped)
           --unshare-net --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try
           --die-with-parent --new-session --seccomp FD --cap-drop ALL (+SETUID/SETGID)
      setpriv --reuid=U --regid=U --clear-groups --no-new-privs    (U from a uid pool)
        prlimit --as --cpu --fsize --nproc --nofile --core
          /usr/bin/python3 -I ...

Threat model. The code is untrusted: it may loop forever, fork-bomb, exhaust
memory, print gigabytes, write anywhere, open sockets, kill its parent, or
exit early with status 0. What we guarantee against such code, and how:

* Host integrity: the root file system is mounted read-only; the only writable
  places are two private, size-capped tmpfs mounts that vanish with the run
  (the work dir is one of them: nothing of a run lands on the host's disk).
  The program runs as an unprivileged uid with no capabilities, no_new_privs
  and nosuid mounts. It can *read* whatever that uid could read on the host
  (world-readable files); do not keep secrets in world-readable places.
* Network: a new, empty network namespace (loopback only, nothing listens).
* Processes: a new pid namespace, so the program cannot see or signal host
  processes (kill(-1), killpg, kill(getppid()) hit only the sandbox). Every
  sandbox gets its own uid from a pool (61000 + slot, held with a lock file
  across processes), because RLIMIT_NPROC counts per uid machine-wide and
  binds only a real unprivileged uid. When a run ends, its pid namespace is
  torn down (killing its pid 1 kills all of it) and any process still owned by
  the uid is killed before the uid goes back to the pool.
* Memory: RLIMIT_AS caps each process. Because a fork bomb could multiply
  that, a watchdog sums the resident anonymous memory of the uid's processes
  every 0.1 s and kills the run past `memory_mb` (so the overshoot is bounded
  by what the program can touch in 0.1 s). Memory that RLIMIT_AS does not see
  is closed off: tmpfs mounts are size-capped, and a seccomp filter refuses
  memfd_create/memfd_secret, SysV shm/msg queues, user namespaces (which would
  allow unbounded private tmpfs mounts), io_uring, bpf, perf_event_open and
  userfaultfd.
* Time and output: a wall-clock timeout and RLIMIT_CPU; stdout and stderr are
  read with a cap each, and the run is killed as soon as one is exceeded (so
  neither our memory nor any disk fills). RLIMIT_FSIZE caps each file.
* Pass evidence (`run_tests`): exit status proves nothing, since a completion
  can call os._exit(0) or raise SystemExit(0) before the tests run. The harness
  is fed to the interpreter on stdin (so it is in no file, argv or environment
  the program could read), runs the program, then the tests, and only then
  writes a random per-run marker (secrets.token_hex) to stdout. A pass needs
  exit status 0 *and* that marker. This defeats early exit, exit from a
  thread/atexit/signal handler, printing a fixed "PASSED" string, and stdout
  tampering. It does not defeat code written to cheat on purpose: code that
  introspects the interpreter (frames, code constants) can find the marker,
  and such code could equally neuter the assertions themselves (redefine
  `__eq__`, patch builtins). No in-process protocol can prevent that; the
  guarantee against deliberately malicious code is containment, not an honest
  pass count.

Residual risks, accepted: the program reads the host's world-readable files;
kernel bugs reachable from the allowed syscalls; a CPU share of up to
`max_processes` busy processes until the timeout.

Interpreter: /usr/bin/python3 (Debian's system Python, world-executable and
always present). `sys.executable` is not used: it usually lives in a venv
under /root (mode 0700) or in Bazel's output base, which the sandbox uid
cannot traverse, and its packages are not what generated code should see.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import math
import os
import platform
import pwd
import re
import secrets
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

__all__ = [
    "INTERPRETER",
    "Job",
    "Limits",
    "Result",
    "SandboxUnavailable",
    "check_available",
    "run_many",
    "run_program",
    "run_tests",
]

INTERPRETER = "/usr/bin/python3"

# The uid pool. 61000-61255 are in Debian's "allocated on demand" range, so no
# account normally has them; a slot whose uid does have an account is skipped.
UID_BASE = 61000
UID_SLOTS = 256

# Lock files for the uid pool. It must be the same directory for every process
# on the machine (the eval and data services may run side by side), so it is a
# fixed path, not tempfile.gettempdir() (Bazel points that at a per-test dir).
STATE_DIR = os.environ.get("CODE_LAB_SANDBOX_STATE_DIR", "/tmp/code-lab-sandbox")

PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
ERROR = "error"
OUTPUT_LIMIT = "output_limit"

# Inside the sandbox: a tmpfs /tmp holding the work dir.
_WORK_DIR = "/tmp/work"
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": _WORK_DIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
_READ_CHUNK = 1 << 16
_WATCHDOG_PERIOD_S = 0.1
# After bwrap exits its pid namespace is gone, so the pipes close at once;
# this only bounds the wait if something unexpected keeps them open.
_DRAIN_GRACE_S = 1.0
_SLOT_WAIT_S = 120.0


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here: a tool is missing, or we lack the privileges."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one run.

    timeout_s: wall-clock limit of the whole run (RLIMIT_CPU is set just above it).
    memory_mb: RLIMIT_AS of each process, and the cap on the summed resident
        memory of all of the run's processes.
    max_processes: RLIMIT_NPROC (processes and threads) of the run's uid.
    max_output_bytes: cap on stdout and on stderr, each; exceeding it kills the run.
    max_file_bytes: RLIMIT_FSIZE, the largest file the program may write.
    max_tmp_bytes: size of each private tmpfs (/tmp with the work dir, /dev/shm).
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_output_bytes: int = 1 << 20
    max_file_bytes: int = 16 << 20
    max_tmp_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"Limits.timeout_s must be a finite number, got {t!r}")
        if t <= 0:
            raise ValueError(f"Limits.timeout_s must be > 0, got {t!r}")
        # The interpreter alone maps ~30 MB, so smaller address spaces cannot work.
        minimum = {
            "memory_mb": 64,
            "max_processes": 1,
            "max_output_bytes": 1,
            "max_file_bytes": 1,
            "max_tmp_bytes": 4096,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Limits.{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"Limits.{name} must be >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    """What one run did.

    status: "passed" | "failed" | "timeout" | "error" (the sandbox itself failed)
        | "output_limit". Only "passed" counts as a pass.
    exit_code: the program's exit status (128 + N when killed by signal N), or
        None when the sandbox killed it (timeout, output or memory limit).
    stdout, stderr: the output, each truncated to max_output_bytes (decoded as
        UTF-8 with replacement); run_tests removes its marker from stdout.
    duration_s: wall-clock time of the run.
    detail: why the status is what it is, when that is not obvious.
    """

    status: str
    exit_code: Optional[int]
    stdout: str
    stderr: str
    duration_s: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work for `run_many`: `run_tests(program, tests)` when tests
    is given, else `run_program(program, stdin=stdin)`."""

    program: str
    tests: Optional[str] = None
    stdin: str = ""
    limits: Limits = Limits()


# ---------------------------------------------------------------------------
# Availability checks.


@dataclasses.dataclass(frozen=True)
class _Tools:
    bwrap: str
    setpriv: str
    prlimit: str
    seccomp: bytes


_tools_cache: Optional[_Tools] = None
_tools_lock = threading.Lock()


def _find_tools(path: Optional[str] = None) -> _Tools:
    """Locate the tools and check the privileges; raise SandboxUnavailable naming
    everything that is missing. `path` overrides $PATH (for tests)."""
    problems = []
    found = {}
    for tool, package in (
        ("bwrap", "bubblewrap"),
        ("setpriv", "util-linux"),
        ("prlimit", "util-linux"),
    ):
        where = shutil.which(tool, path=path)
        if where is None:
            problems.append(f"'{tool}' not found (Debian package {package})")
        found[tool] = where
    try:
        st = os.stat(INTERPRETER)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXOTH:
            problems.append(f"{INTERPRETER} is not a world-executable file")
    except OSError:
        problems.append(f"{INTERPRETER} not found (Debian package python3)")
    if os.geteuid() != 0:
        problems.append("must run as root (to switch each sandbox to a pool uid)")
    elif not _uid_range_mapped(UID_BASE, UID_SLOTS):
        problems.append(
            f"uids {UID_BASE}..{UID_BASE + UID_SLOTS - 1} are not mapped in this user "
            "namespace (inside another sandbox? under Bazel, tag the test 'no-sandbox')"
        )
    seccomp = b""
    try:
        seccomp = _seccomp_filter()
    except SandboxUnavailable as e:
        problems.append(str(e))
    if problems:
        raise SandboxUnavailable("sandbox unavailable: " + "; ".join(problems))
    return _Tools(found["bwrap"], found["setpriv"], found["prlimit"], seccomp)


def _uid_range_mapped(first: int, count: int) -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, _outside, length = (int(x) for x in line.split())
                if inside <= first and first + count <= inside + length:
                    return True
    except (OSError, ValueError):
        return False
    return False


def check_available() -> None:
    """Raise SandboxUnavailable (naming what is missing) unless runs can start."""
    _tools()


def _tools() -> _Tools:
    global _tools_cache
    with _tools_lock:
        if _tools_cache is None:  # only success is cached: an install fixes a failure
            tools = _find_tools()
            _pool.prepare()
            _tools_cache = tools
        return _tools_cache


# ---------------------------------------------------------------------------
# Seccomp: a small classic-BPF deny list, handed to bwrap as raw sock_filter.

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALLS = {
    "x86_64": dict(
        clone=56,
        clone3=435,
        unshare=272,
        memfd_create=319,
        memfd_secret=447,
        shmget=29,
        msgget=68,
        userfaultfd=323,
        io_uring_setup=425,
        io_uring_enter=426,
        io_uring_register=427,
        bpf=321,
        perf_event_open=298,
    ),
    "aarch64": dict(
        clone=220,
        clone3=435,
        unshare=97,
        memfd_create=279,
        memfd_secret=447,
        shmget=194,
        msgget=186,
        userfaultfd=282,
        io_uring_setup=425,
        io_uring_enter=426,
        io_uring_register=427,
        bpf=280,
        perf_event_open=241,
    ),
}
# Refused with EPERM: memory that RLIMIT_AS does not count (memfd, SysV shm and
# message queues), and kernel attack surface ordinary Python code never needs.
_DENIED = (
    "memfd_create",
    "memfd_secret",
    "shmget",
    "msgget",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
)
_CLONE_NEWUSER = 0x10000000


def _seccomp_filter() -> bytes:
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise SandboxUnavailable(f"no seccomp syscall table for architecture {machine!r}")
    nr = _SYSCALLS[machine]
    ld_w_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS

    def errno_(e: int) -> int:
        return 0x00050000 | e  # SECCOMP_RET_ERRNO

    prog = [
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH[machine]),
        (ret, 0, 0, kill),  # another ABI (e.g. int 0x80): its numbers differ, refuse all
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # the x32 ABI shares the arch value; its numbers have bit 30
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno_(errno.ENOSYS))]
    for name in _DENIED:
        prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, errno_(errno.EPERM))]
    # clone3 passes its flags in memory BPF cannot read: ENOSYS makes glibc fall
    # back to clone(2), whose flags we can check.
    prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, errno_(errno.ENOSYS))]
    prog += [
        (jeq, 1, 0, nr["clone"]),
        (jeq, 0, 3, nr["unshare"]),
        (ld_w_abs, 0, 0, 16),  # low half of args[0]: the flags of clone and unshare
        (jset, 0, 1, _CLONE_NEWUSER),
        (ret, 0, 0, errno_(errno.EPERM)),
        (ret, 0, 0, allow),
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


# ---------------------------------------------------------------------------
# The uid pool.


class _UidPool:
    """Hands out uids UID_BASE + slot, one run each, across threads and processes.

    A slot is held by an flock on its lock file; flock belongs to the open file
    description, so two threads of one process exclude each other too, and a
    crashed holder releases its slot automatically.
    """

    def __init__(self, state_dir: str) -> None:
        self._dir = state_dir
        self._ready = False
        self._lock = threading.Lock()
        self._next = 0

    def prepare(self) -> None:
        """Create the lock dir (once); SandboxUnavailable if it cannot be used."""
        with self._lock:
            if self._ready:
                return
            try:
                os.makedirs(self._dir, mode=0o700, exist_ok=True)
                st = os.lstat(self._dir)
            except OSError as e:
                raise SandboxUnavailable(
                    f"cannot use the uid-pool lock dir {self._dir} ({e}); "
                    "set CODE_LAB_SANDBOX_STATE_DIR"
                ) from e
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise SandboxUnavailable(f"{self._dir} is not a directory owned by us")
            if st.st_mode & 0o022:  # someone else could swap our lock files
                os.chmod(self._dir, 0o700)
            self._ready = True

    def acquire(self) -> tuple[int, int]:
        """Return (uid, lock fd); blocks while every slot is busy."""
        self.prepare()
        deadline = time.monotonic() + _SLOT_WAIT_S
        while True:
            with self._lock:  # spread threads over slots instead of all probing slot 0
                start, self._next = self._next, (self._next + 1) % UID_SLOTS
            for i in range(UID_SLOTS):
                uid = UID_BASE + (start + i) % UID_SLOTS
                if _uid_has_account(uid):
                    continue
                path = os.path.join(self._dir, f"uid-{uid}.lock")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return uid, fd
            if time.monotonic() > deadline:
                raise SandboxUnavailable(f"all {UID_SLOTS} sandbox uids stayed busy")
            time.sleep(0.05)

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)  # drops the flock


_account_cache: dict[int, bool] = {}


def _uid_has_account(uid: int) -> bool:
    if uid not in _account_cache:
        try:
            pwd.getpwuid(uid)
            _account_cache[uid] = True
        except KeyError:
            _account_cache[uid] = False
    return _account_cache[uid]


_pool = _UidPool(STATE_DIR)


# ---------------------------------------------------------------------------
# Processes of a uid, found through /proc (this kernel may lack the
# task/*/children files, and the uid is the one thing a sandboxed process
# cannot shed).


def _uid_processes(uid: int) -> Iterator[tuple[int, bytes]]:
    """Yield (pid, /proc/pid/status) for every process whose real, effective or
    saved uid is `uid`."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
        except OSError:  # gone meanwhile
            continue
        m = re.search(rb"\nUid:\s+(\d+)\s+(\d+)\s+(\d+)", status)
        if m and uid in (int(m.group(1)), int(m.group(2)), int(m.group(3))):
            yield int(name), status


def _uid_memory_bytes(uid: int) -> int:
    """Summed resident anonymous + shared-memory pages of the uid's processes."""
    total = 0
    for _pid, status in _uid_processes(uid):
        for key in (rb"RssAnon", rb"RssShmem"):
            m = re.search(rb"\n" + key + rb":\s+(\d+) kB", status)
            if m:
                total += int(m.group(1)) * 1024
    return total


def _kill_uid(uid: int, timeout_s: float = 2.0) -> int:
    """SIGKILL every process of the uid until none is left; return how many
    were signalled. Zombies are skipped (their parent, inside the dying pid
    namespace, reaps them)."""
    killed = 0
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid, st in _uid_processes(uid) if b"\nState:\tZ" not in st]
        if not alive or time.monotonic() > deadline:
            return killed
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# One sandboxed execution.


@dataclasses.dataclass
class _Raw:
    exit_code: Optional[int]
    stdout: bytes
    stderr: bytes
    duration_s: float
    started: bool  # bwrap finished its setup and ran the command
    killed_for: str = ""  # "timeout" | "output_limit" | "memory" | ""


@dataclasses.dataclass(frozen=True)
class _Launch:
    """What the command line of one run is built from.

    bwrap, setpriv, prlimit: the tools' paths on the host.
    uid: the run's pool uid (never root, never an account's).
    limits: the run's Limits.
    seccomp_fd: an fd holding the seccomp filter (raw sock_filter) for bwrap.
    status_fd: where bwrap writes its JSON status (the sandbox's pid 1).
    files: (path under the work dir, fd holding its content), copied in read-only.
    argv: the command run inside, after every privilege is dropped.
    """

    bwrap: str
    setpriv: str
    prlimit: str
    uid: int
    limits: Limits
    seccomp_fd: int
    status_fd: int
    files: tuple[tuple[str, int], ...]
    argv: tuple[str, ...]

    def __post_init__(self) -> None:
        last = UID_BASE + UID_SLOTS - 1
        if isinstance(self.uid, bool) or not isinstance(self.uid, int):
            raise ValueError(f"_Launch.uid must be an int, got {self.uid!r}")
        # Outside the pool the uid could be root or a real account's, whose
        # files, processes and RLIMIT_NPROC count the program would share.
        if not UID_BASE <= self.uid <= last:
            raise ValueError(
                f"_Launch.uid must be a pool uid in [{UID_BASE}, {last}], got {self.uid}"
            )
        for name in ("seccomp_fd", "status_fd"):
            fd = getattr(self, name)
            if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
                raise ValueError(f"_Launch.{name} must be an fd (int >= 0), got {fd!r}")
        for i, (path, fd) in enumerate(self.files):
            parts = path.split("/") if isinstance(path, str) else [""]
            # bwrap resolves ".." and follows "/": either would copy a file out of the work dir.
            if any(part in ("", ".", "..") for part in parts):
                raise ValueError(
                    f"_Launch.files[{i}] must be a relative path inside the work dir, got {path!r}"
                )
            if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
                raise ValueError(f"_Launch.files[{i}] must hold an fd (int >= 0), got {fd!r}")
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValueError(f"_Launch.argv must be a non-empty sequence of str, got {self.argv!r}")


def _command_line(launch: _Launch) -> list[str]:
    """The whole command line of one run: bwrap (namespaces, mounts, seccomp,
    capabilities), then setpriv (the pool uid), then prlimit (the rlimits),
    then the program. A pure function of `launch`, so the policy can be read
    and tested in one place without root."""
    limits, uid = launch.limits, launch.uid
    tmp = str(limits.max_tmp_bytes)
    bwrap = [
        ["--ro-bind", "/", "/"],
        ["--dev", "/dev"],
        ["--proc", "/proc"],
        ["--perms", "1777", "--size", tmp, "--tmpfs", "/tmp"],
        ["--perms", "0777", "--dir", _WORK_DIR],
        ["--perms", "1777", "--size", tmp, "--tmpfs", "/dev/shm"],
        *(["--perms", "0444", "--file", str(fd), f"{_WORK_DIR}/{p}"] for p, fd in launch.files),
        ["--chdir", _WORK_DIR],
        [
            "--unshare-net",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ],
        ["--hostname", "sandbox"],
        ["--die-with-parent", "--new-session"],
        # setpriv needs these two to switch uid; the switch then clears them.
        ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"],
        ["--seccomp", str(launch.seccomp_fd)],
        ["--json-status-fd", str(launch.status_fd)],
    ]
    setpriv = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]
    prlimit = [
        f"--as={limits.memory_mb << 20}",
        f"--cpu={math.ceil(limits.timeout_s) + 1}",
        f"--fsize={limits.max_file_bytes}",
        f"--nproc={limits.max_processes}",
        "--nofile=1024",
        # 1, not 0: a core limit of 0 does not stop a piped core_pattern
        # handler (which runs as root on the host); 1 stops both kinds.
        "--core=1",
    ]
    return [
        launch.bwrap,
        *(arg for group in bwrap for arg in group),
        "--",
        launch.setpriv,
        *setpriv,
        "--",
        launch.prlimit,
        *prlimit,
        "--",
        *launch.argv,
    ]


def _execute(argv: list[str], *, files: dict[str, bytes], stdin: bytes, limits: Limits) -> _Raw:
    """Run `argv` (the interpreter command line) in a fresh sandbox.

    `files` maps paths under the work dir to contents, copied in by bwrap.
    """
    tools = _tools()
    uid, slot_fd = _pool.acquire()
    to_close: list[int] = []
    try:
        # A previous holder that crashed may have left processes behind.
        _kill_uid(uid)
        seccomp_fd = _memfd("seccomp", tools.seccomp)
        to_close.append(seccomp_fd)
        status_r, status_w = os.pipe()
        to_close += [status_r, status_w]
        pass_fds = [seccomp_fd, status_w]
        file_fds = []
        for name, content in files.items():
            fd = _memfd(name, content)
            to_close.append(fd)
            pass_fds.append(fd)
            file_fds.append((name, fd))
        cmd = _command_line(
            _Launch(
                bwrap=tools.bwrap,
                setpriv=tools.setpriv,
                prlimit=tools.prlimit,
                uid=uid,
                limits=limits,
                seccomp_fd=seccomp_fd,
                status_fd=status_w,
                files=tuple(file_fds),
                argv=tuple(argv),
            )
        )
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
                start_new_session=True,
                env=_ENV,
                close_fds=True,
            )
        except OSError as e:
            raise SandboxUnavailable(f"cannot start bwrap: {e}") from e
        os.close(status_w)
        to_close.remove(status_w)
        for fd in pass_fds[2:] + [seccomp_fd]:
            os.close(fd)
            to_close.remove(fd)
        try:
            raw = _pump(proc, status_r, stdin, uid, limits, start)
        finally:
            if proc.returncode is None:  # an exception escaped the pump
                _kill(proc, None)
        return raw
    finally:
        for fd in to_close:
            os.close(fd)
        _kill_uid(uid)
        _pool.release(slot_fd)


def _memfd(name: str, content: bytes) -> int:
    """An in-memory file for bwrap to read: no pipe-buffer deadlock, nothing on disk."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _pump(
    proc: subprocess.Popen, status_r: int, stdin: bytes, uid: int, limits: Limits, start: float
) -> _Raw:
    """Feed stdin, collect capped output, enforce the watchdogs, reap."""
    cap = limits.max_output_bytes
    stdout_fd, stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
    out = {stdout_fd: bytearray(), stderr_fd: bytearray()}
    status = bytearray()
    init_pidfd: Optional[int] = None
    killed_for = ""
    sel = selectors.DefaultSelector()
    bwrap_pidfd = os.pidfd_open(proc.pid)
    try:
        for fd in list(out) + [status_r]:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(bwrap_pidfd, selectors.EVENT_READ)
        stdin_fd = proc.stdin.fileno()
        pending = memoryview(stdin)
        if pending:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        deadline = start + limits.timeout_s
        next_watch = start + _WATCHDOG_PERIOD_S
        exited_at: Optional[float] = None
        open_reads = set(out) | {status_r}
        # Until bwrap exits, even if the program closed its stdout and stderr:
        # the watchdogs must keep running. Then drain what is left in the pipes.
        while True:
            now = time.monotonic()
            if exited_at is not None and (not open_reads or now > exited_at + _DRAIN_GRACE_S):
                break
            if not killed_for and exited_at is None:
                if now >= deadline:
                    killed_for = TIMEOUT
                elif now >= next_watch:
                    next_watch = now + _WATCHDOG_PERIOD_S
                    if _uid_memory_bytes(uid) > limits.memory_mb << 20:
                        killed_for = "memory"
                if killed_for:
                    _kill(proc, init_pidfd)
                    break
            wake = min(deadline, next_watch) if exited_at is None else exited_at + _DRAIN_GRACE_S
            for key, _ in sel.select(max(0.0, wake - now)):
                fd = key.fd
                if fd == bwrap_pidfd:
                    sel.unregister(fd)
                    exited_at = time.monotonic()
                elif fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                else:
                    try:
                        chunk = os.read(fd, _READ_CHUNK)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                        open_reads.discard(fd)
                    elif fd == status_r:
                        status += chunk
                        if init_pidfd is None:
                            init_pidfd = _open_init(status, proc.pid)
                    else:
                        buf = out[fd]
                        buf += chunk[: cap + 1 - len(buf)]
                        if len(buf) > cap:
                            del buf[cap:]
                            killed_for = OUTPUT_LIMIT
                            break
            if killed_for == OUTPUT_LIMIT:
                _kill(proc, init_pidfd)
                break
        if proc.returncode is None:
            try:
                # Normally immediate: the pipes closed because the namespace died.
                proc.wait(timeout=max(0.0, deadline - time.monotonic()) + _DRAIN_GRACE_S)
            except subprocess.TimeoutExpired:
                killed_for = killed_for or TIMEOUT
                _kill(proc, init_pidfd)
    finally:
        sel.close()
        os.close(bwrap_pidfd)
        if init_pidfd is not None:
            os.close(init_pidfd)
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        proc.stdout.close()
        proc.stderr.close()
    duration = time.monotonic() - start
    code = proc.returncode
    return _Raw(
        exit_code=None if killed_for or code is None or code < 0 else code,
        stdout=bytes(out[stdout_fd]),
        stderr=bytes(out[stderr_fd]),
        duration_s=duration,
        started=b'"child-pid"' in status,
        killed_for=killed_for,
    )


def _open_init(status: bytes, bwrap_pid: int) -> Optional[int]:
    """A pidfd for the sandbox's pid 1 (bwrap's child), once bwrap reported it.

    Killing it tears the whole pid namespace down, and bwrap then reaps it (if
    we killed bwrap first, its child would become a zombie of the host's init).
    The pidfd cannot be fooled by pid reuse once open; the parent check guards
    the instant between the report and the open.
    """
    m = re.search(rb'"child-pid":\s*(\d+)', status)
    if not m:
        return None
    pid = int(m.group(1))
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        ppid = -1
    if ppid != bwrap_pid:
        os.close(fd)
        return None
    return fd


def _kill(proc: subprocess.Popen, init_pidfd: Optional[int]) -> None:
    """Kill the sandbox: its pid 1 (and so the namespace), then bwrap if needed."""
    if init_pidfd is not None:
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=2.0)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap's group; --die-with-parent does the rest
    except ProcessLookupError:
        pass
    proc.wait()


# ---------------------------------------------------------------------------
# The public entry points.

# Messages our own tools print when the sandbox, not the program, failed.
_TOOL_ERROR = re.compile(rb"^(bwrap|setpriv|prlimit): ", re.MULTILINE)

# run_tests' harness, fed on stdin. The program and the tests run in __main__'s
# namespace, one after the other, as if concatenated (so pickling, `__name__`
# checks and globals behave as in a plain script), but compiled separately so
# that tracebacks name "<program>" or "<tests>" with the right line numbers.
# The marker is a constant of _sandbox_main only: nothing the program can
# list, open or print without going looking for it.
_DRIVER = """\
import os as _os, sys as _sys
def _sandbox_main(_write=_os.write, _sys=_sys):
    import linecache
    _g = _sys.modules["__main__"].__dict__
    for _n in ("_os", "_sys", "_sandbox_main"):
        _g.pop(_n, None)
    for _name, _src in (("<program>", {program!r}), ("<tests>", {tests!r})):
        linecache.cache[_name] = (len(_src), None, _src.splitlines(True), _name)
        exec(compile(_src, _name, "exec"), _g)
    for _stream in (_sys.stdout, _sys.stderr):
        try:
            _stream.flush()
        except BaseException:
            pass
    _write(1, b"\\n" + {marker!r} + b"\\n")
_sandbox_main()
"""


def run_program(source: str, *, limits: Limits = Limits(), stdin: str = "") -> Result:
    """Run `source` as a Python script (`python3 -I main.py` in the work dir).

    Status "passed" means only that it exited with status 0; to check a
    solution against tests, use run_tests.
    """
    if not isinstance(source, str) or not isinstance(stdin, str):
        raise TypeError("run_program: source and stdin must be str")
    raw = _execute(
        [INTERPRETER, "-I", "main.py"],
        files={"main.py": source.encode()},
        stdin=stdin.encode(),
        limits=limits,
    )
    return _result(raw, passed=raw.exit_code == 0)


def run_tests(program: str, tests: str, *, limits: Limits = Limits()) -> Result:
    """Run `program`, then `tests` (e.g. assert statements, or a HumanEval `check`
    plus its call), and report "passed" only if the tests ran to their end:
    exit status 0 *and* the per-run marker written after the last test line.
    The program sees an empty stdin. See the module docstring for the threat model.
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise TypeError("run_tests: program and tests must be str")
    marker = ("sandbox-tests-done-" + secrets.token_hex(16)).encode()
    driver = _DRIVER.format(program=program, tests=tests, marker=marker)
    raw = _execute([INTERPRETER, "-I", "-"], files={}, stdin=driver.encode(), limits=limits)
    evidence = b"\n" + marker + b"\n"
    done = evidence in raw.stdout
    raw.stdout = raw.stdout.replace(evidence, b"", 1)
    detail = ""
    if raw.exit_code == 0 and not done:
        detail = "exited with status 0 before the tests finished"
    return _result(raw, passed=raw.exit_code == 0 and done, detail=detail)


def _result(raw: _Raw, *, passed: bool, detail: str = "") -> Result:
    if raw.killed_for == TIMEOUT:
        status, detail = TIMEOUT, "wall-clock timeout"
    elif raw.killed_for == OUTPUT_LIMIT:
        status, detail = OUTPUT_LIMIT, "stdout or stderr exceeded max_output_bytes"
    elif raw.killed_for == "memory":
        status, detail = FAILED, "killed: the run's processes exceeded memory_mb together"
    elif not raw.started or (raw.exit_code != 0 and _TOOL_ERROR.search(raw.stderr)):
        # A program can forge such a message, but that only turns its own
        # failure into an error: neither counts as a pass.
        status, detail = ERROR, "the sandbox failed to start the program"
    elif passed:
        status = PASSED
    else:
        status = FAILED
    return Result(
        status=status,
        exit_code=raw.exit_code,
        stdout=raw.stdout.decode("utf-8", "replace"),
        stderr=raw.stderr.decode("utf-8", "replace"),
        duration_s=raw.duration_s,
        detail=detail,
    )


def _run_job(job: Job) -> Result:
    if job.tests is None:
        return run_program(job.program, limits=job.limits, stdin=job.stdin)
    return run_tests(job.program, job.tests, limits=job.limits)


def run_many(jobs: Sequence[Job], *, parallelism: Optional[int] = None) -> list[Result]:
    """Run `jobs` concurrently, each in its own sandbox and uid; results in order.

    parallelism: how many run at once (default os.cpu_count()). Each job's
    limits apply to that job alone, so the host may see up to `parallelism`
    times the memory and CPU of one job.
    """
    jobs = list(jobs)
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise TypeError(f"run_many: jobs[{i}] is {type(job).__name__}, not Job")
    if parallelism is None:
        parallelism = os.cpu_count() or 1
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"run_many: parallelism must be an int >= 1, got {parallelism!r}")
    if not jobs:
        return []
    check_available()  # fail once, clearly, rather than once per job
    with ThreadPoolExecutor(
        max_workers=min(parallelism, len(jobs)), thread_name_prefix="sandbox"
    ) as pool:
        return list(pool.map(_run_job, jobs))
