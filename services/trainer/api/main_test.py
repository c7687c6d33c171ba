"""The trainer binary as a real process: flags, errors, serving, bad RunSpecs."""

import socket
import subprocess

import grpc
import pytest

from libs.serving import process, status
from proto import data_pb2, trainer_pb2, trainer_pb2_grpc
from services.trainer.api.servicer import SERVICE_NAME

MAIN = process.module_command("services.trainer.api.main")


def _run(args, timeout=120):
    return subprocess.run(
        MAIN + args, capture_output=True, text=True, timeout=timeout, env=process.child_env()
    )


def test_help_lists_the_flags():
    result = _run(["--help"])  # absl's --help exits 1 after printing the flags
    for flag in ("--run_spec", "--preset", "--data_address", "--serve", "--mesh"):
        assert flag in result.stdout
    # The serving flags shared by the three binaries live in libs/serving.
    assert "--port" in _run(["--helpfull"]).stdout


def test_unknown_flag_and_bad_spec_file_fail_with_one_clear_line():
    result = _run(["--frobnicate"])
    assert result.returncode != 0
    assert "frobnicate" in result.stderr
    result = _run(["--run_spec=/no/such/file.textproto"])
    assert result.returncode != 0
    assert "--run_spec: cannot read /no/such/file.textproto" in result.stderr


def test_bad_preset_is_rejected_before_training():
    result = _run(["--preset=huge", "--data_address=127.0.0.1:1"])
    assert result.returncode != 0
    assert "spec.preset: unknown name 'huge'" in result.stderr


@pytest.fixture(scope="module")
def trainer_service():
    service = process.start(MAIN + ["--serve"], timeout=120)
    yield service
    assert service.stop() == 0


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(**kw):
    mixture = data_pb2.MixtureSpec(
        stages=[data_pb2.MixtureStage(weights=[data_pb2.SourceWeight(source="text", weight=1)])]
    )
    phase = trainer_pb2.Phase(
        name="init",
        from_scratch=True,
        token_budget=1000,
        mixture=mixture,
        schedule=trainer_pb2.LRSchedule(kind=trainer_pb2.LRSchedule.COSINE, peak_lr=1e-3),
    )
    spec = trainer_pb2.RunSpec(
        run_id="t", preset="tiny", phases=[phase], data_address=f"127.0.0.1:{_closed_port()}"
    )
    for key, value in kw.items():
        setattr(spec, key, value)
    return spec


def test_serving_health_and_bad_specs(trainer_service):
    process.wait_healthy(trainer_service.address, SERVICE_NAME)
    with grpc.insecure_channel(trainer_service.address) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        cases = [
            (_spec(preset="huge"), grpc.StatusCode.INVALID_ARGUMENT, "spec.preset"),
            (_spec(run_id=""), grpc.StatusCode.INVALID_ARGUMENT, "spec.run_id"),
            (_spec(), grpc.StatusCode.INVALID_ARGUMENT, "spec.data_address"),
        ]
        negative = _spec()
        negative.phases[0].token_budget = -1
        cases.append((negative, grpc.StatusCode.INVALID_ARGUMENT, "spec.phases[0].token_budget"))
        missing_parent = _spec()
        missing_parent.phases[0].init_checkpoint = "/no/such/run/checkpoints/5"
        cases.append((missing_parent, grpc.StatusCode.NOT_FOUND, "spec.phases[0].init_checkpoint"))
        for spec, code, field in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.StartRun(trainer_pb2.StartRunRequest(spec=spec), timeout=60)
            assert err.value.code() == code, err.value.details()
            assert err.value.details().startswith(field), err.value.details()
            assert status.field_error(err.value).field == field
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchRun(trainer_pb2.WatchRunRequest(run_id="nope"), timeout=10))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert status.field_error(err.value).field == "run_id"
        assert stub.ListRuns(trainer_pb2.ListRunsRequest(), timeout=10).runs == []


def test_port_in_use_is_a_clear_error(trainer_service):
    port = trainer_service.address.rsplit(":", 1)[1]
    result = _run(["--serve", f"--port={port}"])
    assert result.returncode != 0
    assert f"cannot bind 127.0.0.1:{port}" in result.stderr
