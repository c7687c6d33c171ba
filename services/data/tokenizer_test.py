"""The byte-level BPE: exact round trips of real code, special tokens."""

import glob
import os
import sysconfig

import pytest

from services.data import tokenizer

STDLIB = sysconfig.get_paths()["stdlib"]


def read(path):
    with open(path, encoding="utf-8", newline="") as f:  # keep \r\n if any
        return f.read()


@pytest.fixture(scope="module")
def tok():
    train = [read(p) for p in sorted(glob.glob(os.path.join(STDLIB, "json", "*.py")))]
    return tokenizer.train(train, vocab_size=600)


def test_special_tokens(tok):
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    assert tok.vocab_size == 600
    # A literal "<eos>" in a document is text, not the end of the document.
    ids = tok.encode("x = '<eos>'  # <pad>\n")
    assert tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == "x = '<eos>'  # <pad>\n"


@pytest.mark.parametrize(
    "module", ["textwrap.py", "heapq.py", "email/_header_value_parser.py", "tabnanny.py"]
)
def test_real_code_round_trips_exactly(tok, module):
    text = read(os.path.join(STDLIB, module))
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "\tdef f():\r\n\t\treturn  1 \t\n",
        "    \n\n\n   trailing   ",
        "naïve café 🐍 日本語 \u00a0nbsp",
        "",
        "\x00\x01 bytes",
    ],
)
def test_whitespace_and_unicode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_save_load_and_batch(tok, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    again = tokenizer.load(path)
    texts = ["a = 1\n", "print('hi')\n"]
    assert again.encode_batch(texts) == tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert again.sha256 == tok.sha256


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer.train(["abc"], vocab_size=100)
