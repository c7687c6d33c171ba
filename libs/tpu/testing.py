"""Running a compile tool the way a user does, for the tools' tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_compile_tool(module: str, *flags: str) -> tuple[int, dict, str]:
    """(exit status, the last JSON line, stdout) of `python -m module flags...` in a
    fresh process (libtpu is loaded once a process, before JAX starts)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-m", module, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[-1]), proc.stdout
