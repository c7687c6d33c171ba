"""Every HumanEval and MBPP (test split) reference solution passes through the sandbox."""

import pytest

from services.eval import code_exec, evaluator, tasks

ROOT = tasks.default_benchmarks_dir()


@pytest.mark.parametrize("name,count", [("humaneval", 164), ("mbpp", 500)])
def test_every_reference_solution_passes(tmp_path, name, count):
    ev = evaluator.Evaluator(
        benchmarks_dir=ROOT,
        cache_dir=str(tmp_path),
        code_runner=code_exec.CodeRunner(),
        bootstrap_resamples=100,
    )
    examples = ev.examples(tasks.TASKS[name])
    jobs = [(code_exec.program(ex, ex["canonical_solution"]), ex["tests"]) for ex in examples]
    results = ev.code_runner.run(jobs)
    failed = [
        (ex["id"], r.status, r.stderr[-300:]) for ex, r in zip(examples, results) if not r.passed
    ]
    assert len(examples) == count
    assert failed == []
