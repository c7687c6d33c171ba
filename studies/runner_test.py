"""The runner against fake in-process services: planning, resuming, failing,
judging and reporting, without JAX or real training."""

import hashlib
import os
import subprocess
import sys
import threading

import grpc
import pytest

from libs import errors
from libs.serving import server as serving
from libs.serving import status
from proto import data_pb2, data_pb2_grpc, eval_pb2, eval_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from studies import runner as runner_lib
from studies import spec
from studies.service_processes import Services

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")


class FakeData(data_pb2_grpc.DataServiceServicer):
    """Knows the tiny study's sources; refuses a mixture that names another one,
    through the services' one error mapping."""

    NAMES = (
        "text",
        "code",
        "markup",
        "code_adjacent",
        "synthetic_code",
        "cooldown",
        "cooldown_code",
    )

    def ValidateMixture(self, request, context):
        for i, stage in enumerate(request.mixture.stages):
            for j, w in enumerate(stage.weights):
                if w.source not in self.NAMES:
                    status.abort(
                        context,
                        errors.NotFound(
                            f"mixture.stages[{i}].weights[{j}].source", f"no source {w.source!r}"
                        ),
                    )
        return data_pb2.ValidateMixtureResponse()

    def ListSources(self, request, context):
        return data_pb2.ListSourcesResponse(
            sources=[data_pb2.SourceInfo(name=n, kind=n) for n in self.NAMES]
        )


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Finishes every run at once; fails the runs named in `fail`."""

    def __init__(self):
        self.started: list[trainer_pb2.RunSpec] = []
        self.fail: set[str] = set()
        self.events: dict[str, list] = {}
        self.lock = threading.Lock()

    def StartRun(self, request, context):
        spec_ = request.spec
        with self.lock:
            self.started.append(spec_)
            phase = spec_.phases[0]
            steps = -(-phase.token_budget // (spec_.global_batch_size * spec_.seq_len))
            uri = f"{spec_.checkpoint_dir}/{spec_.run_id}/checkpoints/{steps}"
            events = [
                trainer_pb2.RunEvent(
                    status=trainer_pb2.RunStatus(run_id=spec_.run_id, state=trainer_pb2.RUNNING)
                )
            ]
            for step in range(1, steps + 1, max(1, steps // 4)):
                events.append(
                    trainer_pb2.RunEvent(
                        metrics=trainer_pb2.Metrics(
                            step=step,
                            phase=phase.name,
                            loss=5.0 / step,
                            tokens_seen=step * 10,
                            source_loss={
                                w.source: 5.0 / step for w in phase.mixture.stages[0].weights
                            },
                        )
                    )
                )
            if spec_.run_id in self.fail:
                events.append(
                    trainer_pb2.RunEvent(
                        status=trainer_pb2.RunStatus(
                            run_id=spec_.run_id, state=trainer_pb2.FAILED, error="boom"
                        )
                    )
                )
            else:
                tokens = {w.source: 10 for w in phase.mixture.stages[0].weights}
                events.append(
                    trainer_pb2.RunEvent(
                        checkpoint=trainer_pb2.CheckpointCommitted(
                            step=steps,
                            uri=uri,
                            phase_end=True,
                            lineage=trainer_pb2.Lineage(
                                run_id=spec_.run_id,
                                phase=phase.name,
                                tokens_per_source=tokens,
                                tokens_seen=sum(tokens.values()),
                                parent_uri=phase.init_checkpoint,
                            ),
                        )
                    )
                )
                events.append(
                    trainer_pb2.RunEvent(
                        status=trainer_pb2.RunStatus(
                            run_id=spec_.run_id, state=trainer_pb2.SUCCEEDED, step=steps
                        )
                    )
                )
            self.events[spec_.run_id] = events
        return trainer_pb2.StartRunResponse(run_id=spec_.run_id)

    def WatchRun(self, request, context):
        yield from self.events[request.run_id]


class FakeEval(eval_pb2_grpc.EvalServiceServicer):
    def __init__(self):
        self.evaluated: list[str] = []
        self.requests: list[eval_pb2.EvaluateRequest] = []
        self.compared: list[tuple[str, str, str]] = []

    def Evaluate(self, request, context):
        self.evaluated.append(request.checkpoint_uri)
        self.requests.append(request)
        h = int(hashlib.sha256(request.checkpoint_uri.encode()).hexdigest()[:8], 16) / 2**32
        yield eval_pb2.EvalResult(
            checkpoint_uri=request.checkpoint_uri,
            task="copa",
            category="nl_reasoning",
            value=h,
            num_examples=4,
        )
        for name in ("nl_reasoning", "world_knowledge", "code", "nl_average", "total"):
            yield eval_pb2.EvalResult(
                checkpoint_uri=request.checkpoint_uri,
                task=f"aggregate/{name}",
                category=name,
                value=h,
                ci_low=h / 2,
                ci_high=min(1, h * 1.5),
                num_examples=4,
            )

    def Compare(self, request, context):
        self.compared.append(
            (request.checkpoint_a, request.checkpoint_b, request.judge.checkpoint_uri)
        )
        return eval_pb2.CompareResponse(
            win_rate=0.5, wins=1, losses=1, ties=0, num_prompts=2, ci_low=0.0, ci_high=1.0
        )


@pytest.fixture
def fakes():
    data, trainer, evaluator = FakeData(), FakeTrainer(), FakeEval()
    running = serving.serve(
        [
            (data_pb2_grpc.add_DataServiceServicer_to_server, data),
            (trainer_pb2_grpc.add_TrainerServiceServicer_to_server, trainer),
            (eval_pb2_grpc.add_EvalServiceServicer_to_server, evaluator),
        ],
        [],
    )
    yield running.address, trainer, evaluator
    running.stop(0)


class NoServices(Services):
    """Fails the test if the runner reaches for any service."""

    def _service(self, name):
        raise AssertionError(f"the runner asked for the {name} service")


def _runner(study, out, address, **kw):
    services = Services(out, addresses={"data": address, "trainer": address, "eval": address})
    return runner_lib.Runner(study, out, services, log=lambda s: None, **kw)


def test_a_study_trains_each_phase_once_in_order_then_reuses_everything(tmp_path, fakes):
    address, trainer, evaluator = fakes
    study = spec.load(os.path.join(SPECS, "tiny.textproto"))
    out = str(tmp_path)
    r = _runner(study, out, address)
    report = r.run()
    # 20 trainings (the sweep's random mixture and two twins among them), once per
    # seed; the twins' seeds start past the study's.
    assert len(trainer.started) == 60
    assert len(evaluator.evaluated) == 60
    # The spec's evaluation settings reach the eval service.
    assert {(q.suite, q.limit, q.generation_limit) for q in evaluator.requests} == {("tiny", 25, 5)}
    assert sorted(s.seed for s in trainer.started) == (
        [0] * 18 + [1] * 18 + [2] * 18 + [16] * 2 + [17] * 2 + [18] * 2
    )
    # Children start from their parent's final checkpoint, reported by the trainer.
    started_before = set()
    for s in trainer.started:
        phase = s.phases[0]
        if phase.WhichOneof("init") == "init_checkpoint":
            parent_run = phase.init_checkpoint.split("/checkpoints/")[-2].rsplit("/", 1)[-1]
            assert parent_run in started_before
            assert f"-s{s.seed}-" in parent_run  # its own seed's parent
        started_before.add(s.run_id)
        assert s.checkpoint_dir == os.path.join(out, "checkpoints")
        assert s.data_address == address
    # Win rates: three arms against text-only's last phase, judged by the cooldown
    # model, on the first seed.
    assert len(evaluator.compared) == 3
    judge = r.state.phase(r.plan.lookup("cooldown-code20/cooldown").fingerprint)
    assert {c[2] for c in evaluator.compared} == {judge["checkpoint_uri"]}
    text = open(report).read()
    assert "| code-to-text | continue |" in text
    assert os.path.exists(os.path.join(out, "curves", trainer.started[0].run_id + ".jsonl"))

    again = runner_lib.Runner(study, out, NoServices(out), log=lambda s: None)
    again.run()
    assert again.trained == [] and len(again.reused) == 60 and again.evaluated == []
    assert len(trainer.started) == 60


def test_a_mixture_the_data_service_refuses_stops_the_study_before_training(tmp_path, fakes):
    address, trainer, evaluator = fakes
    study = spec.load(os.path.join(SPECS, "micro.textproto"))
    study.mixtures[1].stages[0].weights[1].source = "kode"
    with pytest.raises(runner_lib.StudyRunError) as e:
        _runner(study, str(tmp_path), address).run()
    assert "arms[1].phases[0].mixture.stages[0].weights[1].source" in str(e.value)
    assert "no source 'kode'" in str(e.value)
    assert trainer.started == []


def test_a_failed_phase_stops_the_study_and_a_rerun_continues(tmp_path, fakes):
    address, trainer, evaluator = fakes
    study = spec.load(os.path.join(SPECS, "micro.textproto"))
    out = str(tmp_path)
    second = _runner(study, out, address).plan.phases[1]
    trainer.fail.add(second.run_id)
    with pytest.raises(runner_lib.StudyRunError, match="ended FAILED: boom"):
        _runner(study, out, address).run()
    assert [s.run_id for s in trainer.started] == [
        _runner(study, out, address).plan.phases[0].run_id,
        second.run_id,
    ]
    trainer.fail.clear()
    rerun = _runner(study, out, address)
    rerun.run()
    assert rerun.reused == ["balanced/init"]
    assert rerun.trained == ["balanced-to-text/continue"]
    assert [s.run_id for s in trainer.started][-1] == second.run_id
    assert len(trainer.started) == 3


def test_a_changed_evaluation_reevaluates_without_retraining(tmp_path, fakes):
    address, trainer, evaluator = fakes
    study = spec.load(os.path.join(SPECS, "micro.textproto"))
    _runner(study, str(tmp_path), address).run()
    study.evaluation.limit = 8
    r = _runner(study, str(tmp_path), address, parallel_eval=False)
    r.run()
    assert r.trained == [] and len(r.evaluated) == 2
    assert len(trainer.started) == 2 and len(evaluator.evaluated) == 4


def test_a_refused_spec_names_the_phase(tmp_path, fakes):
    address, trainer, evaluator = fakes
    study = spec.load(os.path.join(SPECS, "micro.textproto"))

    class Refusing(FakeTrainer):
        def StartRun(self, request, context):
            context.abort(grpc.StatusCode.NOT_FOUND, "spec.phases[0].mixture.x: unknown source")

    refusing = serving.serve(
        [(trainer_pb2_grpc.add_TrainerServiceServicer_to_server, Refusing())], []
    )
    try:
        services = Services(
            str(tmp_path), addresses={"data": address, "eval": address, "trainer": refusing.address}
        )
        with pytest.raises(runner_lib.StudyRunError, match="balanced/init: the trainer refused"):
            runner_lib.Runner(study, str(tmp_path), services, log=lambda s: None).run()
    finally:
        refusing.stop(0)


def test_main_reports_a_bad_spec_with_its_field(tmp_path, capsys):
    bad = tmp_path / "bad.textproto"
    bad.write_text('name: "x" preset: "huge"')
    assert runner_lib.main(runner_lib.Options(spec_path=str(bad))) == 2
    assert "preset: unknown name 'huge'" in capsys.readouterr().err


def test_report_only_starts_nothing(tmp_path, fakes):
    address, trainer, evaluator = fakes
    micro = os.path.join(SPECS, "micro.textproto")
    study = spec.load(micro)
    _runner(study, str(tmp_path), address).run()
    os.remove(tmp_path / "report.md")
    assert (
        runner_lib.main(
            runner_lib.Options(spec_path=micro, out_dir=str(tmp_path), report_only=True),
            log=lambda s: None,
        )
        == 0
    )
    assert os.path.exists(tmp_path / "report.md")
    assert os.path.exists(tmp_path / "study.textproto")


def test_the_runner_script_plans_a_study_run_as_bazel_runs_it(tmp_path):
    """`bazel run //studies:run` executes runner_main.py as a script, studies/ first
    on its path: every import must still find the top-level packages."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner_main.py")
    done = subprocess.run(
        [sys.executable, script, f"--spec={os.path.join(SPECS, 'tiny.textproto')}", "--plan_only"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BUILD_WORKING_DIRECTORY": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "60 trainings" in done.stdout
