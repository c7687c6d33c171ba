"""Tests of libs/sandbox: pass evidence, containment of hostile programs, the API.

Needs root, bubblewrap and util-linux (as the library does); every test that
starts a sandbox is skipped with the library's own message when they are absent.
"""

import ast
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from libs.sandbox import sandbox as sb

try:
    sb.check_available()
    _UNAVAILABLE = ""
except sb.SandboxUnavailable as e:
    _UNAVAILABLE = str(e)

needs_sandbox = pytest.mark.skipif(bool(_UNAVAILABLE), reason=_UNAVAILABLE)
FAST = sb.Limits(timeout_s=5.0)


def _processes_of(uids) -> list[int]:
    """Pids of live (non-zombie) processes whose real uid is in `uids`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                st = f.read()
        except OSError:
            continue
        m = re.search(rb"\nUid:\s+(\d+)", st)
        if m and int(m.group(1)) in uids and b"\nState:\tZ" not in st:
            pids.append(int(name))
    return pids


@pytest.fixture
def no_leftovers(monkeypatch):
    """After the test: no process is left with a uid that this test's runs used.

    Only those uids: other processes on the machine may be running sandboxes
    of their own at the same time, with other uids from the pool.
    """
    used = set()
    acquire = sb._pool.acquire

    def recording_acquire():
        uid, fd = acquire()
        used.add(uid)
        return uid, fd

    monkeypatch.setattr(sb._pool, "acquire", recording_acquire)
    yield used
    left = _processes_of(used)
    assert left == [], [_describe(pid) for pid in left]


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        return (
            f"{pid} {fields['State'].strip()} uid={fields['Uid'].split()[0]} "
            f"ppid={fields['PPid'].strip()} {cmd[:80]}"
        )
    except OSError:
        return f"{pid} (gone)"


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- Limits and availability -------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("timeout_s", 0),
        ("timeout_s", -1.0),
        ("timeout_s", float("inf")),
        ("timeout_s", "3"),
        ("memory_mb", 0),
        ("memory_mb", 1.5),
        ("max_processes", 0),
        ("max_processes", True),
        ("max_output_bytes", 0),
        ("max_file_bytes", -5),
        ("max_tmp_bytes", 10),
    ],
)
def test_limits_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"Limits\.{field}\b"):
        sb.Limits(**{field: value})


def test_limits_defaults():
    lim = sb.Limits()
    assert (lim.timeout_s, lim.memory_mb, lim.max_processes) == (10.0, 1024, 64)
    assert (lim.max_output_bytes, lim.max_file_bytes) == (1 << 20, 16 << 20)


def test_missing_tools_are_named():
    with pytest.raises(sb.SandboxUnavailable) as info:
        sb._find_tools(path="/nonexistent")
    msg = str(info.value)
    for tool, package in (
        ("bwrap", "bubblewrap"),
        ("setpriv", "util-linux"),
        ("prlimit", "util-linux"),
    ):
        assert tool in msg and package in msg


def test_sandbox_failure_is_error_not_failed():
    raw = sb._Raw(
        exit_code=1, stdout=b"", stderr=b"bwrap: Can't mount tmpfs\n", duration_s=0.0, started=False
    )
    assert sb._result(raw, passed=False).status == "error"


def test_run_many_validates():
    with pytest.raises(ValueError, match="parallelism"):
        sb.run_many([], parallelism=0)
    with pytest.raises(TypeError, match=r"jobs\[0\]"):
        sb.run_many(["print(1)"])
    assert sb.run_many([]) == []


# --- Pass evidence -----------------------------------------------------------


@needs_sandbox
def test_correct_program_passes():
    r = sb.run_tests(
        "def add(a, b):\n    return a + b\n",
        "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nprint('checked')\n",
        limits=FAST,
    )
    assert r.passed, r
    assert r.exit_code == 0
    assert r.stdout == "checked\n"  # the marker is removed from the reported output


@needs_sandbox
def test_humaneval_style_check_passes():
    program = "def incr_list(l):\n    return [x + 1 for x in l]\n"
    tests = "def check(candidate):\n    assert candidate([1, 2]) == [2, 3]\n\ncheck(incr_list)\n"
    assert sb.run_tests(program, tests, limits=FAST).passed


@needs_sandbox
def test_wrong_assertion_fails_with_traceback():
    r = sb.run_tests("def add(a, b):\n    return a - b\n", "assert add(2, 3) == 5\n", limits=FAST)
    assert r.status == "failed" and r.exit_code == 1
    assert 'File "<tests>", line 1' in r.stderr and "AssertionError" in r.stderr


@needs_sandbox
@pytest.mark.parametrize(
    "escape",
    [
        "import os\nos._exit(0)\n",
        "raise SystemExit(0)\n",
        "import sys\nsys.exit()\n",
        "import atexit, os\natexit.register(lambda: os._exit(0))\nraise KeyboardInterrupt\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "import threading, os\nt = threading.Thread(target=lambda: os._exit(0))\nt.start()\n"
        "t.join()\n",
        "import sys\nsys.stdout.write('passed\\nOK\\n')\nsys.stdout.flush()\nimport os\nos._exit(0)\n",
    ],
)
def test_exiting_before_the_tests_is_not_a_pass(escape):
    r = sb.run_tests(escape, "assert False, 'the tests ran'\n", limits=FAST)
    assert not r.passed, r
    assert r.status == "failed"


@needs_sandbox
def test_marker_cannot_be_found_in_files_argv_env_or_stdin(monkeypatch):
    # Pin the nonce so the program can look for it; the real one is random.
    monkeypatch.setattr(sb.secrets, "token_hex", lambda n: "feedc0de" * 4)
    probe = _src("""
        import os, sys
        needle = b"feedc0de" * 4
        places = {"stdin": sys.stdin.buffer.read()}
        for name in ("cmdline", "environ"):
            places[name] = open("/proc/self/" + name, "rb").read()
        for root in ("/tmp", "/dev/shm"):
            for d, _, files in os.walk(root):
                for f in files:
                    places[os.path.join(d, f)] = open(os.path.join(d, f), "rb").read()
        for fd in os.listdir("/proc/self/fd"):
            try:
                places["fd" + fd] = os.read(int(fd), 1 << 20) if int(fd) > 2 else b""
            except OSError:
                pass
        found = [k for k, v in places.items() if needle in v]
        print("found:", found, flush=True)
        if found:
            print("sandbox-tests-done-" + "feedc0de" * 4, flush=True)
        os._exit(0)
    """)
    r = sb.run_tests(probe, "assert False\n", limits=FAST)
    assert "found: []" in r.stdout, r
    assert not r.passed


# --- run_program -------------------------------------------------------------


@needs_sandbox
def test_run_program_stdin_exit_code_and_work_dir():
    src = _src("""
        import os, sys
        data = sys.stdin.read()
        open("scratch.txt", "w").write(data * 2)
        print(os.getcwd(), open("scratch.txt").read(), os.getuid() >= 61000)
        sys.exit(3)
    """)
    r = sb.run_program(src, stdin="ab", limits=FAST)
    assert r.status == "failed" and r.exit_code == 3
    assert r.stdout == "/tmp/work abab True\n"
    assert sb.run_program("print('hi')", limits=FAST).passed


@needs_sandbox
def test_the_sandbox_runs_the_command_line_that_command_line_builds(monkeypatch):
    built = []
    build = sb._command_line

    def recording(launch):
        built.append(build(launch))
        return built[-1]

    monkeypatch.setattr(sb, "_command_line", recording)
    # The sandbox's pid 1 is bwrap's own init, so its cmdline is bwrap's argv.
    src = "print(open('/proc/1/cmdline', 'rb').read().split(b'\\0')[:-1])"
    r = sb.run_program(src, limits=FAST)
    assert r.passed, r
    assert len(built) == 1
    assert ast.literal_eval(r.stdout) == [a.encode() for a in built[0]]
    assert built[0][-4:] == ["--", sb.INTERPRETER, "-I", "main.py"]


@needs_sandbox
def test_utf8_and_threads_and_subprocesses_work():
    src = _src("""
        import subprocess, threading
        out = []
        t = threading.Thread(target=lambda: out.append("thread"))
        t.start(); t.join()
        child = subprocess.run(["echo", "child"], capture_output=True, text=True)
        out.append(child.stdout.strip())
        print(*out, "héllo ✓")
    """)
    r = sb.run_program(src, limits=FAST)
    assert r.passed, r
    assert r.stdout == "thread child héllo ✓\n"


# --- Hostile programs ----------------------------------------------------------


@needs_sandbox
def test_infinite_loop_times_out_promptly(no_leftovers):
    t0 = time.monotonic()
    r = sb.run_program("while True:\n    pass\n", limits=sb.Limits(timeout_s=1.0))
    assert r.status == "timeout" and r.exit_code is None
    assert 0.9 < r.duration_s < 3.0 and time.monotonic() - t0 < 4.0


@needs_sandbox
def test_closing_stdout_and_stderr_does_not_stop_the_watchdogs(no_leftovers):
    src = "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n"
    r = sb.run_program(src, limits=sb.Limits(timeout_s=1.0))
    assert r.status == "timeout" and r.duration_s < 3.0


@needs_sandbox
def test_sleeping_children_are_killed_with_the_run(no_leftovers):
    src = _src("""
        import os, subprocess, time
        for _ in range(3):
            subprocess.Popen(["sleep", "60"], start_new_session=True)
        if os.fork() == 0:
            os.setsid(); time.sleep(60)
        print("spawned")
    """)
    r = sb.run_program(src, limits=FAST)
    assert r.passed and r.stdout == "spawned\n"


@needs_sandbox
def test_process_limit_binds():
    src = _src("""
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("forks", n, e.errno)
    """)
    r = sb.run_program(src, limits=sb.Limits(timeout_s=5.0, max_processes=16))
    assert r.passed, r
    forks = int(r.stdout.split()[1])
    assert 0 < forks < 16


@needs_sandbox
def test_fork_bomb_is_contained(no_leftovers):
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    r = sb.run_program(bomb, limits=sb.Limits(timeout_s=1.5, max_processes=32))
    assert r.status == "timeout"
    assert r.duration_s < 5.0
    # The host can still fork.
    assert subprocess.run(["true"]).returncode == 0


@needs_sandbox
@pytest.mark.parametrize(
    "bomb",
    [
        "x = bytearray(4 << 30)\n",
        "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n",
    ],
)
def test_memory_bomb_is_killed(bomb, no_leftovers):
    r = sb.run_program(bomb, limits=sb.Limits(timeout_s=10.0, memory_mb=256))
    assert r.status == "failed", r
    assert "MemoryError" in r.stderr


@needs_sandbox
def test_memory_summed_over_processes_is_capped(no_leftovers):
    # Each child stays under RLIMIT_AS; together they would not.
    src = _src("""
        import os, time
        for _ in range(6):
            if os.fork() == 0:
                block = b"x" * (120 << 20)
                time.sleep(30)
                os._exit(0)
        time.sleep(30)
    """)
    r = sb.run_program(src, limits=sb.Limits(timeout_s=15.0, memory_mb=300))
    assert r.status == "failed", r
    assert "memory" in r.detail and r.duration_s < 10.0


@needs_sandbox
def test_writes_outside_the_sandbox_do_not_reach_the_host():
    stamp = os.urandom(6).hex()
    host_tmp = os.path.join(tempfile.gettempdir(), f"sandbox-escape-{stamp}")
    here = os.path.dirname(os.path.abspath(__file__))
    targets = [
        "/etc/sandbox-escape",
        os.path.join(here, f"escape-{stamp}"),
        f"/tmp/sandbox-escape-{stamp}",
        host_tmp,
        f"/var/tmp/escape-{stamp}",
        f"/run/lock/escape-{stamp}",
        os.path.join(os.path.expanduser("~"), f"escape-{stamp}"),
        os.path.join(os.getcwd(), f"escape-{stamp}"),
        "/dev/shm/x",
    ]
    src = "import os\n" + "".join(
        f"try:\n    open({t!r}, 'w').write('pwned')\n    print('wrote', {t!r})\n"
        f"except OSError as e:\n    print('refused', {t!r}, e.errno)\n"
        for t in targets
    )
    r = sb.run_program(src, limits=FAST)
    assert r.passed, r
    for t in targets:
        assert not os.path.exists(t), t  # /tmp/... and /dev/shm/x: written in the sandbox only
    # Nothing outside /tmp and /dev/shm (both private tmpfs) was writable.
    for line in r.stdout.splitlines():
        verb, path = line.split()[:2]
        assert verb == "refused" or path.startswith(("/tmp/", "/dev/shm/")), line


@needs_sandbox
def test_tmpfs_and_file_size_are_capped():
    src = _src("""
        import errno
        def fill(path, size):
            try:
                with open(path, "wb") as f:
                    f.write(b"x" * size)
                return "ok"
            except OSError as e:
                return errno.errorcode[e.errno]
        print(*(fill(name, size) for name, size in
                (("big", 2 << 20), ("a", 900 << 10), ("b", 900 << 10), ("c", 900 << 10))))
    """)
    lim = sb.Limits(timeout_s=5.0, max_file_bytes=1 << 20, max_tmp_bytes=3 << 20)
    r = sb.run_program(src, limits=lim)
    # "big" stops at 1 MiB (RLIMIT_FSIZE); the third 900 KiB file overflows the 3 MiB tmpfs.
    assert r.stdout.split() == ["EFBIG", "ok", "ok", "ENOSPC"], r


@needs_sandbox
def test_no_network_even_to_a_real_loopback_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0)
        port = server.getsockname()[1]
        src = _src(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("connected")
            except OSError as e:
                print("refused", type(e).__name__)
            try:
                socket.create_connection(("1.1.1.1", 80), timeout=2)
                print("connected")
            except OSError as e:
                print("unreachable", type(e).__name__)
        """)
        r = sb.run_program(src, limits=FAST)
        assert r.passed, r
        assert "connected" not in r.stdout and r.stdout.startswith("refused")
        with pytest.raises(BlockingIOError):
            server.accept()


@needs_sandbox
@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(os.getpgid(0), signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
        "os.kill(1, signal.SIGKILL)",
    ],
)
def test_signals_cannot_reach_the_host(attack, no_leftovers):
    bystander = subprocess.Popen(["sleep", "30"])  # a host process of the same (root) user
    try:
        src = f"import os, signal\ntry:\n    {attack}\nexcept OSError as e:\n    print(e)\n"
        r = sb.run_program(src, limits=FAST)
        assert r.status in ("passed", "failed"), r
        assert bystander.poll() is None
        os.kill(os.getpid(), 0)  # and we are alive to say so
    finally:
        bystander.kill()
        bystander.wait()


@needs_sandbox
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_printing_gigabytes_hits_the_output_limit(stream, no_leftovers):
    src = f"import sys\nblock = 'x' * 65536\nwhile True:\n    sys.{stream}.write(block)\n"
    lim = sb.Limits(timeout_s=20.0, max_output_bytes=1 << 20)
    r = sb.run_program(src, limits=lim)
    assert r.status == "output_limit" and r.exit_code is None
    assert len(getattr(r, stream)) == 1 << 20
    assert r.duration_s < 5.0


@needs_sandbox
def test_user_namespaces_and_unaccounted_memory_are_refused():
    src = _src("""
        import os, subprocess
        print(subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode != 0)
        try:
            os.memfd_create("x")
            print("memfd")
        except OSError as e:
            print(e.errno)
    """)
    r = sb.run_program(src, limits=FAST)
    assert r.stdout.split() == ["True", "1"], r  # 1 = EPERM


@needs_sandbox
def test_dying_caller_takes_its_sandboxes_with_it():
    script = _src("""
        from libs.sandbox import sandbox as sb
        acquire = sb._pool.acquire
        def announce():
            uid, fd = acquire()
            print(uid, flush=True)
            return uid, fd
        sb._pool.acquire = announce
        sb.run_program("import os, time\\nos.fork()\\ntime.sleep(60)",
                       limits=sb.Limits(timeout_s=60))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    caller = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    try:
        uid = int(caller.stdout.readline())
        deadline = time.monotonic() + 10
        while len(_processes_of({uid})) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_processes_of({uid})) == 2, "the sandboxed program never started"
    finally:
        caller.kill()
        caller.wait()
        caller.stdout.close()
    deadline = time.monotonic() + 5
    while _processes_of({uid}) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _processes_of({uid}) == []


# --- Concurrency -----------------------------------------------------------------


@needs_sandbox
def test_run_many_concurrent_independent_results(no_leftovers):
    jobs = []
    for i in range(8):
        program = f"import os, time\ndef f():\n    return {i}\ntime.sleep(0.3)\n"
        expect = i if i % 3 else -1  # every third job is wrong
        tests = f"print(f(), os.getuid())\nassert f() == {expect}\n"
        jobs.append(sb.Job(program=program, tests=tests, limits=FAST))
    jobs.append(sb.Job(program="print(input()[::-1])", stdin="abc\n", limits=FAST))
    t0 = time.monotonic()
    results = sb.run_many(jobs, parallelism=4)
    elapsed = time.monotonic() - t0
    assert [r.passed for r in results] == [bool(i % 3) for i in range(8)] + [True]
    uids = []
    for i, r in enumerate(results[:8]):
        value, uid = r.stdout.split()
        assert int(value) == i
        uids.append(int(uid))
    assert results[8].stdout == "cba\n"
    assert all(sb.UID_BASE <= u < sb.UID_BASE + sb.UID_SLOTS for u in uids)
    assert len(set(uids[:4])) == 4  # the first four ran together, each with its own uid
    assert elapsed < 8 * 0.3  # they did overlap
