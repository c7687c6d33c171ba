"""LanguageModel: a text-in, text-out view of (Flax NNX Transformer, tokenizer).

The evaluation code asks two things of a model, both over text, both batched:

- `loglikelihood([(context, continuation), ...])` -> [(sum log p(continuation |
  context), is_greedy)], tokenised the lm-evaluation-harness way: the pair is encoded
  as one string and the continuation's tokens are those after the context's own
  encoding, so BPE merges across the boundary match what the model saw in training.
- `loglikelihood_rolling(texts)` -> the log-likelihood of each whole text as a
  document (lm-eval's loglikelihood_rolling): disjoint windows of the context length,
  the first token conditioned on the end-of-document token that precedes every
  document in training;
- `generate(prompts, max_new_tokens=, stop=, temperature=, top_p=, seed=)` -> the new
  text of each prompt, cut before the first stop string or the end-of-document token,
  whichever comes first. Every training document ends in the tokenizer's EOS token, so
  a trained model emits it where an answer ends; what follows it is the start of some
  other document and never part of the answer.

`TextModel` is that interface (tests use hand-built oracles that implement it);
`LanguageModel` implements it with libs/model's KV-cache decoding and this package's
packed scorer (scoring.py; `packed=False` scores with libs/model's padded batches).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Protocol, Sequence

import jax

from libs.model import decode
from services.eval import scoring


class TextModel(Protocol):
    """What the evaluator needs of a model."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]: ...

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]: ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


# Special tokens a tokenizer may use to start a document, in order of preference.
_DOC_START_TOKENS = ("<|endoftext|>", "<eos>", "</s>", "<bos>", "<s>", "<|begin_of_text|>")
# Special tokens a tokenizer may use to end a document (services/data appends "<eos>").
_DOC_END_TOKENS = ("<eos>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<|eot_id|>")


def eos_token_id(tokenizer) -> int | None:
    """The tokenizer's end-of-document token id, or None if it has none."""
    return next(
        (tid for tok in _DOC_END_TOKENS if (tid := tokenizer.token_to_id(tok)) is not None), None
    )


class LanguageModel:
    """TextModel over a libs.model Transformer and a `tokenizers.Tokenizer`.

    prefix_token_id: a token put before every context and prompt (e.g. the document
        separator the model was trained with); None: none, except that an empty
        context gets the tokenizer's end-of-text token (or 0) so the first
        continuation token has something to condition on.
    batch_size: rows per scoring forward pass and per generation call.
    eos_id: the token that ends generation (besides the stop strings); default: the
        tokenizer's end-of-document token (`eos_token_id`). -1: none.
    packed: score with scoring.score_packed (batch_size x max_seq_len tokens a forward
        pass); False: libs/model's decode.score_continuations (batch_size rows padded to
        a power-of-two length), the slower path the bench compares against.
    mesh: score and generate data-parallel over this mesh's devices (the model's
        parameters restored onto it); None: on the model's one device.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        prefix_token_id: int | None = None,
        batch_size: int = 16,
        eos_id: int | None = None,
        packed: bool = True,
        mesh=None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        if mesh is not None and not packed:
            raise ValueError("packed: scoring over a mesh is packed scoring")
        self.model = model
        # Data-parallel over a mesh's devices: the model's parameters live
        # sharded on it (libs/checkpoint.load(mesh=...)), each batch is split
        # along it, and every call pads its rows to at least one a device.
        self.mesh = mesh
        self._rows = 1 if mesh is None else mesh.size
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.batch_size = batch_size
        self.prefix_token_id = prefix_token_id
        self.packed = packed
        # One request at a time per model: nnx.jit traverses (and writes back) the shared
        # module graph, which concurrent service threads must not do together.
        self._lock = threading.Lock()
        self._fallback_start = next(
            (tid for tok in _DOC_START_TOKENS if (tid := tokenizer.token_to_id(tok)) is not None), 0
        )
        self.eos_id = (
            eos_token_id(tokenizer) if eos_id is None else (eos_id if eos_id >= 0 else None)
        )
        if tokenizer.get_vocab_size() > self.cfg.vocab_size:
            raise ValueError(
                f"tokenizer: {tokenizer.get_vocab_size()} tokens exceed the model's "
                f"vocab_size {self.cfg.vocab_size}"
            )

    def _on_mesh(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    @property
    def max_length(self) -> int:
        return self.cfg.max_seq_len

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _prefix(self) -> list[int]:
        return [] if self.prefix_token_id is None else [self.prefix_token_id]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) as lm-evaluation-harness splits them."""
        # Trailing spaces of the context belong to the continuation ("Answer: " + "x"
        # scores " x"), as the tokenizer would merge them with the next word.
        n_spaces = len(context) - len(context.rstrip(" "))
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        if whole[: len(ctx)] != ctx:  # a merge across the boundary: encode separately
            cont = self._encode(continuation)
        else:
            cont = whole[len(ctx) :]
        ctx = self._prefix() + ctx
        if not ctx:
            ctx = [self._fallback_start]
        if not cont:  # an empty continuation has log-likelihood 0; score a dummy
            cont = [self._fallback_start]
        return ctx, cont

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        if not requests:
            return []
        contexts, continuations, empty = [], [], []
        for context, continuation in requests:
            ctx, cont = self.encode_pair(context, continuation)
            contexts.append(ctx)
            continuations.append(cont[-self.max_length :])
            empty.append(continuation == "")
        with self._lock, self._on_mesh():
            if self.packed:
                scored = scoring.score_packed(
                    self.model,
                    list(zip(contexts, continuations)),
                    tokens_per_call=self.batch_size * self.max_length,
                    min_rows=self._rows,
                )
            else:
                scored = decode.score_continuations(
                    self.model, contexts, continuations, batch_size=self.batch_size
                )
        return [(0.0, True) if e else (lp, greedy) for (lp, _n, greedy), e in zip(scored, empty)]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Sum of log p(token) over every token of each text, scored as a document."""
        start = self.eos_id if self.eos_id is not None else self._fallback_start
        width = self.max_length
        pairs, owner = [], []
        for i, text in enumerate(texts):
            ids = self._encode(text)
            # lm-eval's rolling windows (context_len 1, made disjoint): window k predicts
            # ids[k*width:(k+1)*width], no token twice; a full window conditions on the
            # token before it, the last (shorter) one on as many earlier tokens as fit.
            for first in range(0, len(ids), width):
                end = min(first + width, len(ids))
                ctx = ids[end - width - 1 : first] if first else (self._prefix() or [start])
                pairs.append((ctx, ids[first:end]))
                owner.append(i)
        totals = [0.0] * len(texts)
        if pairs:
            with self._lock, self._on_mesh():
                scored = scoring.score_packed(
                    self.model,
                    pairs,
                    tokens_per_call=self.batch_size * self.max_length,
                    min_rows=self._rows,
                )
            for i, (lp, _n, _greedy) in zip(owner, scored):
                totals[i] += lp
        return totals

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        if not prompts:
            return []
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: must be positive, got {max_new_tokens}")
        # Leave room for the prompt: at most half the context goes to new tokens, and a
        # long prompt keeps its end (where the question is).
        new = min(max_new_tokens, self.max_length // 2)
        room = self.max_length - new
        encoded = []
        for p in prompts:
            ids = self._prefix() + self._encode(p)
            encoded.append((ids or [self._fallback_start])[-room:])
        stop_ids = [ids for s in stop if (ids := self._encode(s))]
        if self.eos_id is not None:
            stop_ids.append([self.eos_id])
        # Similar lengths together: a batch is padded to its longest prompt.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        out: list[str] = [""] * len(prompts)
        key = jax.random.key(seed)
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            key, sub = jax.random.split(key)
            with self._lock, self._on_mesh():
                new_ids = decode.generate(
                    self.model,
                    [encoded[i] for i in chunk],
                    max_new_tokens=new,
                    temperature=temperature,
                    top_p=top_p,
                    stop_sequences=stop_ids,
                    rng=sub,
                    min_rows=self._rows,
                )
            for i, ids in zip(chunk, new_ids):
                # decode.generate strips the stop sequence that ended a row, but an EOS
                # inside a multi-token stop's window could remain: cut at the first.
                if self.eos_id is not None and self.eos_id in ids:
                    ids = ids[: ids.index(self.eos_id)]
                # Token-level stops are an early exit only; the text is cut exactly here.
                out[i] = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=False), stop)
        return out
