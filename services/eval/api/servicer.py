"""EvalService over gRPC: translates messages to Harness calls and back, nothing more.

Library errors name the request field; libs/serving/status turns them into the
call's status.
"""

from __future__ import annotations

from libs import errors
from libs.serving import status
from proto import eval_pb2, eval_pb2_grpc
from services.eval import follow
from services.eval.harness import Harness, JudgeSpec, Scored

SERVICE_NAME = eval_pb2.DESCRIPTOR.services_by_name["EvalService"].full_name


def _result_message(scored: Scored) -> eval_pb2.EvalResult:
    r = scored.result
    return eval_pb2.EvalResult(
        checkpoint_uri=scored.checkpoint_uri,
        task=r.task,
        category=r.category,
        metric=r.metric,
        value=r.value,
        ci_low=r.ci_low,
        ci_high=r.ci_high,
        num_examples=r.num_examples,
        extra={k: float(v) for k, v in r.extra.items()},
        step=scored.step,
        intervals={
            k: eval_pb2.Interval(low=float(lo), high=float(hi))
            for k, (lo, hi) in r.intervals.items()
        },
        per_example={k: eval_pb2.ExampleValues(values=v) for k, v in per_example_values(r).items()},
    )


def per_example_values(r) -> dict[str, list[float]]:
    """What EvalResult.per_example carries: a task's headline metric per example
    (its `scores`) and its other per-example values (an aggregate has neither)."""
    return {**r.example_metrics, **({r.metric: r.scores} if r.scores else {})}


def _stream(context, results):
    try:
        for scored in results:
            yield _result_message(scored)
    except errors.FieldError as e:
        status.abort(context, e)


class EvalServicer(eval_pb2_grpc.EvalServiceServicer):
    def __init__(self, harness: Harness):
        self.harness = harness

    def ListTasks(self, request, context):
        infos, suites = self.harness.list_tasks()
        return eval_pb2.ListTasksResponse(
            tasks=[
                eval_pb2.TaskInfo(
                    name=t.name, category=t.category, metric=t.metric, num_examples=t.num_examples
                )
                for t in infos
            ],
            suites=[eval_pb2.Suite(name=s.name, tasks=list(s.tasks)) for s in suites],
        )

    def Evaluate(self, request, context):
        try:
            results = self.harness.evaluate(
                request.checkpoint_uri,
                suite=request.suite,
                task_names=list(request.tasks),
                limit=request.limit,
                num_samples=request.num_samples,
                seed=request.seed,
                generation_limit=request.generation_limit,
                should_stop=lambda: not context.is_active(),
            )
        except errors.FieldError as e:
            status.abort(context, e)
        yield from _stream(context, results)

    def FollowRun(self, request, context):
        cancellation = follow.Cancellation()
        context.add_callback(cancellation.cancel)
        try:
            results = self.harness.follow_run(
                request.trainer_address,
                request.run_id,
                suite=request.suite,
                task_names=list(request.tasks),
                limit=request.limit,
                cancellation=cancellation,
            )
        except errors.FieldError as e:
            status.abort(context, e)
        yield from _stream(context, results)

    def Compare(self, request, context):
        kind = request.judge.WhichOneof("kind")
        spec = JudgeSpec()
        if kind == "openai":
            o = request.judge.openai
            spec = JudgeSpec(
                openai_base_url=o.base_url, openai_model=o.model, openai_api_key_env=o.api_key_env
            )
        elif kind == "checkpoint_uri":
            spec = JudgeSpec(checkpoint_uri=request.judge.checkpoint_uri)
            if not spec.checkpoint_uri:
                status.abort(
                    context,
                    errors.InvalidArgument("judge.checkpoint_uri", "must not be empty"),
                )
        try:
            c = self.harness.compare(
                request.checkpoint_a,
                request.checkpoint_b,
                prompt_set=request.prompt_set,
                judge=spec,
                limit=request.limit,
                max_new_tokens=request.max_new_tokens,
                seed=request.seed,
            )
        except errors.FieldError as e:
            status.abort(context, e)
        return eval_pb2.CompareResponse(
            win_rate=c.win_rate,
            wins=c.wins,
            losses=c.losses,
            ties=c.ties,
            num_prompts=c.num_prompts,
            ci_low=c.ci_low,
            ci_high=c.ci_high,
            errors=c.errors,
        )
