"""Loading real checkpoints (libs/checkpoint format) as LanguageModels, and their errors."""

import os
import shutil

import pytest

from libs.checkpoint import checkpoint as ckpt_lib
from libs import errors
from services.eval import checkpoints, testing
from services.eval.lm import LanguageModel


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return testing.write_checkpoint(
        str(tmp_path_factory.mktemp("ckpt") / "run"),
        step=3,
        lineage={"run_id": "run", "phase": "init", "step": 3},
    )


def test_load_checkpoint_gives_a_scoring_model(uri):
    loaded = checkpoints.load_checkpoint(uri)
    assert isinstance(loaded.model, LanguageModel)
    assert loaded.step == 3 and loaded.lineage["phase"] == "init"
    ((lp, _),) = loaded.model.loglikelihood([("The man turned on the faucet", " therefore")])
    assert lp < 0
    # The same weights as the random model written: scores agree with a fresh copy.
    fresh = testing.tiny_language_model()
    ((lp_fresh, _),) = fresh.loglikelihood([("The man turned on the faucet", " therefore")])
    assert lp == pytest.approx(lp_fresh, rel=1e-5)


def test_missing_uncommitted_and_corrupt_checkpoints(uri, tmp_path):
    with pytest.raises(errors.NotFound) as info:
        checkpoints.load_checkpoint(str(tmp_path / "run" / "9"))
    assert info.value.field == "checkpoint_uri"
    (tmp_path / "run" / "5.orbax-checkpoint-tmp-1").mkdir(parents=True)
    with pytest.raises(errors.NotFound, match="not committed|in progress"):
        checkpoints.load_checkpoint(str(tmp_path / "run" / "5"))
    broken = str(tmp_path / "broken")
    shutil.copytree(uri, broken)
    shutil.rmtree(os.path.join(broken, ckpt_lib.PARAMS))
    with pytest.raises(errors.FailedPrecondition):
        checkpoints.load_checkpoint(broken)
    with pytest.raises(errors.InvalidArgument):
        checkpoints.load_checkpoint("")


def test_model_cache_loads_once_and_names_the_field():
    registry = testing.ModelRegistry()
    registry.add("mem://a", object())
    registry.add("mem://b", object())
    registry.add("mem://c", object())
    cache = checkpoints.ModelCache(registry.load, capacity=2)
    for uri in ["mem://a", "mem://a", "mem://b", "mem://a", "mem://c", "mem://b"]:
        assert cache.get(uri).uri == uri
    assert registry.loads == ["mem://a", "mem://b", "mem://c", "mem://b"]
    with pytest.raises(errors.NotFound) as info:
        cache.get("mem://zzz", field="checkpoint_b")
    assert info.value.field == "checkpoint_b" and str(info.value).startswith("checkpoint_b:")
