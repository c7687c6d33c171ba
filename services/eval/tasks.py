"""The task registry and the named suites: every evaluation task, defined once.

A `Task` says what the paper measures and how: its category (nl_reasoning,
world_knowledge, code), kind (multiple_choice, generation, code; see converters.py for
the file format of each), headline metric, where its data comes from (local files
under the benchmarks directory, and the Hugging Face dataset with the same converter
where the network allows), and its generation settings.

Loading goes raw rows -> converter -> one cached JSONL file in our task format ->
`datasets.load_dataset("json", data_files=...)`, whichever the source. A conversion is
cached under `cache_dir` keyed by the source files' sizes and mtimes and
`converters.FORMAT_VERSION`.

Every task says how it stands to lm-evaluation-harness (`Task.lm_eval`): the eight
multiple-choice tasks with local data agree with lm-eval's own configs (agreement.py,
agreement_test); the others say why they differ.

Tasks without data here: SciQ and StoryCloze are registered but *available* only when
their files exist under the benchmarks directory (`sciq/test.json`,
`storycloze/cloze_test_val__spring2016.csv`); suites skip unavailable tasks. QuAC is the
derived 1,000-turn generative subset, scored by token F1 against the gold span (it has
no choices, so no likelihood form; "CANNOTANSWER" is an answer like any other).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Callable, Iterator, Optional, Sequence

from libs import errors
from libs.benchmarks import benchmarks
from proto import eval_pb2, spelling
from services.eval import converters


def aggregate_name(aggregate: int) -> str:
    """An eval.proto Aggregate as results spell it: "nl_reasoning"."""
    return spelling.spelled(eval_pb2.Aggregate, aggregate)


# The task categories: the first three aggregates.
NL_REASONING = aggregate_name(eval_pb2.AGGREGATE_NL_REASONING)
WORLD_KNOWLEDGE = aggregate_name(eval_pb2.AGGREGATE_WORLD_KNOWLEDGE)
CODE = aggregate_name(eval_pb2.AGGREGATE_CODE)
CATEGORIES = (NL_REASONING, WORLD_KNOWLEDGE, CODE)

MULTIPLE_CHOICE = "multiple_choice"
GENERATION = "generation"
CODE_KIND = "code"

CACHE_DIR_ENV = "CODE_LAB_EVAL_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset whose rows the task's converter accepts."""

    path: str
    name: Optional[str]
    split: str


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    category: str
    kind: str
    metric: str  # headline: acc, acc_norm, exact_match, f1, pass@1
    read_local: Callable[[str], Iterator[dict]]
    local_files: tuple[str, ...]  # relative to the benchmarks dir ("" entries: none needed)
    convert: Callable[[dict, int], dict]
    num_examples: int  # examples in the local files (the benchmarks README's counts)
    hub: Optional[HubSource] = None
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    description: str = ""
    # How the task stands to lm-evaluation-harness's implementation of it: "agrees"
    # (agreement_test checks requests, log-likelihoods and accuracy against lm-eval's
    # own config on the same rows), or why we differ on purpose.
    lm_eval: str = ""

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"category: {self.category!r} is not one of {CATEGORIES}")
        if self.kind not in (MULTIPLE_CHOICE, GENERATION, CODE_KIND):
            raise ValueError(f"kind: unknown kind {self.kind!r}")
        if self.kind != MULTIPLE_CHOICE and self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: must be positive for {self.name}")

    def available(self, benchmarks_dir: str, source: str = "local") -> bool:
        """Whether the task has data: its local files, or a hub dataset for "hub"."""
        if source == "hub":
            return self.hub is not None
        return all(os.path.exists(os.path.join(benchmarks_dir, f)) for f in self.local_files)


_KNOWLEDGE_STOP = ("\n", ".", ",")  # lm-eval's TriviaQA / NQ-open `until`
_HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. 2021

_TASK_LIST = [
    Task(
        "arc_easy",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_arc_easy,
        ("arc_easy/ARC-Easy-Test.jsonl",),
        converters.convert_arc,
        2376,
        HubSource("allenai/ai2_arc", "ARC-Easy", "test"),
        description="ARC-Easy test",
        lm_eval="agrees (agreement_test)",
    ),
    Task(
        "boolq",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_boolq,
        ("boolq/val.jsonl",),
        converters.convert_boolq,
        3270,
        HubSource("aps/super_glue", "boolq", "validation"),
        description="BoolQ validation",
        lm_eval="agrees (agreement_test)",
    ),
    Task(
        "piqa",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_piqa,
        ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
        converters.convert_piqa,
        1838,
        HubSource("ybisk/piqa", None, "validation"),
        description="PIQA validation",
        lm_eval="agrees (agreement_test)",
    ),
    Task(
        "sciq",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_sciq,
        ("sciq/test.json",),
        converters.convert_sciq,
        1000,
        HubSource("allenai/sciq", None, "test"),
        description="SciQ test (no local data)",
        lm_eval="same prompt as lm-eval's sciq; no local data to check against",
    ),
    Task(
        "social_iqa",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_social_iqa,
        ("social_iqa/dev.jsonl", "social_iqa/dev-labels.lst"),
        converters.convert_social_iqa,
        1954,
        HubSource("allenai/social_i_qa", None, "validation"),
        description="Social IQa dev",
        lm_eval="agrees (agreement_test)",
    ),
    Task(
        "quac",
        NL_REASONING,
        GENERATION,
        "f1",
        converters.read_quac,
        ("quac/quac.jsonl",),
        converters.convert_quac,
        1000,
        None,
        max_new_tokens=48,
        stop=("\n",),
        description="QuAC, MosaicML's derived 1,000-turn generative subset; token F1",
        lm_eval="lm-eval has no QuAC task; this is MosaicML's generative subset, scored by SQuAD token F1",
    ),
    Task(
        "cb",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_cb,
        ("cb/val.jsonl",),
        converters.convert_cb,
        56,
        HubSource("aps/super_glue", "cb", "validation"),
        description="CommitmentBank validation",
        lm_eval="agrees (agreement_test)",
    ),
    Task(
        "copa",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_copa,
        ("copa/val.jsonl",),
        converters.convert_copa,
        100,
        HubSource("aps/super_glue", "copa", "validation"),
        description="COPA validation",
        lm_eval="agrees (agreement_test), including lm-eval's leading space before each choice",
    ),
    Task(
        "storycloze",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_storycloze,
        ("storycloze/cloze_test_val__spring2016.csv",),
        converters.convert_storycloze,
        1871,
        None,
        description="StoryCloze 2016 val (no local data)",
        lm_eval="same prompt as lm-eval's storycloze_2016; no local data to check against",
    ),
    Task(
        "hellaswag",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc_norm",
        converters.read_hellaswag,
        ("hellaswag/hellaswag_val_full.txt.bz2",),
        converters.convert_hellaswag,
        10042,
        HubSource("Rowan/hellaswag", None, "validation"),
        description="HellaSwag validation (derived text format)",
        lm_eval="agrees (agreement_test) on the local rows; the derived file lost the ctx_a/ctx_b split, which converters.split_hellaswag_query recovers before lm-eval's preprocessing",
    ),
    Task(
        "winogrande",
        NL_REASONING,
        MULTIPLE_CHOICE,
        "acc",
        converters.read_winogrande,
        ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"),
        converters.convert_winogrande,
        1267,
        HubSource("allenai/winogrande", "winogrande_xl", "validation"),
        description="WinoGrande 1.1 dev, partial scoring",
        lm_eval="agrees (agreement_test)",
    ),
    Task(
        "triviaqa",
        WORLD_KNOWLEDGE,
        GENERATION,
        "exact_match",
        converters.read_triviaqa,
        ("triviaqa/topics.dpr.trivia.test.txt",),
        converters.convert_triviaqa,
        11313,
        HubSource("mandarjoshi/trivia_qa", "unfiltered.nocontext", "validation"),
        max_new_tokens=32,
        stop=_KNOWLEDGE_STOP,
        description="TriviaQA unfiltered dev",
        lm_eval="lm-eval's triviaqa prompt and until; scored by SQuAD exact match over the aliases (lm-eval's exact_match after its own normalisation filters)",
    ),
    Task(
        "nq_open",
        WORLD_KNOWLEDGE,
        GENERATION,
        "exact_match",
        converters.read_nq_open,
        ("nq_open/NQ-open.dev.jsonl",),
        converters.convert_nq_open,
        3610,
        HubSource("google-research-datasets/nq_open", None, "validation"),
        max_new_tokens=32,
        stop=_KNOWLEDGE_STOP,
        description="NaturalQuestions-Open dev",
        lm_eval="lm-eval's nq_open prompt and until; scored by SQuAD exact match over the answers",
    ),
    Task(
        "humaneval",
        CODE,
        CODE_KIND,
        "pass@1",
        converters.read_humaneval,
        (),
        converters.convert_humaneval,
        164,
        HubSource("openai/openai_humaneval", None, "test"),
        max_new_tokens=384,
        stop=_HUMANEVAL_STOP,
        description="HumanEval (Python)",
        lm_eval="Chen et al.'s prompt and stop strings; pass@1 from the greedy completion, run in our sandbox rather than lm-eval's code_eval",
    ),
    Task(
        "mbpp",
        CODE,
        CODE_KIND,
        "pass@1",
        converters.read_mbpp,
        ("mbpp/mbpp.jsonl",),
        converters.convert_mbpp,
        500,
        HubSource("google-research-datasets/mbpp", "full", "test"),
        max_new_tokens=384,
        stop=("[DONE]",),
        description="MBPP test (task_id 11-510)",
        lm_eval="lm-eval's mbpp 3-shot prompt and [DONE] stop; pass@1 from the greedy completion in our sandbox",
    ),
]

TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named set of tasks with a default per-task example limit (0: all)."""

    name: str
    tasks: tuple[str, ...]
    limit: int = 0
    description: str = ""

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: suite {self.name!r} names unknown tasks {unknown}")


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(
            "smoke",
            ("copa", "winogrande", "triviaqa", "humaneval"),
            limit=4,
            description="a few examples of one task per kind, for tests",
        ),
        Suite(
            "tiny",
            tuple(TASKS),
            limit=50,
            description="every task with data, 50 examples each: the tiny CPU study",
        ),
        Suite("paper", tuple(TASKS), limit=0, description="every task with data, in full"),
    ]
}


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Open-ended prompts for judged pairwise comparisons (stand-ins for Dolly-200)."""

    name: str
    directory: str  # under the benchmarks dir, holding question.jsonl

    def load(self, benchmarks_dir: str, limit: int = 0) -> list[dict]:
        """[{"id", "category", "prompt"}]: each question's first turn."""
        rows = []
        for row in converters.read_fastchat_questions(benchmarks_dir, self.directory):
            rows.append(
                {
                    "id": str(row["question_id"]),
                    "category": row.get("category", ""),
                    "prompt": row["turns"][0],
                }
            )
        return rows[:limit] if limit > 0 else rows


PROMPT_SETS: dict[str, PromptSet] = {
    "mt_bench": PromptSet("mt_bench", "mt_bench"),
    "vicuna_bench": PromptSet("vicuna_bench", "vicuna_bench"),
}


# ---------------------------------------------------------------- resolution


def default_benchmarks_dir() -> str:
    """$CODE_LAB_BENCHMARKS, else the repository's third_party/benchmarks."""
    return benchmarks.default_dir()


def default_cache_dir() -> str:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return env
    return os.path.join(tempfile.gettempdir(), "code_lab_eval_cache")


def get_task(name: str, field: str = "tasks") -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise errors.InvalidArgument(
            field, f"unknown task {name!r}; known tasks: {sorted(TASKS)}"
        ) from None


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise errors.InvalidArgument(
            "suite", f"unknown suite {name!r}; known suites: {sorted(SUITES)}"
        ) from None


def available_tasks(benchmarks_dir: str, source: str = "local") -> list[Task]:
    return [t for t in TASKS.values() if t.available(benchmarks_dir, source)]


def resolve(
    suite: str = "",
    tasks: Sequence[str] = (),
    limit: int = 0,
    *,
    benchmarks_dir: str,
    source: str = "local",
) -> tuple[list[Task], int]:
    """(tasks, per-task limit) of a request: explicit `tasks` win over `suite`.

    Suites drop tasks with no data; an explicitly named task without data raises
    errors.NotFound. `limit` > 0 overrides the suite's default limit.
    """
    if limit < 0:
        raise errors.InvalidArgument("limit", f"must be >= 0, got {limit}")
    if tasks:
        seen, chosen = set(), []
        for name in tasks:
            task = get_task(name)
            if not task.available(benchmarks_dir, source):
                where = (
                    "on the Hugging Face hub"
                    if source == "hub"
                    else f"under {benchmarks_dir} (needs {', '.join(task.local_files)})"
                )
                raise errors.NotFound("tasks", f"no data for {name!r} {where}")
            if name not in seen:
                seen.add(name)
                chosen.append(task)
        return chosen, limit
    if not suite:
        raise errors.InvalidArgument("suite", "give a suite name or a list of tasks")
    s = get_suite(suite)
    chosen = [TASKS[n] for n in s.tasks if TASKS[n].available(benchmarks_dir, source)]
    return chosen, (limit if limit > 0 else s.limit)


# ---------------------------------------------------------------- loading


def _fingerprint(task: Task, benchmarks_dir: str, source: str) -> str:
    parts = [task.name, source, str(converters.FORMAT_VERSION)]
    paths = [os.path.join(benchmarks_dir, f) for f in task.local_files]
    if task.name == "humaneval":
        paths.append(converters.humaneval_path())
    if source == "local":
        for p in paths:
            st = os.stat(p)
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _raw_rows(task: Task, benchmarks_dir: str, source: str) -> Iterator[dict]:
    if source == "local":
        if not task.available(benchmarks_dir):
            raise errors.NotFound("tasks", f"no data for {task.name!r} under {benchmarks_dir}")
        return task.read_local(benchmarks_dir)
    if source == "hub":
        if task.hub is None:
            raise errors.NotFound("tasks", f"{task.name!r} has no Hugging Face source")
        import datasets

        return iter(datasets.load_dataset(task.hub.path, task.hub.name, split=task.hub.split))
    raise ValueError(f"source: must be 'local' or 'hub', got {source!r}")


def converted_path(
    task: Task, *, benchmarks_dir: str, cache_dir: str, source: str = "local"
) -> str:
    """The task's examples in our format as a JSONL file, converting once if needed.
    Local files are checked against their provenance note's checksums first."""
    if source == "local":
        for f in task.local_files:
            if f:
                path = os.path.join(benchmarks_dir, f)
                benchmarks.verify_file(os.path.dirname(path), os.path.basename(path))
    out_dir = os.path.join(cache_dir, "converted")
    path = os.path.join(
        out_dir, f"{task.name}-{source}-{_fingerprint(task, benchmarks_dir, source)}.jsonl"
    )
    if os.path.exists(path):
        return path
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for i, raw in enumerate(_raw_rows(task, benchmarks_dir, source)):
                f.write(json.dumps(task.convert(dict(raw), i), ensure_ascii=False) + "\n")
        os.replace(tmp, path)  # atomic: concurrent loaders never see half a file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_examples(
    task: Task, *, benchmarks_dir: str, cache_dir: str, limit: int = 0, source: str = "local"
):
    """The task's examples (a `datasets.Dataset` in our format), the first `limit`."""
    import datasets

    datasets.disable_progress_bars()
    path = converted_path(task, benchmarks_dir=benchmarks_dir, cache_dir=cache_dir, source=source)
    ds = datasets.load_dataset(
        "json", data_files=path, split="train", cache_dir=os.path.join(cache_dir, "hf")
    )
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    return ds
