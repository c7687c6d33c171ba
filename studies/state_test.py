import json
import os

import pytest

from studies import state as state_lib


def test_records_survive_a_new_process(tmp_path):
    s = state_lib.State(str(tmp_path))
    assert s.phase("fp1") is None
    s.finish_phase("fp1", {"checkpoint_uri": "/c/1", "run_id": "r1"})
    s.finish_evaluation("fp1", "suite: tiny", {"results": [{"task": "copa", "value": 0.5}]})
    s.finish_judgement("k", {"win_rate": 0.5})
    s.set_sources({"text": "text", "code": "code"})
    s.write_curves("r1", [{"step": 1, "loss": 2.0}])
    again = state_lib.State(str(tmp_path))
    assert again.phase("fp1")["checkpoint_uri"] == "/c/1"
    assert "finished_at" in again.phase("fp1")
    assert again.evaluation("fp1", "suite: tiny")["results"][0]["value"] == 0.5
    assert again.evaluation("fp1", "suite: smoke") is None  # other settings: not reusable
    assert again.judgement("k")["win_rate"] == 0.5
    assert again.sources() == {"text": "text", "code": "code"}
    assert again.read_curves("r1") == [{"step": 1, "loss": 2.0}]
    assert again.read_curves("missing") == []


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    s = state_lib.State(str(tmp_path))
    for i in range(5):
        s.finish_phase(f"fp{i}", {"i": i})
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
    with open(tmp_path / "state.json") as f:
        assert len(json.load(f)["phases"]) == 5


def test_an_unknown_format_is_refused(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="unknown state format"):
        state_lib.State(str(tmp_path))


def test_state_on_gcs_survives_a_new_process():
    from libs import storage
    from libs.storage import testing

    with testing.gcs_emulator(bucket="studies") as gcs:
        out = gcs.uri("micro")
        s = state_lib.State(out)
        s.finish_phase("fp1", {"checkpoint_uri": "gs://studies/c/1"})
        s.write_curves("r1", [{"step": 1, "loss": 2.0}])
        again = state_lib.State(out)
        assert again.phase("fp1")["checkpoint_uri"] == "gs://studies/c/1"
        assert again.read_curves("r1") == [{"step": 1, "loss": 2.0}]
        assert storage.listdir(out) == ["curves", "state.json"]
