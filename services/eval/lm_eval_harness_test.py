"""HarnessLM: lm-eval's LM interface over our models; local task configs."""

import os

import pytest
from lm_eval.api.instance import Instance

from services.eval import lm as lm_lib, lm_eval_harness, tasks, testing

ROOT = tasks.default_benchmarks_dir()


@pytest.fixture(scope="module")
def lm():
    return testing.tiny_language_model(batch_size=4)


def _instance(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def test_loglikelihoods_are_the_models(lm):
    harness = lm_eval_harness.HarnessLM(lm)
    pairs = [("Question: why?\nAnswer:", " because"), ("The man", " turned on the faucet")]
    got = harness.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    want = lm.loglikelihood(pairs)
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-5)
    texts = ["def add(a, b):\n    return a + b\n", "Sarah was a surgeon."]
    rolling = harness.loglikelihood_rolling(
        [_instance("loglikelihood_rolling", (t,), i) for i, t in enumerate(texts)]
    )
    assert rolling == pytest.approx(lm.loglikelihood_rolling(texts))


def test_generate_until_stops_at_until_and_at_end_of_document(lm):
    prompt = "Question: Which statement best explains why"
    free = lm.generate([prompt], max_new_tokens=12)[0]
    ids = lm._encode(free)
    # The request's own stop strings...
    until = free[3:6] if len(free) >= 6 else "\n"
    harness = lm_eval_harness.HarnessLM(lm)
    reqs = [
        _instance("generate_until", (prompt, {"until": [until], "max_gen_toks": 12}), 0),
        _instance("generate_until", (prompt, {"until": until, "max_gen_toks": 12}), 1),
        _instance("generate_until", (prompt, {"max_gen_toks": 12}), 2),
    ]
    out = harness.generate_until(reqs)
    assert out[0] == out[1] == lm_lib.cut_at_stop(free, [until])
    assert out[2] == free
    # ...and the end-of-document token, whatever the request says.
    eos_lm = lm_lib.LanguageModel(lm.model, lm.tokenizer, batch_size=4, eos_id=ids[1])
    stopped = lm_eval_harness.HarnessLM(eos_lm).generate_until(reqs[2:])
    assert stopped == [lm.tokenizer.decode(ids[: ids.index(ids[1])])]
    with pytest.raises(ValueError, match="max_gen_toks"):
        lm_eval_harness.HarnessLM(lm, max_gen_toks=0)


def test_local_task_configs_include_lm_evals_own(tmp_path):
    names = lm_eval_harness.write_local_tasks(
        str(tmp_path), benchmarks_dir=ROOT, task_names=["copa", "arc_easy"]
    )
    assert names == ["code_lab_copa", "code_lab_arc_easy"]
    yaml = open(tmp_path / "code_lab_copa.yaml").read()
    included = os.path.join(lm_eval_harness.lm_eval_tasks_dir(), "super_glue/copa/default.yaml")
    assert f"include: {included}" in yaml and os.path.exists(included)
    assert "dataset_path: json" in yaml and "validation_split: validation" in yaml
    assert sum(1 for _ in open(tmp_path / "copa.jsonl")) == 100
    assert "test_split: test" in open(tmp_path / "code_lab_arc_easy.yaml").read()
