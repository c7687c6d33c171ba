"""LLM-as-a-judge: pairwise win rate of model A's answers over model B's.

Both models answer each prompt (greedy, stopping at end of document); the judge then
sees every pair twice, A's answer first and B's answer first, and a pair counts as a
win or a loss only when both orders agree (MT-Bench's rule against position bias),
otherwise as a tie; ties count half (metrics.win_rate). The interval is a seeded
bootstrap over prompts.

Verdicts follow FastChat's llm_judge (common.py run_judge_pair, show_result.py): the
judgment is searched for "[[A]]", then "[[B]]", then "[[C]]" (the first of those
present decides, wherever it stands); a judgment with none is an *error*, not a tie,
and a pair with an error in either order is dropped from the win rate and counted
(`Comparison.errors`). The judge may write 2,048 tokens, as FastChat allows GPT-4,
so its explanation does not cut the verdict off.

Judges (each maps (question, first answer, second answer) to "first", "second",
"tie" or "error"):
- `OpenAIJudge`: any OpenAI-compatible /v1/chat/completions endpoint, asked with
  MT-Bench's pairwise prompt and parsed as above (urllib only; the key comes from an
  environment variable).
- `LikelihoodJudge`: a local model prompted with a verdict template; it picks whichever
  of " A" and " B" it finds more likely as the next token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, Sequence

from libs import errors
from services.eval import metrics
from services.eval.lm import TextModel

FIRST, SECOND, TIE, ERROR = "first", "second", "tie", "error"
JUDGE_MAX_TOKENS = 2048  # FastChat's chat_completion_openai max_tokens for the judge
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

# How the compared base models are asked (they are not instruction-tuned).
ANSWER_TEMPLATE = (
    "Below is an instruction. Write a response that completes it.\n\n"
    "### Instruction:\n{prompt}\n\n### Response:\n"
)
ANSWER_STOP = ("\n### ", "\n\n\n")

# MT-Bench's pairwise judge prompt (lm-sys/FastChat judge_prompts.jsonl, "pair-v2").
JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user question displayed below. You should choose the assistant "
    "that follows the user's instructions and answers the user's question better. Your "
    "evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
    "creativity, and level of detail of their responses. Begin your evaluation by comparing "
    "the two responses and provide a short explanation. Avoid any position biases and ensure "
    "that the order in which the responses were presented does not influence your decision. "
    "Do not allow the length of the responses to influence your evaluation. Do not favor "
    "certain names of the assistants. Be as objective as possible. After providing your "
    'explanation, output your final verdict by strictly following this format: "[[A]]" if '
    'assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
JUDGE_USER = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{first}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n"
    "{second}\n[The End of Assistant B's Answer]"
)

LIKELIHOOD_TEMPLATE = (
    "Two answers to a question follow. Decide which answer is better.\n\n"
    "Question: {question}\n\nAnswer A: {first}\n\nAnswer B: {second}\n\n"
    "The better answer is Answer"
)


class Judge(Protocol):
    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """For each (question, first answer, second answer): FIRST, SECOND, TIE or ERROR."""
        ...


def parse_verdict(text: str) -> str:
    """FastChat's "[[A]]" output format: [[A]] before [[B]] before [[C]], else ERROR."""
    if "[[A]]" in text:
        return FIRST
    if "[[B]]" in text:
        return SECOND
    if "[[C]]" in text:
        return TIE
    return ERROR


@dataclasses.dataclass
class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat endpoint (base_url like .../v1)."""

    base_url: str
    model: str
    api_key: str = ""
    timeout_s: float = 120.0
    retries: int = 3
    parallelism: int = 4
    max_tokens: int = JUDGE_MAX_TOKENS

    @classmethod
    def from_env(cls, base_url: str, model: str, api_key_env: str = "") -> "OpenAIJudge":
        if not base_url:
            raise errors.InvalidArgument("judge.openai.base_url", "required")
        if not base_url.startswith(("http://", "https://")):
            raise errors.InvalidArgument(
                "judge.openai.base_url",
                f"must be an http(s) URL, got {base_url!r}",
            )
        if not model:
            raise errors.InvalidArgument("judge.openai.model", "required")
        key = ""
        if api_key_env:
            if api_key_env not in os.environ:
                raise errors.InvalidArgument(
                    "judge.openai.api_key_env",
                    f"environment variable {api_key_env!r} is not set",
                )
            key = os.environ[api_key_env]
        return cls(base_url=base_url, model=model, api_key=key)

    def _complete(self, question: str, first: str, second: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": JUDGE_SYSTEM},
                    {
                        "role": "user",
                        "content": JUDGE_USER.format(question=question, first=first, second=second),
                    },
                ],
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        # A local judge is reached directly, whatever proxy the environment names.
        host = urllib.parse.urlparse(url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        opener = urllib.request.build_opener(*handlers)
        delay = 1.0
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with opener.open(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                retriable = e.code == 429 or e.code >= 500
                if not retriable or attempt == self.retries:
                    raise errors.Unavailable(
                        "judge",
                        f"{url} answered HTTP {e.code}: "
                        f"{e.read()[:200].decode('utf-8', 'replace')}",
                    ) from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise errors.Unavailable("judge", f"cannot reach {url}: {e}") from e
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise errors.Unavailable("judge", f"{url} sent no chat completion: {e}") from e
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, self.parallelism)) as pool:
            texts = list(pool.map(lambda it: self._complete(*it), items))
        return [parse_verdict(t) for t in texts]


@dataclasses.dataclass
class LikelihoodJudge:
    """A local model as judge: the more likely of " A" / " B" after the template."""

    model: TextModel
    template: str = LIKELIHOOD_TEMPLATE
    # Answers are clipped so a long pair still leaves the question in the window.
    max_answer_chars: int = 1500

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        requests = []
        for question, first, second in items:
            context = self.template.format(
                question=question,
                first=first[: self.max_answer_chars],
                second=second[: self.max_answer_chars],
            )
            requests += [(context, " A"), (context, " B")]
        scored = self.model.loglikelihood(requests)
        verdicts = []
        for i in range(len(items)):
            a, b = scored[2 * i][0], scored[2 * i + 1][0]
            verdicts.append(TIE if a == b else FIRST if a > b else SECOND)
        return verdicts


@dataclasses.dataclass
class Comparison:
    win_rate: float
    wins: int
    losses: int
    ties: int
    num_prompts: int
    ci_low: float
    ci_high: float
    outcomes: list[str] = dataclasses.field(default_factory=list, repr=False)
    # Prompts dropped because the judge gave no verdict in one order or both.
    errors: int = 0


def answers(
    model: TextModel, prompts: Sequence[str], *, max_new_tokens: int, seed: int = 0
) -> list[str]:
    outs = model.generate(
        [ANSWER_TEMPLATE.format(prompt=p) for p in prompts],
        max_new_tokens=max_new_tokens,
        stop=ANSWER_STOP,
        temperature=0.0,
        seed=seed,
    )
    return [o.strip() for o in outs]


def judge_pairs(
    judge: Judge,
    questions: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    *,
    seed: int = 0,
    resamples: int = 1000,
) -> Comparison:
    """Win rate of the A answers over the B answers, each pair judged in both orders."""
    n = len(questions)
    if not (len(answers_a) == len(answers_b) == n):
        raise ValueError("answers: need one answer of each model per question")
    items = [(q, a, b) for q, a, b in zip(questions, answers_a, answers_b)]
    items += [(q, b, a) for q, a, b in zip(questions, answers_a, answers_b)]
    verdicts = judge.judge(items)
    to_model_a_first = {FIRST: "A", SECOND: "B", TIE: "tie"}
    to_model_b_first = {FIRST: "B", SECOND: "A", TIE: "tie"}
    outcomes, errors_count = [], 0
    for i in range(n):
        v_a_first, v_b_first = verdicts[i], verdicts[n + i]
        if ERROR in (v_a_first, v_b_first):
            errors_count += 1  # FastChat drops the pair rather than calling it a tie
            continue
        outcomes.append(
            metrics.pairwise_outcome(to_model_a_first[v_a_first], to_model_b_first[v_b_first])
        )
    lo, hi = metrics.bootstrap_interval(
        [metrics.outcome_score(o) for o in outcomes], seed=seed, resamples=resamples
    )
    return Comparison(
        win_rate=metrics.win_rate(outcomes),
        wins=outcomes.count(metrics.WIN),
        losses=outcomes.count(metrics.LOSS),
        ties=outcomes.count(metrics.TIE),
        num_prompts=n,
        ci_low=lo,
        ci_high=hi,
        outcomes=outcomes,
        errors=errors_count,
    )


def compare(
    model_a: TextModel,
    model_b: TextModel,
    prompts: Sequence[str],
    judge: Judge,
    *,
    max_new_tokens: int = 128,
    seed: int = 0,
) -> Comparison:
    """Both models answer `prompts`; the judge decides each pair in both orders."""
    answers_a = answers(model_a, prompts, max_new_tokens=max_new_tokens, seed=seed)
    answers_b = answers(model_b, prompts, max_new_tokens=max_new_tokens, seed=seed)
    return judge_pairs(judge, prompts, answers_a, answers_b, seed=seed)
