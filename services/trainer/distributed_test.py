"""Two trainer processes (jax.distributed over gloo) against a real data service.

Each process pulls its own shard of every global batch from the DataService;
the losses must match a one-process run of the same RunSpec. Run as a script,
this file is one trainer process: `distributed_test.py OUT DATA [COORD N I]`.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from proto import trainer_pb2
from services.data.api import client as data_client
from services.data.api import testing as data_testing

S = trainer_pb2.LRSchedule


def _spec(checkpoint_dir: str, data_address: str) -> trainer_pb2.RunSpec:
    from services.trainer import spec as spec_lib

    mixture = data_testing.one_stage_mixture(text=0.5, code=0.5)
    return spec_lib.with_defaults(
        trainer_pb2.RunSpec(
            run_id="dist",
            preset="tiny",
            data_address=data_address,
            global_batch_size=4,
            seq_len=64,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_steps=4,
            phases=[
                trainer_pb2.Phase(
                    name="pretrain",
                    from_scratch=True,
                    token_budget=8 * 4 * 64,
                    mixture=mixture,
                    schedule=S(kind=S.COSINE, peak_lr=3e-3, warmup_steps=2),
                )
            ],
        )
    )


def _train(out: str, data_address: str) -> int:
    import jax

    from services.trainer import data_link
    from services.trainer.events import EventLog
    from services.trainer.train import Trainer

    spec = _spec(out, data_address)
    link = data_link.connect(spec, shard_index=jax.process_index(), num_shards=jax.process_count())
    trainer = Trainer(
        spec,
        batches=link.batches,
        vocab_size=link.vocab_size,
        tokenizer_json=link.tokenizer_json,
        events=EventLog(spec.run_id),
        console=False,
        peak_flops=1e11,
    )
    state = trainer.run()
    link.close()
    return 0 if state == trainer_pb2.SUCCEEDED else 1


def _losses(out: str) -> dict[int, float]:
    with open(os.path.join(out, "dist", "metrics.jsonl")) as f:
        return {int(r["step"]): r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def data_address(tmp_path_factory):
    corpus = data_testing.build_small_corpus(str(tmp_path_factory.mktemp("corpus")))
    server = data_client.start_local_server(corpus.path, build_default_corpus=False)
    yield server.address
    server.stop()


def test_two_processes_pulling_their_shards_match_one(tmp_path, data_address):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    me = [sys.executable, os.path.abspath(__file__)]
    one = tmp_path / "one"
    assert subprocess.run(me + [str(one), data_address], env=env, timeout=600).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two"
    workers = [
        subprocess.Popen(me + [str(two), data_address, f"127.0.0.1:{port}", "2", str(i)], env=env)
        for i in range(2)
    ]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]
    expected, got = _losses(str(one)), _losses(str(two))
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    # The same global batches, reduced across processes in another order.
    np.testing.assert_allclose(
        [got[k] for k in sorted(got)], [expected[k] for k in sorted(expected)], rtol=2e-4
    )


if __name__ == "__main__":
    if len(sys.argv) == 6:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            sys.argv[3], num_processes=int(sys.argv[4]), process_id=int(sys.argv[5])
        )
    sys.exit(_train(sys.argv[1], sys.argv[2]))
