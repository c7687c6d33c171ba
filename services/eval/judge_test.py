"""Judged win rates against a real local OpenAI-compatible HTTP server, and a local judge."""

import http.server
import json
import re
import threading

import pytest

from libs import errors
from services.eval import judge as judge_lib, metrics, testing


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    """/v1/chat/completions: prefers the answer containing GOOD, or is position-biased."""

    def do_POST(self):  # noqa: N802  (http.server's naming)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((self.path, dict(self.headers), body))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        if server.fail_first > 0:
            server.fail_first -= 1
            self.send_error(503, "busy")
            return
        if server.status != 200:
            self.send_error(server.status, "nope")
            return
        user = body["messages"][-1]["content"]
        first = re.search(r"Assistant A's Answer\]\n(.*?)\n\[The End", user, re.S).group(1)
        second = re.search(r"Assistant B's Answer\]\n(.*?)\n\[The End", user, re.S).group(1)
        if server.mode == "biased":
            verdict = "[[A]]"
        elif server.mode == "garbled" and "GOOD four" in first + second:
            verdict = "A is better"  # no verdict tag: an error, as FastChat's
        elif ("GOOD" in first) != ("GOOD" in second):
            verdict = "[[A]]" if "GOOD" in first else "[[B]]"
        else:
            verdict = "[[C]]"
        payload = {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": f"Both are fine. Verdict: {verdict}",
                    },
                }
            ],
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests, server.mode, server.fail_first, server.status = [], "fair", 0, 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


class Answers:
    """A TextModel answering prompt i with answers[i % len]."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, *, max_new_tokens, stop=(), temperature=0.0, top_p=1.0, seed=0):
        return [self.answers[i % len(self.answers)] for i in range(len(prompts))]

    def loglikelihood(self, requests):
        raise AssertionError


QUESTIONS = ["How do I boil an egg?", "Name a colour.", "What is 2 + 2?", "Say hi."]


def test_parse_verdict_as_fastchat():
    assert judge_lib.parse_verdict("blah [[A]]") == judge_lib.FIRST
    # FastChat tests "[[A]]" in the judgment first, then "[[B]]", then "[[C]]".
    assert judge_lib.parse_verdict("[[A]] no wait [[B]]") == judge_lib.FIRST
    assert judge_lib.parse_verdict("[[B]] or [[A]]") == judge_lib.FIRST
    assert judge_lib.parse_verdict("[[C]] hmm [[B]]") == judge_lib.SECOND
    assert judge_lib.parse_verdict("[[C]]") == judge_lib.TIE
    # No verdict (or a garbled one) is an error, not a tie.
    assert judge_lib.parse_verdict("I cannot decide") == judge_lib.ERROR
    assert judge_lib.parse_verdict("[A]] [[a]] [[ B ]]") == judge_lib.ERROR


def test_missing_verdicts_are_dropped_and_counted(chat_server):
    chat_server.mode = "garbled"
    judge = judge_lib.OpenAIJudge(chat_server.base_url, "judge-1")
    model_a = Answers(["GOOD one", "GOOD two", "GOOD three", "GOOD four"])
    model_b = Answers(["meh", "meh", "meh", "GOOD too"])
    result = judge_lib.compare(model_a, model_b, QUESTIONS, judge, max_new_tokens=16)
    # The 4th prompt's verdicts carry no tag: dropped, not a tie; 3 wins of 3 judged.
    assert result.errors == 1
    assert (result.wins, result.losses, result.ties, result.num_prompts) == (3, 0, 0, 4)
    assert result.win_rate == 1.0
    # The judge may write a full explanation before its verdict (FastChat: 2,048).
    assert {b["max_tokens"] for _, _, b in chat_server.requests} == {2048}


def test_openai_judge_win_rate_over_http(chat_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    judge = judge_lib.OpenAIJudge.from_env(chat_server.base_url, "judge-1", "TEST_JUDGE_KEY")
    # A is better on 3 prompts; on the 4th both answers are equally good.
    model_a = Answers(["GOOD one", "GOOD two", "GOOD three", "GOOD four"])
    model_b = Answers(["meh", "meh", "meh", "GOOD too"])
    result = judge_lib.compare(model_a, model_b, QUESTIONS, judge, max_new_tokens=16)
    assert (result.wins, result.losses, result.ties, result.num_prompts) == (3, 0, 1, 4)
    assert result.win_rate == pytest.approx(3.5 / 4)
    assert result.ci_low <= result.win_rate <= result.ci_high
    assert len(chat_server.requests) == 8  # every pair in both orders
    path, headers, body = chat_server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge-1"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["messages"][0]["role"] == "system" and body["temperature"] == 0
    # Both orders really were shown: each answer of A appears first once and second once.
    firsts = [
        re.search(r"A's Answer\]\n(.*?)\n", b["messages"][1]["content"]).group(1)
        for _, _, b in chat_server.requests
    ]
    assert firsts.count("GOOD one") == 1 and firsts.count("meh") == 3


def test_a_position_biased_judge_cancels_out(chat_server):
    chat_server.mode = "biased"
    judge = judge_lib.OpenAIJudge(chat_server.base_url, "judge-1")
    result = judge_lib.compare(Answers(["GOOD"]), Answers(["bad"]), QUESTIONS, judge)
    assert (result.wins, result.losses, result.ties) == (0, 0, 4)
    assert result.win_rate == 0.5


def test_retries_then_errors_name_the_judge(chat_server):
    chat_server.fail_first = 1
    judge = judge_lib.OpenAIJudge(chat_server.base_url, "m", retries=2, parallelism=1)
    assert judge.judge([("q", "GOOD", "x")]) == [judge_lib.FIRST]
    chat_server.status = 400
    with pytest.raises(errors.Unavailable, match="HTTP 400") as info:
        judge.judge([("q", "a", "b")])
    assert info.value.field == "judge"
    dead = judge_lib.OpenAIJudge("http://127.0.0.1:9/v1", "m", retries=0)
    with pytest.raises(errors.Unavailable, match="cannot reach"):
        dead.judge([("q", "a", "b")])


def test_judge_configuration_errors_name_the_field(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(errors.InvalidArgument) as info:
        judge_lib.OpenAIJudge.from_env("http://x/v1", "m", "NOPE_KEY")
    assert info.value.field == "judge.openai.api_key_env"
    with pytest.raises(errors.InvalidArgument) as info:
        judge_lib.OpenAIJudge.from_env("ftp://x", "m")
    assert info.value.field == "judge.openai.base_url"
    with pytest.raises(errors.InvalidArgument) as info:
        judge_lib.OpenAIJudge.from_env("http://x/v1", "")
    assert info.value.field == "judge.openai.model"


class PrefersGood:
    """A judge model: ' A' is likelier when answer A says GOOD, ' B' when B does."""

    def loglikelihood(self, requests):
        out = []
        for context, continuation in requests:
            a = context.split("Answer A: ")[1].split("\n\nAnswer B: ")[0]
            good = "A" if "GOOD" in a else "B"
            out.append((-0.1 if continuation == " " + good else -2.0, False))
        return out


def test_likelihood_judge_in_both_orders():
    judge = judge_lib.LikelihoodJudge(PrefersGood())
    result = judge_lib.judge_pairs(judge, QUESTIONS[:2], ["GOOD", "meh"], ["meh", "GOOD"])
    assert result.outcomes == [metrics.WIN, metrics.LOSS]
    assert result.win_rate == 0.5


def test_likelihood_judge_on_a_random_tiny_model():
    lm = testing.tiny_language_model()
    result = judge_lib.compare(
        lm,
        testing.tiny_language_model(seed=1),
        QUESTIONS[:2],
        judge_lib.LikelihoodJudge(lm),
        max_new_tokens=8,
    )
    assert result.wins + result.losses + result.ties == result.num_prompts == 2
    assert 0.0 <= result.win_rate <= 1.0
