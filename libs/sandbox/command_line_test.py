"""The sandbox's command line, held equal to the policy written out in full.

`_command_line` is pure, so these tests need neither root nor bubblewrap: a
change to a namespace, mount, capability, uid switch or rlimit shows up here
as a changed expected line.
"""

import pytest

from libs.sandbox import sandbox as sb


def _launch(**overrides) -> sb._Launch:
    fields = dict(
        bwrap="/usr/bin/bwrap",
        setpriv="/usr/bin/setpriv",
        prlimit="/usr/bin/prlimit",
        uid=61007,
        limits=sb.Limits(),
        seccomp_fd=5,
        status_fd=6,
        files=(("main.py", 7),),
        argv=(sb.INTERPRETER, "-I", "main.py"),
    )
    fields.update(overrides)
    return sb._Launch(**fields)


def test_run_program_with_default_limits():
    # Limits(): 10 s (RLIMIT_CPU 11), 1024 MiB, 64 processes, 16 MiB files, 64 MiB tmpfs.
    expected = """
        /usr/bin/bwrap
            --ro-bind / /  --dev /dev  --proc /proc
            --perms 1777 --size 67108864 --tmpfs /tmp
            --perms 0777 --dir /tmp/work
            --perms 1777 --size 67108864 --tmpfs /dev/shm
            --perms 0444 --file 7 /tmp/work/main.py
            --chdir /tmp/work
            --unshare-net --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try
            --hostname sandbox
            --die-with-parent --new-session
            --cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID
            --seccomp 5
            --json-status-fd 6
            --
        /usr/bin/setpriv --reuid=61007 --regid=61007 --clear-groups --no-new-privs --
        /usr/bin/prlimit
            --as=1073741824 --cpu=11 --fsize=16777216 --nproc=64 --nofile=1024 --core=1
            --
        /usr/bin/python3 -I main.py
    """.split()
    assert sb._command_line(_launch()) == expected


def test_run_tests_on_stdin_with_tight_limits():
    limits = sb.Limits(
        timeout_s=2.5, memory_mb=256, max_processes=8, max_file_bytes=4096, max_tmp_bytes=1 << 20
    )
    launch = _launch(
        bwrap="/opt/bin/bwrap",
        uid=61255,
        limits=limits,
        seccomp_fd=11,
        status_fd=12,
        files=(),
        argv=(sb.INTERPRETER, "-I", "-"),
    )
    # A fractional timeout rounds RLIMIT_CPU up, and one second more, so the
    # wall clock is what stops a busy program.
    expected = """
        /opt/bin/bwrap
            --ro-bind / /  --dev /dev  --proc /proc
            --perms 1777 --size 1048576 --tmpfs /tmp
            --perms 0777 --dir /tmp/work
            --perms 1777 --size 1048576 --tmpfs /dev/shm
            --chdir /tmp/work
            --unshare-net --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try
            --hostname sandbox
            --die-with-parent --new-session
            --cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID
            --seccomp 11
            --json-status-fd 12
            --
        /usr/bin/setpriv --reuid=61255 --regid=61255 --clear-groups --no-new-privs --
        /usr/bin/prlimit
            --as=268435456 --cpu=4 --fsize=4096 --nproc=8 --nofile=1024 --core=1
            --
        /usr/bin/python3 -I -
    """.split()
    assert sb._command_line(launch) == expected


def test_files_are_copied_read_only_into_the_work_dir_in_order():
    files = (("main.py", 7), ("data.txt", 9), ("pkg/mod.py", 8))
    cmd = sb._command_line(_launch(files=files))
    mounts = cmd[cmd.index("/dev/shm") + 1 : cmd.index("--chdir")]
    expected = """
        --perms 0444 --file 7 /tmp/work/main.py
        --perms 0444 --file 9 /tmp/work/data.txt
        --perms 0444 --file 8 /tmp/work/pkg/mod.py
    """.split()
    assert mounts == expected


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(uid=0), "uid"),
        (dict(uid=sb.UID_BASE - 1), "uid"),
        (dict(uid=sb.UID_BASE + sb.UID_SLOTS), "uid"),
        (dict(uid=True), "uid"),
        (dict(seccomp_fd=-1), "seccomp_fd"),
        (dict(status_fd="6"), "status_fd"),
        (dict(files=(("../escape.py", 7),)), "files[0]"),
        (dict(files=(("main.py", 7), ("/etc/cron.d/x", 8))), "files[1]"),
        (dict(files=(("a//b.py", 7),)), "files[0]"),
        (dict(files=(("", 7),)), "files[0]"),
        (dict(files=(("main.py", -7),)), "files[0]"),
        (dict(argv=()), "argv"),
        (dict(argv=(sb.INTERPRETER, 3)), "argv"),
    ],
)
def test_launch_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError) as e:
        _launch(**overrides)
    assert str(e.value).startswith(f"_Launch.{field} must ")
