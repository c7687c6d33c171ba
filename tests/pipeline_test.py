"""The three services as real processes: data -> trainer -> checkpoints -> eval.

A tiny two-phase run is started over the TrainerService API against a real
DataService; a WatchRun client must see every committed checkpoint in order,
and the EvalService, following the run, must score each exactly once.
"""

import os
import threading

import grpc
import pytest

from libs.serving import process, status
from proto import data_pb2, eval_pb2, eval_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.data.api import client as data_client
from services.data.api import testing as data_testing

S = trainer_pb2.LRSchedule


def _mixture(**weights):
    return data_pb2.MixtureSpec(
        stages=[
            data_pb2.MixtureStage(
                weights=[data_pb2.SourceWeight(source=k, weight=v) for k, v in weights.items()]
            )
        ]
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    corpus = data_testing.build_small_corpus(str(root / "data"))
    started = []
    try:
        data = data_client.start_local_server(corpus.path, build_default_corpus=False)
        started.append(data)
        trainer = process.start(process.module_command("services.trainer.api.main") + ["--serve"])
        started.append(trainer)
        evaluator = process.start(
            process.module_command("services.eval.api.main")
            + [f"--results_db={root / 'results.sqlite'}", f"--cache_dir={root / 'eval-cache'}"]
        )
        started.append(evaluator)
        yield {
            "data": data.address,
            "trainer": trainer.address,
            "eval": evaluator.address,
            "root": root,
        }
    finally:
        for service in reversed(started):
            service.stop()


def test_checkpoints_stream_in_order_and_each_is_evaluated_once(services):
    tokens_per_step = 4 * 64
    spec = trainer_pb2.RunSpec(
        run_id="pipeline",
        preset="tiny",
        data_address=services["data"],
        global_batch_size=4,
        seq_len=64,
        checkpoint_dir=str(services["root"] / "ckpt"),
        checkpoint_every_steps=2,
        log_every_steps=1,
        phases=[
            trainer_pb2.Phase(
                name="pretrain",
                from_scratch=True,
                token_budget=4 * tokens_per_step,
                mixture=_mixture(text=0.5, code=0.5),
                schedule=S(kind=S.COSINE, peak_lr=3e-3, warmup_steps=1),
            ),
            trainer_pb2.Phase(
                name="cooldown",
                continue_previous=True,
                token_budget=2 * tokens_per_step,
                mixture=_mixture(text=0.8, code=0.2),
                schedule=S(kind=S.LINEAR_ANNEAL),
            ),
        ],
    )
    with (
        grpc.insecure_channel(services["trainer"]) as tc,
        grpc.insecure_channel(services["eval"]) as ec,
    ):
        trainer = trainer_pb2_grpc.TrainerServiceStub(tc)
        evaluator = eval_pb2_grpc.EvalServiceStub(ec)
        assert not trainer.StartRun(trainer_pb2.StartRunRequest(spec=spec), timeout=120).resumed
        with pytest.raises(grpc.RpcError) as again:
            trainer.StartRun(trainer_pb2.StartRunRequest(spec=spec), timeout=120)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert status.field_error(again.value).field == "spec.run_id"

        results = []
        follow = threading.Thread(
            target=lambda: results.extend(
                evaluator.FollowRun(
                    eval_pb2.FollowRunRequest(
                        trainer_address=services["trainer"],
                        run_id="pipeline",
                        tasks=["copa", "humaneval"],
                        limit=2,
                    ),
                    timeout=600,
                )
            )
        )
        follow.start()

        checkpoints, states = [], []
        for event in trainer.WatchRun(
            trainer_pb2.WatchRunRequest(run_id="pipeline", checkpoints_only=True), timeout=600
        ):
            kind = event.WhichOneof("event")
            assert kind in ("checkpoint", "status")
            if kind == "checkpoint":
                checkpoints.append(event.checkpoint)
            else:
                states.append(event.status.state)
        follow.join(600)
        assert not follow.is_alive()

    assert states[-1] == trainer_pb2.SUCCEEDED
    assert [c.step for c in checkpoints] == [2, 4, 6]
    assert [c.lineage.phase for c in checkpoints] == ["pretrain", "pretrain", "cooldown"]
    assert checkpoints[1].phase_end and checkpoints[2].phase_end
    for c in checkpoints:
        assert os.path.isdir(c.uri)
    # Every checkpoint scored once per task.
    per_checkpoint = {}
    for r in results:
        if not r.task.startswith("aggregate/"):
            per_checkpoint.setdefault(r.checkpoint_uri, []).append(r.task)
    assert sorted(per_checkpoint) == sorted(c.uri for c in checkpoints)
    for tasks in per_checkpoint.values():
        assert sorted(tasks) == ["copa", "humaneval"]
    for r in results:
        assert 0.0 <= r.value <= 1.0
