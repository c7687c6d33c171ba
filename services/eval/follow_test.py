"""FollowRun against a scripted TrainerService: every committed checkpoint evaluated once,
across broken trainer streams, client cancellations and restarts of the eval service."""

import threading

import grpc
import pytest

from libs.serving import server as serving
from proto import eval_pb2, eval_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.eval import code_exec, follow, tasks, testing
from services.eval.harness import Harness
from services.eval.results_db import ResultsDB
from services.eval.api.servicer import SERVICE_NAME, EvalServicer

ROOT = tasks.default_benchmarks_dir()
RUN = "run-1"


def _checkpoint_event(step):
    return trainer_pb2.RunEvent(
        run_id=RUN,
        checkpoint=trainer_pb2.CheckpointCommitted(
            step=step,
            uri=f"mem://{RUN}/{step}",
            lineage=trainer_pb2.Lineage(
                run_id=RUN, phase="init", step=step, tokens_seen=step * 100
            ),
        ),
    )


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """WatchRun over a growing event log; can break a stream after N events."""

    def __init__(self):
        self.events: list[trainer_pb2.RunEvent] = []
        self.cond = threading.Condition()
        self.break_after: list[int] = []  # per upcoming call: abort after this many events
        self.calls: list[int] = []
        self.forget_run = 0  # answer NOT_FOUND to this many calls (a restarted trainer)

    def append(self, event):
        with self.cond:
            event.sequence = len(self.events)
            self.events.append(event)
            self.cond.notify_all()

    def add_checkpoints(self, *steps):
        for step in steps:
            # Metrics events in between: a checkpoints_only stream skips them.
            self.append(trainer_pb2.RunEvent(run_id=RUN, metrics=trainer_pb2.Metrics(step=step)))
            self.append(_checkpoint_event(step))

    def end(self, state=trainer_pb2.SUCCEEDED):
        self.append(
            trainer_pb2.RunEvent(run_id=RUN, status=trainer_pb2.RunStatus(run_id=RUN, state=state))
        )

    def WatchRun(self, request, context):
        assert request.checkpoints_only
        self.calls.append(request.from_sequence)
        if request.run_id != RUN or self.forget_run > 0:
            self.forget_run -= 1
            context.abort(grpc.StatusCode.NOT_FOUND, f"run_id: no run {request.run_id!r}")
        budget = self.break_after.pop(0) if self.break_after else None
        i, sent = request.from_sequence, 0
        while context.is_active():
            with self.cond:
                while i >= len(self.events) and context.is_active():
                    self.cond.wait(0.05)
                if i >= len(self.events):
                    return
                event = self.events[i]
            i += 1
            if event.WhichOneof("event") == "metrics":
                continue
            if budget is not None and sent >= budget:
                context.abort(grpc.StatusCode.UNAVAILABLE, "trainer restarting")
            yield event
            sent += 1
            if event.WhichOneof("event") == "status" and event.status.state >= 3:
                return


@pytest.fixture
def trainer():
    fake = FakeTrainer()
    running = serving.serve(
        [(trainer_pb2_grpc.add_TrainerServiceServicer_to_server, fake)],
        ["codelab.trainer.v1.TrainerService"],
        port=0,
    )
    fake.address = running.address
    yield fake
    running.stop(0)


@pytest.fixture
def registry(tmp_path):
    # An oracle per checkpoint: cheap, and scores 1.0 so results are easy to check.
    ev_examples = tasks.load_examples(
        tasks.TASKS["copa"], benchmarks_dir=ROOT, cache_dir=str(tmp_path / "cache"), limit=3
    ).to_list()
    reg = testing.ModelRegistry()
    for step in range(1, 10):
        reg.add(
            f"mem://{RUN}/{step}", testing.OracleModel({"multiple_choice": ev_examples}), step=step
        )
    return reg


def _harness(registry, tmp_path):
    return Harness(
        benchmarks_dir=ROOT,
        results_db=ResultsDB(str(tmp_path / "results.sqlite")),
        cache_dir=str(tmp_path / "cache"),
        loader=registry.load,
        code_runner=code_exec.CodeRunner(),
        bootstrap_resamples=100,
        trainer_connect_timeout_s=2.0,
    )


def _serve(harness):
    running = serving.serve(
        [(eval_pb2_grpc.add_EvalServiceServicer_to_server, EvalServicer(harness))],
        [SERVICE_NAME],
        port=0,
    )
    channel = grpc.insecure_channel(running.address)
    return running, channel, eval_pb2_grpc.EvalServiceStub(channel)


def _follow(stub, trainer, **kwargs):
    request = eval_pb2.FollowRunRequest(
        trainer_address=trainer.address, run_id=RUN, tasks=["copa"], limit=3, **kwargs
    )
    return list(stub.FollowRun(request, timeout=60))


def test_each_checkpoint_once_across_breaks_and_restarts(trainer, registry, tmp_path):
    trainer.add_checkpoints(1, 2, 3)
    trainer.end()
    trainer.break_after = [1, 1]  # the first two streams break after one checkpoint each
    running, channel, stub = _serve(_harness(registry, tmp_path))
    results = _follow(stub, trainer)
    per_checkpoint = [(r.checkpoint_uri, r.step) for r in results if r.task == "copa"]
    assert per_checkpoint == [(f"mem://{RUN}/{s}", s) for s in (1, 2, 3)]
    assert all(r.value == 1.0 for r in results)
    assert sum(r.task == "aggregate/total" for r in results) == 3
    # Resumed after each break from the next sequence number, not from the start.
    assert trainer.calls[0] == 0 and trainer.calls[1] > 0 and trainer.calls[2] > trainer.calls[1]
    channel.close()
    running.stop(0)

    # The eval service restarts on the same database; the run goes on and ends again.
    trainer.events.pop()  # the run had not really ended
    trainer.add_checkpoints(4)
    trainer.end()
    registry.loads.clear()
    running, channel, stub = _serve(_harness(registry, tmp_path))
    results = _follow(stub, trainer)
    assert {r.checkpoint_uri for r in results} == {f"mem://{RUN}/4"}
    assert registry.loads == [f"mem://{RUN}/4"]  # done checkpoints were not even loaded
    assert _follow(stub, trainer) == []  # nothing left to do
    channel.close()
    running.stop(0)


def test_a_restarted_trainer_that_forgot_the_run_is_waited_for(trainer, registry, tmp_path):
    trainer.add_checkpoints(1, 2)
    trainer.end()
    trainer.break_after = [1]
    trainer.forget_run = 0
    harness = _harness(registry, tmp_path)
    stream = harness.follow_run(trainer.address, RUN, task_names=["copa"], limit=3)
    first = next(stream)
    assert first.step == 1
    trainer.forget_run = 2  # the next two calls find no run, then it is resumed
    rest = list(stream)
    assert [r.step for r in rest if r.result.task == "copa"] == [2]
    assert len(trainer.calls) == 4


def test_a_deleted_checkpoint_is_skipped_and_remembered(trainer, registry, tmp_path):
    trainer.add_checkpoints(1, 99, 2)  # 99 is not in the registry: deleted meanwhile
    trainer.end()
    harness = _harness(registry, tmp_path)
    results = list(harness.follow_run(trainer.address, RUN, task_names=["copa"], limit=3))
    assert [r.step for r in results if r.result.task == "copa"] == [1, 2]
    assert harness.db.followed(RUN) == [
        (f"mem://{RUN}/1", 1, "done"),
        (f"mem://{RUN}/2", 2, "done"),
        (f"mem://{RUN}/99", 99, "missing"),
    ]


def test_a_cancelled_follow_leaves_the_checkpoint_to_the_next(trainer, registry, tmp_path):
    trainer.add_checkpoints(1, 2)
    trainer.end()
    harness = _harness(registry, tmp_path)
    cancellation = follow.Cancellation()
    stream = harness.follow_run(
        trainer.address, RUN, task_names=["copa", "cb"], limit=3, cancellation=cancellation
    )
    first = next(stream)
    assert (first.step, first.result.task) == (1, "copa")
    cancellation.cancel()  # the client went away in the middle of checkpoint 1
    assert list(stream) == []
    assert harness.db.followed(RUN) == []
    results = list(harness.follow_run(trainer.address, RUN, task_names=["copa", "cb"], limit=3))
    assert [(r.step, r.result.task) for r in results if not r.result.is_aggregate] == [
        (1, "copa"),
        (1, "cb"),
        (2, "copa"),
        (2, "cb"),
    ]
    assert [s for _, _, s in harness.db.followed(RUN)] == ["done", "done"]


def test_follow_run_waits_for_new_checkpoints(trainer, registry, tmp_path):
    harness = _harness(registry, tmp_path)
    stream = harness.follow_run(trainer.address, RUN, task_names=["copa"], limit=3)
    got = []

    def consume():
        got.extend(stream)

    consumer = threading.Thread(target=consume)
    consumer.start()
    trainer.add_checkpoints(1)
    trainer.add_checkpoints(2)
    trainer.end()
    consumer.join(30)
    assert not consumer.is_alive()
    assert [r.step for r in got if r.result.task == "copa"] == [1, 2]


def test_follow_run_errors(trainer, registry, tmp_path):
    running, channel, stub = _serve(_harness(registry, tmp_path))
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.FollowRun(
                eval_pb2.FollowRunRequest(
                    trainer_address=trainer.address, run_id="nope", tasks=["copa"]
                )
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith("run_id:")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.FollowRun(eval_pb2.FollowRunRequest(run_id=RUN, tasks=["copa"])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("trainer_address:")
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.FollowRun(
                eval_pb2.FollowRunRequest(trainer_address="127.0.0.1:9", run_id=RUN, tasks=["copa"])
            )
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith("trainer_address:")
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.FollowRun(
                eval_pb2.FollowRunRequest(trainer_address=trainer.address, run_id=RUN, suite="nope")
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    running.stop(0)
