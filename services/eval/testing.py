"""Test helpers: a tiny random model with a freshly trained tokenizer, and oracles.

`tiny_language_model` trains a byte-level BPE on a few KB of benchmark and code text
(about a second) and builds libs/model's `tiny` preset with that vocabulary and random
weights. `OracleModel` answers every task from its gold labels, so an evaluation
through it must score 1.0; `ModelRegistry` stands in for checkpoint loading with
in-memory "mem://" URIs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from typing import Sequence

from libs import errors
from services.eval import checkpoints
from services.eval.evaluator import mc_requests

_TEXT = """\
Question: Which statement best explains why photosynthesis is the foundation of most
food webs? Answer: Sunlight is the source of energy for nearly all ecosystems.
The man turned on the faucet therefore water flowed from the spout.
Sarah was a much better surgeon than Maria so Maria always got the harder cases.
Q: Who was the man behind The Chipmunks? A: David Seville. True, False, or Neither?
def add(a, b):
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b

def is_palindrome(text: str) -> bool:
    for i in range(len(text) // 2):
        if text[i] != text[-1 - i]:
            return False
    return True
"""


@functools.lru_cache(maxsize=None)
def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained on a few KB of text (deterministic, ~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT * 4, inspect.getsource(dataclasses)], trainer=trainer)
    return tok


def tiny_model(vocab_size: int, seed: int = 0, max_seq_len: int = 512):
    from flax import nnx

    from libs.model import model as model_lib
    from libs.model import presets

    cfg = dataclasses.replace(
        presets.get_preset("tiny"), vocab_size=vocab_size, max_seq_len=max_seq_len
    )
    return model_lib.Transformer(cfg, rngs=nnx.Rngs(seed))


def tiny_language_model(seed: int = 0, batch_size: int = 16):
    from services.eval.lm import LanguageModel

    tok = train_tokenizer()
    return LanguageModel(tiny_model(tok.get_vocab_size(), seed), tok, batch_size=batch_size)


class OracleModel:
    """A TextModel that knows the gold answer of every example it is shown."""

    def __init__(self, examples_by_kind: dict[str, Sequence[dict]]):
        self._gold_requests: set[tuple[str, str]] = set()
        self._answers: dict[str, str] = {}
        for ex in examples_by_kind.get("multiple_choice", ()):
            self._gold_requests.add(mc_requests(ex)[int(ex["gold"])])
        for ex in examples_by_kind.get("generation", ()):
            self._answers[ex["prompt"]] = " " + ex["answers"][0] + "\n"
        for ex in examples_by_kind.get("code", ()):
            self._answers[ex["prompt"]] = ex["canonical_solution"]
        self.calls = 0

    def loglikelihood(self, requests):
        self.calls += 1
        return [(0.0, True) if r in self._gold_requests else (-10.0, False) for r in requests]

    def generate(self, prompts, *, max_new_tokens, stop=(), temperature=0.0, top_p=1.0, seed=0):
        self.calls += 1
        return [self._answers.get(p, "") for p in prompts]


@dataclasses.dataclass
class ModelRegistry:
    """Stands in for checkpoint storage: "mem://name" URIs mapped to models."""

    models: dict = dataclasses.field(default_factory=dict)
    loads: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, uri: str, model, *, step: int = 0, lineage: dict | None = None) -> str:
        self.models[uri] = (model, step, lineage or {"run_id": "test", "step": step})
        return uri

    def load(self, uri: str) -> checkpoints.LoadedCheckpoint:
        with self._lock:
            self.loads.append(uri)
        if uri not in self.models:
            raise errors.NotFound("checkpoint_uri", f"no checkpoint at {uri!r}")
        model, step, lineage = self.models[uri]
        return checkpoints.LoadedCheckpoint(uri=uri, step=step, lineage=dict(lineage), model=model)


def write_checkpoint(
    directory: str, step: int = 1, *, seed: int = 0, lineage: dict | None = None
) -> str:
    """A real committed checkpoint (libs/checkpoint format) of a random tiny model."""
    import jax.numpy as jnp
    from flax import nnx

    from libs.checkpoint import checkpoint as ckpt_lib

    tok = train_tokenizer()
    model = tiny_model(tok.get_vocab_size(), seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    meta = {
        "step": step,
        "model_config": model.cfg.to_dict(),
        "tokenizer_json": tok.to_str(),
        "lineage": lineage or {"run_id": "test", "phase": "init", "step": step},
    }
    writer = ckpt_lib.CheckpointWriter(directory, async_save=False)
    uri = writer.save(step, params, {"count": jnp.zeros((), jnp.int32)}, meta)
    writer.wait()
    writer.close()
    return uri
