"""The eval binary, started as a process: it listens, serves a real checkpoint, stops."""

import signal

import grpc
import pytest

from libs.serving import process
from proto import eval_pb2, eval_pb2_grpc
from services.eval import tasks, testing


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return testing.write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "run"), step=2)


def test_binary_serves_and_stops_on_sigterm(tmp_path, uri):
    service = process.start(
        process.module_command("services.eval.api.main")
        + [
            "--port=0",
            f"--results_db={tmp_path / 'results.sqlite'}",
            f"--benchmarks_dir={tasks.default_benchmarks_dir()}",
            f"--cache_dir={tmp_path / 'cache'}",
        ],
        timeout=120,
    )
    try:
        assert any(
            line.startswith("EvalService listening on 127.0.0.1:") for line in service.log_lines
        )
        process.wait_healthy(service.address, "codelab.eval.v1.EvalService")
        with grpc.insecure_channel(service.address) as channel:
            stub = eval_pb2_grpc.EvalServiceStub(channel)
            assert len(stub.ListTasks(eval_pb2.ListTasksRequest()).tasks) == 13
            results = list(
                stub.Evaluate(
                    eval_pb2.EvaluateRequest(checkpoint_uri=uri, tasks=["copa"], limit=2),
                    timeout=120,
                )
            )
            assert [r.task for r in results][0] == "copa" and results[0].step == 2
            with pytest.raises(grpc.RpcError) as info:
                list(
                    stub.Evaluate(
                        eval_pb2.EvaluateRequest(
                            checkpoint_uri=str(tmp_path / "nothing"), tasks=["copa"]
                        )
                    )
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(30) == 0
    finally:
        service.kill()
