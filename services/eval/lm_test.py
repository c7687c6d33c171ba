"""LanguageModel on a random tiny model: tokenisation, scores against the logits, decoding."""

import numpy as np
import pytest

from services.eval import lm as lm_lib
from services.eval import testing


@pytest.fixture(scope="module")
def lm():
    return testing.tiny_language_model(batch_size=4)


def test_cut_at_stop():
    assert lm_lib.cut_at_stop("Paris.\nQuestion", ["\n", "."]) == "Paris"
    assert lm_lib.cut_at_stop("no stop", ["\n"]) == "no stop"
    assert lm_lib.cut_at_stop("x", []) == "x"


def test_encode_pair_splits_like_lm_eval(lm):
    ctx, cont = lm.encode_pair("Question: why?\nAnswer:", " Because")
    whole = lm._encode("Question: why?\nAnswer: Because")
    assert ctx + cont == whole
    # A trailing space moves to the continuation, where the BPE would put it.
    ctx2, cont2 = lm.encode_pair("Question: why?\nAnswer: ", "Because")
    assert (ctx2, cont2) == (ctx, cont)


def _reference_logprob(lm, ctx, cont):
    tokens = np.asarray([ctx + cont], np.int32)
    logits = np.asarray(lm.model(tokens), np.float64)[0]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    total, greedy = 0.0, True
    for i, tok in enumerate(cont):
        pos = len(ctx) - 1 + i
        total += logp[pos, tok]
        greedy &= int(np.argmax(logits[pos])) == tok
    return total, greedy


def test_loglikelihood_matches_the_logits(lm):
    requests = [
        ("The man turned on the faucet therefore", " water flowed from the spout."),
        ("Q: Who was the man behind The Chipmunks?\nA:", " David Seville"),
        ("def add(a, b):\n", "    return a + b\n"),
    ]
    got = lm.loglikelihood(requests)
    for (context, continuation), (lp, greedy) in zip(requests, got):
        ctx, cont = lm.encode_pair(context, continuation)
        want_lp, want_greedy = _reference_logprob(lm, ctx, cont)
        assert lp == pytest.approx(want_lp, rel=1e-4, abs=1e-3)
        assert greedy == want_greedy
        assert lp < 0
    assert lm.loglikelihood([("abc", "")]) == [(0.0, True)]
    assert lm.loglikelihood([]) == []


def test_greedy_generation_is_what_scoring_calls_greedy(lm):
    prompt = "Question: Which statement best explains why"
    ctx = lm._encode(prompt)
    from libs.model import decode

    new_ids = decode.generate(lm.model, [ctx], max_new_tokens=6)[0]
    text = lm.tokenizer.decode(new_ids)
    assert lm.generate([prompt], max_new_tokens=6) == [text]
    # Score exactly those tokens: they are the argmax at every step.
    scores = decode.score_continuations(lm.model, [ctx], [new_ids])
    assert scores[0][2] is True


def test_generate_cuts_at_stop_strings_and_keeps_order(lm):
    prompts = ["a", "Question: a much longer prompt than the first one\nAnswer:", "def f():"]
    free = lm.generate(prompts, max_new_tokens=12)
    assert len(free) == 3
    for text in free:
        assert isinstance(text, str)
    # Whatever a random model writes, the stop string never survives in the output.
    stop = [free[1][2:4]] if len(free[1]) >= 4 else ["\n"]
    cut = lm.generate(prompts, max_new_tokens=12, stop=stop)
    for full, short in zip(free, cut):
        assert stop[0] not in short and full.startswith(short)


def test_sampling_depends_on_the_seed(lm):
    prompt = ["The man turned on the faucet"] * 4
    a = lm.generate(prompt, max_new_tokens=8, temperature=1.0, seed=1)
    b = lm.generate(prompt, max_new_tokens=8, temperature=1.0, seed=1)
    c = lm.generate(prompt, max_new_tokens=8, temperature=1.0, seed=2)
    assert a == b and a != c


def test_long_prompts_are_truncated_from_the_left(lm):
    long_prompt = "word " * 2000 + "Answer:"
    out = lm.generate([long_prompt], max_new_tokens=4)
    assert len(out) == 1
    lp = lm.loglikelihood([(long_prompt, " yes")])
    assert np.isfinite(lp[0][0])


def test_vocabulary_mismatch_is_refused():
    tok = testing.train_tokenizer()
    model = testing.tiny_model(vocab_size=300)
    with pytest.raises(ValueError, match="tokenizer"):
        lm_lib.LanguageModel(model, tok)


def test_the_end_of_document_token_is_the_tokenizers():
    tok = testing.train_tokenizer()
    assert lm_lib.eos_token_id(tok) == tok.token_to_id("<|endoftext|>")
    lm = lm_lib.LanguageModel(testing.tiny_model(tok.get_vocab_size()), tok)
    assert lm.eos_id == tok.token_to_id("<|endoftext|>")
    assert lm_lib.LanguageModel(lm.model, tok, eos_id=-1).eos_id is None


def test_generation_stops_at_the_end_of_document_token(lm):
    from libs.model import decode

    prompt = "Question: Which statement best explains why"
    free = decode.generate(lm.model, [lm._encode(prompt)], max_new_tokens=10)[0]
    # Whatever token this random model writes third, call it the end of document: the
    # answer is what came before it, never the EOS and the "next document" after it.
    eos = free[2]
    cut = free.index(eos)
    as_eos = lm_lib.LanguageModel(lm.model, lm.tokenizer, batch_size=4, eos_id=eos)
    out = as_eos.generate([prompt, prompt + " now"], max_new_tokens=10)
    assert out[0] == lm.tokenizer.decode(free[:cut])
    assert len(free[:cut]) < len(free)  # there was text after the EOS to leave out
