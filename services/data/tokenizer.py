"""The corpus tokenizer: a byte-level BPE trained offline with HF `tokenizers`.

Byte-level (GPT-2 style) with no normaliser and no prefix space, so every
string, code with its exact whitespace included, decodes back to itself.
Two special tokens: <pad> (id 0) and <eos> (id 1, appended to every
document). Text is encoded with `encode_special_tokens`, so a literal
"<eos>" inside a document is ordinary text and the only EOS ids in the
corpus are the document ends that the mixture reader relies on.
The paper's tokenizer has 256k entries; the default corpus uses 8192.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Sequence

PAD = "<pad>"
EOS = "<eos>"
SPECIAL_TOKENS = (PAD, EOS)
PAPER_VOCAB_SIZE = 256_000
DEFAULT_VOCAB_SIZE = 8192


@dataclasses.dataclass
class Tokenizer:
    """A trained tokenizer and its special ids."""

    hf: "tokenizers.Tokenizer"  # noqa: F821

    def __post_init__(self):
        self.hf.encode_special_tokens = True
        self.pad_id = self.hf.token_to_id(PAD)
        self.eos_id = self.hf.token_to_id(EOS)
        if self.pad_id is None or self.eos_id is None:
            raise ValueError(f"tokenizer lacks the special tokens {SPECIAL_TOKENS}")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return self.hf.to_str()

    def save(self, path: str) -> None:
        self.hf.save(path)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def load(path: str) -> Tokenizer:
    import tokenizers

    return Tokenizer(tokenizers.Tokenizer.from_file(path))


def train(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, *, min_frequency: int = 2
) -> Tokenizer:
    """Trains a byte-level BPE of `vocab_size` entries (special tokens and the
    256 byte symbols included) on `texts`."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
        )
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    return Tokenizer(hf)
