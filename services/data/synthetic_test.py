"""Synthetic verified code: generated problems kept only when their tests pass
in the sandbox; the generator's deliberate mistakes are rejected."""

import ast
import collections

import pytest

from libs.sandbox import sandbox
from services.data import synthetic


def test_generation_is_seeded_and_varied():
    a = synthetic.generate(200, seed=3)
    assert a == synthetic.generate(200, seed=3)
    assert a != synthetic.generate(200, seed=4)
    assert len({c.family for c in a}) == len(synthetic.FAMILIES)
    assert len({c.document for c in a}) > 190 and len({c.program for c in a}) > 150
    assert 0.05 < sum(bool(c.mutation) for c in a) / len(a) < 0.3
    for c in a:
        if c.mutation not in ("syntax_error",):
            ast.parse(c.program)
        ast.parse(c.tests)
        assert c.tests.startswith("assert ")
        assert c.document.startswith("def ") and c.document.endswith("\n")


def test_every_family_renders_correct_code_in_process():
    """The oracles and the templates agree for unmutated candidates (a cheap
    check without the sandbox; the sandbox check follows)."""
    for c in synthetic.generate(300, seed=5, broken_fraction=0.0):
        namespace = {}
        exec(compile(c.program + c.tests, c.family, "exec"), namespace)


def test_mutations_apply():
    body = "    total = 0\n    for i in range(n):\n        if i < 3:\n            total += i * 2\n    return total"
    for name, mutate in synthetic.MUTATIONS.items():
        out = mutate(body)
        assert out is not None and out != body, name


@pytest.fixture(scope="module")
def sandbox_ok():
    try:
        sandbox.check_available()
    except sandbox.SandboxUnavailable as e:
        pytest.fail(f"the sandbox must run here (root, bubblewrap): {e}")


def test_filter_keeps_passing_and_rejects_broken_candidates(sandbox_ok):
    clean = synthetic.generate(24, seed=1, broken_fraction=0.0)
    broken = [c for c in synthetic.generate(200, seed=2, broken_fraction=1.0) if c.mutation]
    # One of each mistake, blunt ones included.
    by_kind = {}
    for c in broken:
        by_kind.setdefault(c.mutation, c)
    assert set(by_kind) >= {"infinite_loop", "syntax_error", "early_exit", "raises"}
    results = synthetic.verify(clean + list(by_kind.values()), timeout_s=2.0, parallelism=2)
    assert all(r.passed for r in results[: len(clean)]), [r.stderr for r in results if not r.passed]
    status = {kind: r.status for kind, r in zip(by_kind, results[len(clean) :])}
    assert status["infinite_loop"] == sandbox.TIMEOUT
    for kind in ("syntax_error", "early_exit", "raises"):
        assert status[kind] == sandbox.FAILED, (kind, status)


def test_verified_documents_and_stats(sandbox_ok):
    docs, stats = synthetic.verified(
        num_candidates=60, seed=7, broken_fraction=0.3, timeout_s=1.0, parallelism=2
    )
    assert stats.candidates == 60 and stats.mutated > 5
    assert (
        stats.kept == len(docs)
        and stats.kept + sum(stats.rejected.values()) + stats.duplicates == 60
    )
    assert sum(stats.rejected.values()) >= stats.mutated - stats.kept_mutated
    assert not stats.error
    # Every kept document is a candidate whose program passed.
    candidates = {c.document: c for c in synthetic.generate(60, seed=7, broken_fraction=0.3)}
    assert all(d in candidates for d in docs)
    assert (
        collections.Counter(candidates[d].mutation for d in docs)[""]
        >= stats.kept - stats.kept_mutated
    )
    assert list(
        synthetic.verified_documents(
            num_candidates=60, seed=7, broken_fraction=0.3, timeout_s=1.0, parallelism=2
        )
    ) == list(docs)
