"""Code tasks through the sandbox: reference solutions pass, wrong and hostile ones do not.

A subset here (20 problems of each benchmark); code_exec_full_test.py runs them all.
"""

import math
import os

import pytest

from libs.sandbox import sandbox
from services.eval import code_exec, evaluator, tasks

ROOT = tasks.default_benchmarks_dir()
SUBSET = 20


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def ev(cache_dir):
    return evaluator.Evaluator(
        benchmarks_dir=ROOT,
        cache_dir=cache_dir,
        code_runner=code_exec.CodeRunner(),
        bootstrap_resamples=200,
    )


class FixedCompletions:
    """A TextModel whose every generation is `completion(prompt)` (or, with a
    two-argument `completion`, `completion(prompt, temperature)`), and whose every
    continuation costs one nat per character."""

    def __init__(self, completion):
        self.completion = completion
        self.scored = []

    def loglikelihood(self, requests):
        self.scored += requests
        return [(-float(len(cont)), False) for _, cont in requests]

    def generate(self, prompts, *, max_new_tokens, stop=(), temperature=0.0, top_p=1.0, seed=0):
        if self.completion.__code__.co_argcount == 2:
            return [self.completion(p, temperature) for p in prompts]
        return [self.completion(p) for p in prompts]


def _reference(ev, name):
    by_prompt = {
        ex["prompt"]: ex["canonical_solution"] for ex in ev.examples(tasks.TASKS[name], SUBSET)
    }
    return FixedCompletions(lambda p: by_prompt[p])


@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_reference_solutions_score_pass_at_1_of_one(ev, name):
    result = ev.evaluate_task(_reference(ev, name), tasks.TASKS[name], limit=SUBSET)
    assert result.num_examples == SUBSET
    assert result.value == 1.0, result
    assert result.metric == "pass@1"


@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_wrong_solutions_score_zero(ev, name):
    wrong = "    return None\n" if name == "humaneval" else "def nothing():\n    return None\n"
    result = ev.evaluate_task(FixedCompletions(lambda p: wrong), tasks.TASKS[name], limit=5)
    assert result.value == 0.0


def test_pass_at_1_is_greedy_whatever_num_samples(ev):
    # Right when greedy, wrong when sampled: pass@1 must not move with num_samples.
    examples = ev.examples(tasks.TASKS["humaneval"], 2)
    by_prompt = {ex["prompt"]: ex["canonical_solution"] for ex in examples}

    def completion(prompt, temperature):
        return by_prompt[prompt] if temperature == 0 else "    raise ValueError\n"

    model = FixedCompletions(completion)
    one = ev.evaluate_task(model, tasks.TASKS["humaneval"], limit=2, num_samples=1)
    four = ev.evaluate_task(model, tasks.TASKS["humaneval"], limit=2, num_samples=4)
    assert one.value == four.value == 1.0
    assert four.extra["num_samples"] == 4


def test_pass_at_k_from_samples(ev):
    # Alternate right and wrong samples: c = n / 2 per problem.
    examples = ev.examples(tasks.TASKS["humaneval"], 2)
    by_prompt = {ex["prompt"]: ex["canonical_solution"] for ex in examples}
    calls = {"n": 0}

    def completion(prompt, temperature):
        if temperature == 0:
            return "    raise ValueError\n"  # greedy: wrong
        calls["n"] += 1
        assert temperature == evaluator.SAMPLING_TEMPERATURE
        return by_prompt[prompt] if calls["n"] % 2 else "    raise ValueError\n"

    result = ev.evaluate_task(
        FixedCompletions(completion), tasks.TASKS["humaneval"], limit=2, num_samples=20
    )
    assert calls["n"] == 40
    assert result.value == 0.0  # pass@1: the greedy completion
    assert result.extra["num_samples"] == 20
    assert result.extra["pass@10"] == pytest.approx(1 - 1 / 184756)  # 1 - C(10,10)/C(20,10)
    assert "pass@100" not in result.extra  # k > n is not reported
    few = ev.evaluate_task(
        FixedCompletions(completion), tasks.TASKS["humaneval"], limit=2, num_samples=4
    )
    assert "pass@10" not in few.extra


def test_canonical_solution_bits_per_byte(ev):
    model = FixedCompletions(lambda p: "    return None\n")
    result = ev.evaluate_task(model, tasks.TASKS["mbpp"], limit=3)
    examples = ev.examples(tasks.TASKS["mbpp"], 3)
    assert model.scored == [(ex["prompt"], ex["canonical_solution"]) for ex in examples]
    # One nat per character: BPB = chars / bytes / ln 2 (ASCII solutions: 1 / ln 2).
    assert result.extra["bpb"] == pytest.approx(1 / math.log(2))
    lo, hi = result.intervals["bpb"]
    assert lo == pytest.approx(hi) == pytest.approx(1 / math.log(2))


def test_hostile_completions_fail_and_leave_the_caller_unharmed(cache_dir, tmp_path):
    marker = tmp_path / "escaped"
    hostile = [
        # Exit with status 0 before the tests run: no evidence, no pass.
        "    import os\n    os._exit(0)\n",
        "    raise SystemExit(0)\n",
        # Kill whatever process is its parent, and every process it can see.
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
        "    os.kill(-1, signal.SIGKILL)\n",
        # Write outside the sandbox, open a socket, spin, flood stdout.
        f"    open({str(marker)!r}, 'w').write('x')\n",
        "    import socket\n    socket.create_connection(('127.0.0.1', 22), timeout=1)\n",
        "    while True:\n        pass\n",
        "    print('x' * 10_000_000)\n",
    ]
    runner = code_exec.CodeRunner(limits=sandbox.Limits(timeout_s=3.0, memory_mb=512))
    ev = evaluator.Evaluator(
        benchmarks_dir=ROOT, cache_dir=cache_dir, code_runner=runner, bootstrap_resamples=100
    )
    prompts = {}

    def completion(prompt):
        prompts.setdefault(prompt, 0)
        i = len(prompts) - 1
        return hostile[i % len(hostile)]

    result = ev.evaluate_task(
        FixedCompletions(completion), tasks.TASKS["humaneval"], limit=len(hostile)
    )
    assert result.value == 0.0 and result.num_examples == len(hostile)
    assert not marker.exists()
    assert os.getpid() > 0  # still here, and still able to run the next program
    ok = ev.evaluate_task(_reference(ev, "humaneval"), tasks.TASKS["humaneval"], limit=2)
    assert ok.value == 1.0


def test_missing_sandbox_is_a_failed_precondition(monkeypatch):
    def unavailable():
        raise sandbox.SandboxUnavailable("no bwrap")

    monkeypatch.setattr(sandbox, "check_available", unavailable)
    from libs import errors

    with pytest.raises(errors.FailedPrecondition, match="sandbox"):
        code_exec.CodeRunner().check()
