"""EvalService over a real gRPC server on port 0: results, stored scores and error codes."""

import os

import grpc
import pytest

from libs.serving import server as serving, status
from proto import eval_pb2, eval_pb2_grpc
from services.eval import code_exec, tasks, testing
from services.eval.harness import Harness
from services.eval.results_db import ResultsDB
from services.eval.api.servicer import SERVICE_NAME, EvalServicer

ROOT = tasks.default_benchmarks_dir()


@pytest.fixture(scope="module")
def registry():
    reg = testing.ModelRegistry()
    reg.add(
        "mem://tiny",
        testing.tiny_language_model(),
        step=42,
        lineage={"run_id": "r", "phase": "init", "step": 42},
    )
    reg.add("mem://tiny-b", testing.tiny_language_model(seed=1), step=7)
    reg.add("mem://hostile", Hostile(), step=1)
    return reg


# A file beside this test, which a completion tries to write from the sandbox.
PWNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"PWNED-{os.getpid()}")


class Hostile:
    """Completions that attack whatever runs them: the parent process, the disk."""

    COMPLETIONS = [
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
        "    os.kill(-1, signal.SIGKILL)\n",
        "    import os\n    os._exit(0)\n",
        f"    open({PWNED!r}, 'w').write('x')\n",
    ]

    def generate(self, prompts, **kwargs):
        return [self.COMPLETIONS[i % len(self.COMPLETIONS)] for i in range(len(prompts))]

    def loglikelihood(self, requests):
        return [(0.0, False)] * len(requests)


@pytest.fixture(scope="module")
def service(registry, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    db = ResultsDB(str(tmp / "results.sqlite"))
    harness = Harness(
        benchmarks_dir=ROOT,
        results_db=db,
        cache_dir=str(tmp / "cache"),
        loader=registry.load,
        code_runner=code_exec.CodeRunner(),
        bootstrap_resamples=200,
    )
    running = serving.serve(
        [(eval_pb2_grpc.add_EvalServiceServicer_to_server, EvalServicer(harness))],
        [SERVICE_NAME],
        port=0,
    )
    channel = grpc.insecure_channel(running.address)
    yield eval_pb2_grpc.EvalServiceStub(channel), db
    channel.close()
    running.stop(0)
    db.close()


def test_list_tasks(service):
    stub, _ = service
    response = stub.ListTasks(eval_pb2.ListTasksRequest())
    by_name = {t.name: t for t in response.tasks}
    assert len(by_name) == 13 and "sciq" not in by_name
    assert by_name["hellaswag"].num_examples == 10042
    assert (by_name["humaneval"].category, by_name["humaneval"].metric) == ("code", "pass@1")
    assert by_name["triviaqa"].metric == "exact_match"
    suites = {s.name: list(s.tasks) for s in response.suites}
    assert suites["smoke"] == ["copa", "winogrande", "triviaqa", "humaneval"]
    assert set(suites["paper"]) == set(by_name)


def test_evaluate_streams_tasks_then_aggregates(service, registry):
    stub, db = service
    results = list(
        stub.Evaluate(eval_pb2.EvaluateRequest(checkpoint_uri="mem://tiny", suite="smoke", seed=5))
    )
    names = [r.task for r in results]
    assert names == [
        "copa",
        "winogrande",
        "triviaqa",
        "humaneval",
        "aggregate/nl_reasoning",
        "aggregate/world_knowledge",
        "aggregate/code",
        "aggregate/nl_average",
        "aggregate/total",
    ]
    for r in results:
        assert r.checkpoint_uri == "mem://tiny" and r.step == 42
        assert 0.0 <= r.ci_low <= r.value <= r.ci_high <= 1.0
    copa = results[0]
    assert (copa.category, copa.metric, copa.num_examples) == ("nl_reasoning", "acc", 4)
    assert set(copa.extra) == {"acc_norm", "acc_norm_bytes", "bpb", "prob_correct", "margin"}
    # Every continuous metric arrives with its bootstrap interval.
    assert set(copa.intervals) == set(copa.extra)
    for name in ("bpb", "prob_correct", "margin"):
        assert copa.intervals[name].low <= copa.extra[name] <= copa.intervals[name].high
    nl = results[names.index("aggregate/nl_reasoning")]
    assert nl.extra["bpb"] > 0 and nl.intervals["bpb"].low <= nl.extra["bpb"]
    # Every example's values, whose means are the task's figures; none for aggregates.
    assert set(copa.per_example) == {"acc", "bpb", "prob_correct", "margin"}
    assert len(copa.per_example["acc"].values) == copa.num_examples
    assert sum(copa.per_example["acc"].values) / 4 == pytest.approx(copa.value)
    assert sum(copa.per_example["bpb"].values) / 4 == pytest.approx(copa.extra["bpb"])
    humaneval = results[names.index("humaneval")]
    assert len(humaneval.per_example["pass@1"].values) == humaneval.num_examples
    assert not nl.per_example
    # Stored with the lineage; a second request is answered from the database.
    assert db.checkpoint("mem://tiny") == (42, {"run_id": "r", "phase": "init", "step": 42})
    assert {t for _, r in db.results("mem://tiny") for t in [r.task]} >= {"copa", "humaneval"}
    again = list(
        stub.Evaluate(eval_pb2.EvaluateRequest(checkpoint_uri="mem://tiny", suite="smoke", seed=5))
    )
    assert [(r.task, r.value, r.ci_low) for r in again] == [
        (r.task, r.value, r.ci_low) for r in results
    ]
    assert again[0].per_example == copa.per_example


def test_hostile_completions_leave_the_service_unharmed(service):
    stub, _ = service
    results = list(
        stub.Evaluate(
            eval_pb2.EvaluateRequest(
                checkpoint_uri="mem://hostile", tasks=["humaneval", "mbpp"], limit=3
            )
        )
    )
    assert [(r.task, r.value) for r in results[:2]] == [("humaneval", 0.0), ("mbpp", 0.0)]
    assert not os.path.exists(PWNED)
    assert len(stub.ListTasks(eval_pb2.ListTasksRequest()).tasks) == 13  # still serving


@pytest.mark.parametrize(
    "request_kwargs,code,field",
    [
        (
            dict(checkpoint_uri="mem://tiny", suite="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "suite",
        ),
        (dict(checkpoint_uri="mem://tiny"), grpc.StatusCode.INVALID_ARGUMENT, "suite"),
        (
            dict(checkpoint_uri="mem://tiny", tasks=["copa", "nope"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tasks",
        ),
        (dict(checkpoint_uri="mem://tiny", tasks=["sciq"]), grpc.StatusCode.NOT_FOUND, "tasks"),
        (
            dict(checkpoint_uri="mem://tiny", suite="smoke", limit=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit",
        ),
        (
            dict(checkpoint_uri="mem://tiny", suite="smoke", num_samples=-2),
            grpc.StatusCode.INVALID_ARGUMENT,
            "num_samples",
        ),
        (dict(suite="smoke"), grpc.StatusCode.INVALID_ARGUMENT, "checkpoint_uri"),
        (
            dict(checkpoint_uri="mem://missing", suite="smoke"),
            grpc.StatusCode.NOT_FOUND,
            "checkpoint_uri",
        ),
    ],
)
def test_evaluate_errors_name_the_field(service, request_kwargs, code, field):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Evaluate(eval_pb2.EvaluateRequest(**request_kwargs)))
    assert info.value.code() == code
    assert info.value.details().startswith(field + ":"), info.value.details()
    assert status.field_error(info.value).field == field


def test_compare_with_a_checkpoint_judge(service):
    stub, _ = service
    response = stub.Compare(
        eval_pb2.CompareRequest(
            checkpoint_a="mem://tiny",
            checkpoint_b="mem://tiny-b",
            prompt_set="vicuna_bench",
            judge=eval_pb2.Judge(checkpoint_uri="mem://tiny"),
            limit=2,
            max_new_tokens=8,
        )
    )
    assert response.num_prompts == 2
    assert response.errors == 0  # a likelihood judge always decides
    assert response.wins + response.losses + response.ties + response.errors == 2
    assert 0.0 <= response.ci_low <= response.win_rate <= response.ci_high <= 1.0


@pytest.mark.parametrize(
    "request_kwargs,code,field",
    [
        (
            dict(checkpoint_a="mem://tiny", checkpoint_b="mem://tiny-b", prompt_set="dolly"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt_set",
        ),
        (
            dict(
                checkpoint_a="mem://tiny",
                checkpoint_b="mem://gone",
                judge=eval_pb2.Judge(checkpoint_uri="mem://tiny"),
            ),
            grpc.StatusCode.NOT_FOUND,
            "checkpoint_b",
        ),
        (
            dict(
                checkpoint_a="mem://tiny",
                checkpoint_b="mem://tiny-b",
                judge=eval_pb2.Judge(checkpoint_uri="mem://gone"),
            ),
            grpc.StatusCode.NOT_FOUND,
            "judge.checkpoint_uri",
        ),
        (
            dict(checkpoint_a="mem://tiny", checkpoint_b="mem://tiny-b"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "judge",
        ),
        (
            dict(
                checkpoint_a="mem://tiny",
                checkpoint_b="mem://tiny-b",
                judge=eval_pb2.Judge(openai=eval_pb2.OpenAIJudge(base_url="http://127.0.0.1:9/v1")),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "judge.openai.model",
        ),
    ],
)
def test_compare_errors_name_the_field(service, request_kwargs, code, field):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as info:
        stub.Compare(eval_pb2.CompareRequest(**request_kwargs))
    assert info.value.code() == code
    assert info.value.details().startswith(field + ":"), info.value.details()
    assert status.field_error(info.value).field == field
