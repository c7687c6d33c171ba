"""Round trips of the three contracts through their wire format, and how their
enums are spelled as text."""

import numpy as np

from proto import data_pb2, eval_pb2, spelling, trainer_pb2


def _mixture():
    return data_pb2.MixtureSpec(
        name="code25",
        stages=[
            data_pb2.MixtureStage(
                until_tokens=1000,
                weights=[
                    data_pb2.SourceWeight(source="text", weight=0.75),
                    data_pb2.SourceWeight(source="code", weight=0.25),
                ],
            ),
            data_pb2.MixtureStage(weights=[data_pb2.SourceWeight(source="cooldown", weight=1)]),
        ],
        max_epochs=4.0,
    )


def test_batch_arrays_round_trip_as_bytes():
    tokens = np.arange(2 * 8, dtype=np.int32).reshape(2, 8)
    batch = data_pb2.Batch(step=7, batch_size=2, seq_len=8, tokens=tokens.tobytes())
    decoded = data_pb2.Batch.FromString(batch.SerializeToString())
    assert decoded.step == 7
    np.testing.assert_array_equal(np.frombuffer(decoded.tokens, np.int32).reshape(2, 8), tokens)


def test_run_spec_round_trip_keeps_phases_and_mixture():
    spec = trainer_pb2.RunSpec(
        run_id="code-then-text",
        preset="tiny",
        phases=[
            trainer_pb2.Phase(
                name="init", from_scratch=True, token_budget=10_000, mixture=_mixture()
            ),
            trainer_pb2.Phase(
                name="cooldown",
                continue_previous=True,
                token_budget=1_000,
                schedule=trainer_pb2.LRSchedule(
                    kind=trainer_pb2.LRSchedule.LINEAR_ANNEAL, final_lr=1e-6
                ),
            ),
        ],
    )
    decoded = trainer_pb2.RunSpec.FromString(spec.SerializeToString())
    assert decoded == spec
    assert decoded.phases[0].WhichOneof("init") == "from_scratch"
    assert decoded.phases[1].WhichOneof("init") == "continue_previous"
    assert decoded.phases[0].mixture.stages[0].weights[1].source == "code"


def test_run_event_oneof_and_lineage_map():
    event = trainer_pb2.RunEvent(
        sequence=3,
        checkpoint=trainer_pb2.CheckpointCommitted(
            step=100,
            uri="/ckpt/run/100",
            lineage=trainer_pb2.Lineage(phase="init", tokens_per_source={"code": 5, "text": 9}),
        ),
    )
    decoded = trainer_pb2.RunEvent.FromString(event.SerializeToString())
    assert decoded.WhichOneof("event") == "checkpoint"
    assert dict(decoded.checkpoint.lineage.tokens_per_source) == {"code": 5, "text": 9}


def test_eval_result_round_trip():
    result = eval_pb2.EvalResult(
        task="arc_easy", metric="acc", value=0.5, ci_low=0.4, ci_high=0.6, extra={"acc_norm": 0.55}
    )
    decoded = eval_pb2.EvalResult.FromString(result.SerializeToString())
    assert decoded == result
    assert decoded.extra["acc_norm"] == 0.55


def test_enum_values_are_spelled_without_their_prefix():
    assert spelling.spelled(data_pb2.SourceKind, data_pb2.SOURCE_KIND_SYNTHETIC_CODE) == (
        "synthetic_code"
    )
    assert spelling.spelled(eval_pb2.Aggregate, eval_pb2.AGGREGATE_NL_REASONING) == "nl_reasoning"
    assert spelling.spelled(trainer_pb2.Remat, trainer_pb2.REMAT_SAVE_DOTS) == "save_dots"
    assert spelling.spellings(data_pb2.SourceKind) == (
        "text",
        "code",
        "markup",
        "code_adjacent",
        "synthetic_code",
        "cooldown",
    )
