"""A study is checked, before anything trains, by the trainer's own RunSpec rules and
the data service's own mixture rules: one limit each, defined once, refused with the
study's field named. Here the data service is real (a child process on a port)."""

import os

import pytest

from libs import errors
from proto import data_pb2
from services.data.api import client as data_client
from services.data.api import testing as data_testing
from studies import plan as plan_lib
from studies import spec
from studies.service_processes import Services

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs", "micro.textproto")


@pytest.fixture(scope="module")
def data_service(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    data_testing.numbered_corpus(str(corpus), {"text": [50] * 20, "code": [50] * 20})
    work = str(tmp_path_factory.mktemp("work"))
    services = Services(
        work, flags={"data": [f"--corpus_dir={corpus}", "--nobuild_default_corpus"]}
    )
    services.address("data")
    yield services
    services.close()


def test_a_study_the_services_accept_passes(data_service):
    plan_lib.validate(plan_lib.build(spec.load(SPEC)), check_mixture=data_service.check_mixture)


def test_a_mixture_over_the_source_limit_is_refused_naming_the_study_field(data_service):
    study = spec.load(SPEC)
    mixture = data_pb2.MixtureSpec()
    mixture.CopyFrom(study.mixtures[1])  # text90-code10, then sources up to one too many
    weights = mixture.stages[0].weights
    weights.extend(
        data_pb2.SourceWeight(source=f"s{k:03d}", weight=1.0)
        for k in range(data_client.MAX_SOURCES + 1 - len(weights))
    )
    study.arms[1].phases[0].mixture.CopyFrom(mixture)
    spec.validate(study)
    plan = plan_lib.build(study)
    plan_lib.validate(plan)  # the trainer's own rules know nothing of sources
    with pytest.raises(spec.StudyError) as e:
        plan_lib.validate(plan, check_mixture=data_service.check_mixture)
    assert e.value.field == (
        f"arms[1].phases[0].mixture.stages[0].weights[{data_client.MAX_SOURCES}].source"
    )
    assert f"at most {data_client.MAX_SOURCES}" in str(e.value)


def test_an_unknown_source_is_not_found(data_service):
    mixture = data_testing.one_stage_mixture(nope=1.0)
    with pytest.raises(errors.NotFound) as e:
        data_service.check_mixture("phases[0].mixture", mixture)
    assert e.value.field == "phases[0].mixture.stages[0].weights[0].source"
