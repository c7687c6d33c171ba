"""The registry and every converter against the real benchmark files."""

import bz2
import collections
import os

import pytest

from libs import errors
from services.eval import converters, tasks

ROOT = tasks.default_benchmarks_dir()

# The benchmarks README's counts.
README_COUNTS = {
    "arc_easy": 2376,
    "boolq": 3270,
    "piqa": 1838,
    "social_iqa": 1954,
    "quac": 1000,
    "cb": 56,
    "copa": 100,
    "hellaswag": 10042,
    "winogrande": 1267,
    "triviaqa": 11313,
    "nq_open": 3610,
    "humaneval": 164,
    "mbpp": 500,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def loaded(cache_dir):
    return {
        name: tasks.load_examples(
            tasks.TASKS[name], benchmarks_dir=ROOT, cache_dir=cache_dir
        ).to_list()
        for name in README_COUNTS
    }


def test_benchmarks_dir_is_found():
    assert os.path.isfile(os.path.join(ROOT, "README.md")), ROOT


def test_available_tasks_are_those_with_data():
    names = {t.name for t in tasks.available_tasks(ROOT)}
    assert names == set(README_COUNTS)  # SciQ and StoryCloze have no data here
    assert {"sciq", "storycloze"} <= set(tasks.TASKS)


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_converter_counts_match_the_readme(loaded, name):
    assert len(loaded[name]) == README_COUNTS[name] == tasks.TASKS[name].num_examples
    assert len({ex["id"] for ex in loaded[name]}) == README_COUNTS[name]  # ids unique


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_rows_follow_the_format_of_their_kind(loaded, name):
    kind = tasks.TASKS[name].kind
    for ex in loaded[name]:
        if kind == tasks.MULTIPLE_CHOICE:
            assert 0 <= ex["gold"] < len(ex["choices"])
            if ex.get("contexts"):
                assert len(ex["contexts"]) == len(ex["choices"]) and ex["continuation"]
            else:
                assert ex["context"] and all(isinstance(c, str) for c in ex["choices"])
        elif kind == tasks.GENERATION:
            assert ex["prompt"] and ex["question"] and ex["answers"]
        else:
            assert ex["prompt"] and ex["tests"] and ex["entry_point"]
            assert ex["canonical_solution"]


def test_multiple_choice_conversions(loaded):
    arc = loaded["arc_easy"][0]
    assert arc["context"].startswith("Question: Which statement best explains why photosynthesis")
    assert arc["context"].endswith("\nAnswer:")
    assert arc["choices"][arc["gold"]] == (
        "Sunlight is the source of energy for nearly all ecosystems."
    )
    boolq = loaded["boolq"][0]
    assert boolq["choices"] == ["no", "yes"] and boolq["gold"] == 0  # label "false"
    assert collections.Counter(ex["gold"] for ex in loaded["boolq"]) == {1: 2033, 0: 1237}
    cb = loaded["cb"][0]
    assert cb["context"].endswith(
        "Question: Valence was helping. True, False, or Neither?\nAnswer:"
    )
    assert cb["choices"][cb["gold"]] == "False"  # contradiction
    copa = loaded["copa"][0]
    assert copa["context"] == "The man turned on the faucet therefore"
    # lm-eval's COPA choices carry a leading space (scored after the " " delimiter).
    assert copa["choices"] == [" the toilet filled with water.", " water flowed from the spout."]
    assert copa["gold"] == 1
    piqa = loaded["piqa"]
    assert [ex["gold"] for ex in piqa[:3]] == [0, 1, 1]  # valid-labels.lst
    siqa = loaded["social_iqa"][0]
    assert siqa["context"] == (
        "Q: Tracy didn't go home that evening and resisted Riley's "
        "attacks. What does Tracy need to do before this?\nA:"
    )
    assert siqa["gold"] == 2  # label 3 -> answerC


def test_hellaswag_reads_the_derived_text(loaded):
    rows = loaded["hellaswag"]
    # lm-eval's context: ctx_a + " " + ctx_b.capitalize() ("he" -> "He").
    assert rows[0]["context"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert rows[0]["choices"][rows[0]["gold"]] == "starts pulling up roofing on a roof."
    assert all(len(ex["choices"]) == 4 for ex in rows)
    # hellaswag/SOURCE.md's label distribution.
    assert collections.Counter(ex["gold"] for ex in rows) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}


def _query(row):
    # The derived file's query line, as written.
    return row["activity_label"] + ": " + (row["ctx_a"] + " " + row["ctx_b"]).strip()


def test_hellaswag_contexts_are_lm_evals(loaded):
    rows = loaded["hellaswag"]
    raw = list(converters.read_hellaswag(ROOT))
    lines = bz2.open(os.path.join(ROOT, "hellaswag", "hellaswag_val_full.txt.bz2"), "rt").read()
    queries = lines.split("\n")[0::6][: len(raw)]
    # Split into the hub's fields and joined back, every query is what the file says.
    assert [_query(r) for r in raw] == queries
    changed = [i for i, (q, ex) in enumerate(zip(queries, rows)) if q != ex["context"]]
    # The 3,236 contexts ending mid-sentence, whose ctx_b the derived file left
    # uncapitalised, and 2 whose bracketed link text lm-eval's preprocess drops.
    assert len(changed) == 3238
    assert sum(queries[i].lower() != rows[i]["context"].lower() for i in changed) == 2
    assert sum(bool(r["ctx_b"]) for r in raw) == 3243  # 7 already capitalised
    assert rows[1]["context"] == (
        "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady"
    )
    assert converters.split_hellaswag_query("X: He sat. the man hands Bob") == {
        "activity_label": "X",
        "ctx_a": "He sat.",
        "ctx_b": "the man hands Bob",
    }
    # str.capitalize as lm-eval applies it: the rest of ctx_b in lower case.
    row = {**converters.split_hellaswag_query("X: He sat. the man hands Bob"), "label": "0"}
    assert converters.convert_hellaswag({**row, "endings": ["e"] * 4}, 0)["context"] == (
        "X: He sat. The man hands bob"
    )
    # A context that ends a sentence had an empty ctx_b.
    assert converters.split_hellaswag_query("X: A man sits. He stands.")["ctx_b"] == ""
    # Local and hub rows of the same example give the same context.
    hub_row = {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": raw[0]["endings"],
        "label": "3",
    }
    assert converters.convert_hellaswag(hub_row, 0)["context"] == rows[0]["context"]


def test_winogrande_partial_scoring(loaded):
    ex = loaded["winogrande"][0]
    assert ex["contexts"] == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert ex["continuation"] == "always got the easier cases."
    assert ex["gold"] == 1


def test_knowledge_conversions(loaded):
    tqa = loaded["triviaqa"]
    assert tqa[0]["question"] == "Who was the man behind The Chipmunks?"
    assert tqa[0]["prompt"] == "Question: Who was the man behind The Chipmunks?\nAnswer:"
    assert tqa[0]["answers"] == ["David Seville"]
    assert "Sunset Boulevard" in tqa[2]["answers"]
    nq = loaded["nq_open"][0]
    assert nq["prompt"] == "Q: when was the last time anyone was on the moon?\nA:"
    assert nq["answers"] == ["14 December 1972 UTC", "December 1972"]
    quac = loaded["quac"]
    assert sum(ex["answers"][0] == "CANNOTANSWER" for ex in quac) == 238  # quac/SOURCE.md
    assert quac[0]["prompt"].endswith("\nAnswer:")


def test_code_conversions(loaded):
    he = loaded["humaneval"][0]
    assert he["id"] == "HumanEval/0" and he["code_prefix"] == he["prompt"]
    assert he["tests"].rstrip().endswith("check(has_close_elements)")
    mbpp = loaded["mbpp"]
    assert [ex["id"] for ex in mbpp[:1] + mbpp[-1:]] == ["mbpp/11", "mbpp/510"]
    assert mbpp[0]["code_prefix"] == "" and mbpp[0]["entry_point"] == "remove_Occ"
    assert mbpp[0]["prompt"].endswith('assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n')


def test_mbpp_is_three_shot_as_austin_et_al():
    # The shots are task ids 2, 3, 4 exactly as in the benchmark file.
    rows = {
        r["task_id"]: r
        for r in converters._jsonl(os.path.join(ROOT, "mbpp", "mbpp.jsonl"))
        if r["task_id"] in (2, 3, 4)
    }
    for shot in converters.MBPP_FEWSHOT:
        row = rows[shot["task_id"]]
        assert (shot["text"], shot["code"], shot["test_list"]) == (
            row["text"],
            row["code"],
            row["test_list"],
        )
    problem = next(converters.read_mbpp(ROOT))
    prompt = converters.convert_mbpp(problem, 0)["prompt"]
    # lm-eval's mbpp: doc_to_text + code + "\n[DONE]" per shot, "\n\n" between.
    blocks = prompt.split("\n[DONE]\n\n")
    assert len(blocks) == 4
    assert blocks[0].startswith(
        "You are an expert Python programmer, and here is your task: Write a function to "
        "find the similar elements from the given two tuple lists. Your code should pass "
        "these tests:\n\nassert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    )
    assert blocks[0].endswith("[BEGIN]\n" + rows[2]["code"])
    assert blocks[2].endswith("[BEGIN]\n" + rows[4]["code"])
    assert blocks[3] == converters.mbpp_question(problem)
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3


def test_suites_and_resolution():
    smoke, limit = tasks.resolve("smoke", benchmarks_dir=ROOT)
    assert [t.name for t in smoke] == ["copa", "winogrande", "triviaqa", "humaneval"]
    assert limit == 4
    tiny, limit = tasks.resolve("tiny", limit=7, benchmarks_dir=ROOT)
    assert {t.name for t in tiny} == set(README_COUNTS) and limit == 7
    explicit, limit = tasks.resolve("smoke", ["cb", "cb", "mbpp"], benchmarks_dir=ROOT)
    assert [t.name for t in explicit] == ["cb", "mbpp"] and limit == 0


@pytest.mark.parametrize(
    "suite,task_names,limit,field,error",
    [
        ("nope", [], 0, "suite", errors.InvalidArgument),
        ("", [], 0, "suite", errors.InvalidArgument),
        ("", ["arc_easy", "nope"], 0, "tasks", errors.InvalidArgument),
        ("", ["sciq"], 0, "tasks", errors.NotFound),
        ("tiny", [], -1, "limit", errors.InvalidArgument),
    ],
)
def test_bad_requests_name_the_field(suite, task_names, limit, field, error):
    with pytest.raises(error) as info:
        tasks.resolve(suite, task_names, limit, benchmarks_dir=ROOT)
    assert info.value.field == field and str(info.value).startswith(field + ":")


def test_conversion_is_cached_and_limit_takes_the_first(cache_dir):
    task = tasks.TASKS["cb"]
    path = tasks.converted_path(task, benchmarks_dir=ROOT, cache_dir=cache_dir)
    mtime = os.stat(path).st_mtime_ns
    assert tasks.converted_path(task, benchmarks_dir=ROOT, cache_dir=cache_dir) == path
    assert os.stat(path).st_mtime_ns == mtime
    ds = tasks.load_examples(task, benchmarks_dir=ROOT, cache_dir=cache_dir, limit=5)
    assert [ex["id"] for ex in ds] == ["0", "1", "2", "3", "4"]


def test_prompt_sets():
    mt = tasks.PROMPT_SETS["mt_bench"].load(ROOT)
    vicuna = tasks.PROMPT_SETS["vicuna_bench"].load(ROOT, limit=3)
    assert len(mt) == 80 and len(vicuna) == 3
    assert vicuna[0]["prompt"] == "How can I improve my time management skills?"


def test_hub_rows_convert_like_local_rows():
    # The Hugging Face schemas the converters accept (no network needed here).
    hub_arc = {
        "id": "x",
        "question": "Q?",
        "choices": {"text": ["a", "b"], "label": ["1", "2"]},
        "answerKey": "2",
    }
    assert converters.convert_arc(hub_arc, 0)["gold"] == 1
    hub_hellaswag = {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man",
        "ctx_b": "writes",
        "endings": ["a [title] b", "c", "d", "e"],
        "label": "3",
    }
    row = converters.convert_hellaswag(hub_hellaswag, 0)
    assert row["context"] == "Removing ice from car: Then, the man Writes"
    assert row["choices"][0] == "a. b" and row["gold"] == 3
    hub_tqa = {
        "question": "Q",
        "question_id": "tc_1",
        "answer": {"value": "Paris", "aliases": ["Paris", "Paree"]},
    }
    assert converters.convert_triviaqa(hub_tqa, 0)["answers"] == ["Paris", "Paree"]


def test_every_task_says_how_it_stands_to_lm_eval():
    from services.eval import lm_eval_harness

    for task in tasks.TASKS.values():
        assert task.lm_eval, task.name
    agreeing = {t.name for t in tasks.TASKS.values() if t.lm_eval.startswith("agrees")}
    assert agreeing == set(lm_eval_harness.LM_EVAL_TASKS)
