"""Our scoring agrees with lm-evaluation-harness's own tasks on the same model and
examples: identical requests, log-likelihoods within 1e-4, identical accuracy."""

import pytest

from services.eval import agreement, lm_eval_harness, tasks, testing

ROOT = tasks.default_benchmarks_dir()
TASKS = ["arc_easy", "boolq", "piqa", "social_iqa", "copa", "cb", "hellaswag", "winogrande"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    lm = testing.tiny_language_model()
    return agreement.agree(
        lm,
        TASKS,
        limit=12,
        benchmarks_dir=ROOT,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        work_dir=str(tmp_path_factory.mktemp("lm_eval_tasks")),
    )


def test_every_task_agrees_with_lm_eval(results):
    assert [r.task for r in results] == TASKS
    for r in results:
        assert r.num_examples == 12, r
        assert r.mismatched_requests == [], r
        assert r.max_abs_loglik_diff <= 1e-4, r
        assert r.acc_ours == r.acc_lm_eval, r
        assert r.acc_norm_ours == r.acc_norm_lm_eval, r
        assert r.agrees()
    # acc_norm where lm-eval reports it.
    by_task = {r.task: r for r in results}
    assert by_task["hellaswag"].acc_norm_lm_eval is not None
    assert by_task["copa"].acc_norm_lm_eval is None


def test_a_disagreement_is_seen():
    r = agreement.TaskAgreement("copa", 4, 2e-4, 0.5, 0.5)
    assert not r.agrees() and r.agrees(tol=1e-3)
    assert not agreement.TaskAgreement("copa", 4, 0.0, 0.5, 0.25).agrees()
    assert not agreement.TaskAgreement("copa", 4, 0.0, 0.5, 0.5, mismatched_requests=[1]).agrees()


def test_unknown_tasks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="tasks:"):
        agreement.agree(None, ["triviaqa"], limit=2, benchmarks_dir=ROOT, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tasks:"):
        lm_eval_harness.write_local_tasks(str(tmp_path), benchmarks_dir=ROOT, task_names=["nq"])
