"""Each recipe of services/data/recipes/ reads files written in its
dataset's own schema and layout (the hub paths pointed at local copies),
keeping and dropping what it says; paper.json names every source the
studies' mixtures weigh, and its sources share no document."""

import glob
import json
import os
import re
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from services.data import corpus, filters, pipeline, sources

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPES = os.path.join(HERE, "recipes")
SPECS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "studies", "specs")
SETS = (
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaWikipedia",
    "RedPajamaBook",
    "RedPajamaArXiv",
    "RedPajamaGithub",
    "RedPajamaStackExchange",
)
HIGH_QUALITY = ("RedPajamaWikipedia", "RedPajamaBook", "RedPajamaArXiv")
COMMITS = [
    {
        "commit": "0c17311f7fd511f5dae8f8e4acc2dce1a2de3cf5",
        "old_file": "main.py",
        "new_file": "main.py",
        "old_contents": "x = 1\n",
        "new_contents": "x = 2\n",
        "subject": "Set x to 2",
        "message": "Set x to 2\n",
        "lang": "Python",
        "license": "mit",
        "repos": "someone/something",
    },
    {
        "commit": "1d28422",
        "old_file": "",
        "new_file": "go.go",
        "old_contents": "",  # a new file
        "new_contents": "package main\n",
        "subject": "Add go.go",
        "message": "Add go.go",
        "lang": "Go",
        "license": "apache-2.0",
        "repos": "someone/else",
    },
]


def _prose(tag: str) -> str:
    return f"{tag}: " + " ".join(
        ["the river runs to the sea and that is what rivers have with them"] * 6
    )


def _code(tag: str) -> str:
    return f"# {tag}\ndef add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Local copies of the datasets' files, in their own schemas and layouts."""
    root = tmp_path_factory.mktemp("hub")
    # SlimPajama-627B: train/chunkN/example_train_K.jsonl.zst, {"text", "meta": {"redpajama_set_name"}}.
    for chunk in (1, 10):
        path = (
            root / "cerebras/SlimPajama-627B/train" / f"chunk{chunk}" / "example_train_0.jsonl.zst"
        )
        path.parent.mkdir(parents=True)
        lines = "".join(
            json.dumps({"text": _prose(f"{name} {chunk}"), "meta": {"redpajama_set_name": name}})
            + "\n"
            for name in SETS
        )
        path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    # StarCoderData: <folder>/train-NNNNN-of-NNNNN.parquet with these columns.
    files = {
        "python/train-00000-of-00002": _code("python 0"),
        "python/train-00001-of-00002": _code("python 1"),
        "go/train-00000-of-00001": _code("go"),
        "lua/train-00000-of-00001": "x" * 2000 + "\n",  # a line over The Stack's limit
        "markdown/train-00000-of-00001": "# markdown\n\nSome *text* and a [link](http://a.b).\n",
        "html/train-00000-of-00001": "<html><body><p>html</p></body></html>\n",
        "git-commits-cleaned/train-00000-of-00055": (
            "<commit_before>x = 1\n<commit_msg>git-commits-cleaned fix\n<commit_after>x = 2\n"
        ),
        "jupyter-scripts-dedup-filtered/train-00000-of-00001": _code("jupyter-scripts"),
        "jupyter-structured-clean-dedup/train-00000-of-00001": _code("jupyter-structured"),
    }
    for name, content in files.items():
        path = root / "bigcode/starcoderdata" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "max_stars_repo_path": [f"src/{name}.txt"],
                "max_stars_repo_name": ["someone/something"],
                "max_stars_count": [3],
                "id": ["1"],
                "content": [content],
            }
        )
        pq.write_table(table, path)
    # CommitPackFT: data/<language>/data.jsonl.
    for row in COMMITS:
        path = root / "bigcode/commitpackft/data" / row["lang"].lower() / "data.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(row) + "\n")
    return root


def _recipe(name: str) -> dict:
    with open(os.path.join(RECIPES, name)) as f:
        return json.load(f)


def _load(name: str, hub) -> list[sources.SourceSpec]:
    """The recipe with hf://datasets/ replaced by the local copy's root, each
    pattern kept only where the copy has files for it (the recipe names more
    languages than the copy holds)."""
    out = []
    for spec in sources.load_spec_file(os.path.join(RECIPES, name)):
        inputs = []
        for inp in spec.inputs:
            files = tuple(p.replace("hf://datasets/", f"{hub}/") for p in inp.data_files)
            found = tuple(f for f in files if pipeline.expand_files(f))
            inputs.append(
                sources.Input(**{**inp.__dict__, "data_files": found, "missing_ok": True})
            )
        out.append(sources.SourceSpec(**{**spec.__dict__, "inputs": tuple(inputs)}))
    return out


def _by_name(specs) -> dict[str, sources.SourceSpec]:
    return {s.name: s for s in specs}


def _kept(spec) -> list[str]:
    rules = filters.Filters.from_json(spec.filters)
    return [t for t in sources.iter_source(spec) if rules.check(t) is None]


def _tags(spec) -> set[str]:
    return {t.split("\n")[0].split(":")[0].lstrip("# ") for t in _kept(spec)}


def test_text_is_slimpajama_without_github_stackexchange_and_the_cooldown_share(hub):
    (text,) = _load("text.json", hub)
    assert _tags(text) == {f"{s} 1" for s in SETS[:5]} | {
        "RedPajamaCommonCrawl 10",
        "RedPajamaC4 10",
    }


def test_code_is_starcoderdata_languages_under_the_stack_rules(hub):
    (code,) = _load("code.json", hub)
    assert len(list(sources.iter_source(code))) == 3  # python 0 is the cooldown's
    assert _tags(code) == {"python 1", "go"}  # lua's 2,000-character line filtered out
    (recipe,) = sources.load_spec_file(os.path.join(RECIPES, "code.json"))
    assert len({p.split("/")[5] for p in recipe.inputs[0].data_files}) == 25


def test_markup_is_starcoderdata_markup_folders(hub):
    (markup,) = _load("markup.json", hub)
    assert sorted(t.split("\n")[0] for t in _kept(markup)) == [
        "# markdown",
        "<html><body><p>html</p></body></html>",
    ]


def test_code_adjacent_is_commits_notebooks_and_stackexchange(hub):
    (adjacent,) = _load("code_adjacent.json", hub)
    assert "<commit_msg>git-commits-cleaned fix" in _kept(adjacent)[0]
    assert _tags(adjacent) == {
        "<commit_before>x = 1",
        "jupyter-scripts",
        "jupyter-structured",
        "RedPajamaStackExchange 1",
        "RedPajamaStackExchange 10",
    }


def test_commitpackft_commits_are_the_file_before_the_message_and_the_file_after(hub):
    (adjacent,) = _load("code_adjacent_commitpackft.json", hub)
    commits = [d for d in sources.iter_documents(adjacent.inputs[0])]
    assert sorted(commits) == sorted(
        [
            "main.py\nx = 1\n\n\nCommit message: Set x to 2\n\n\nmain.py\nx = 2\n",
            "\n\n\nCommit message: Add go.go\n\ngo.go\npackage main\n",
        ]
    )
    assert [i.data_files for i in adjacent.inputs[1:]] == [
        i.data_files for i in _load("code_adjacent.json", hub)[0].inputs[1:]
    ]


def test_cooldown_is_the_held_out_high_quality_text_and_python(hub):
    by = _by_name(_load("cooldown.json", hub))
    assert _tags(by["cooldown"]) == {f"{s} 10" for s in HIGH_QUALITY}
    assert _tags(by["cooldown_code"]) == {"python 0"}


def test_paper_names_every_source_the_studies_weigh_and_no_document_twice(hub):
    specs = _load("paper.json", hub)
    weighed = set()
    for path in glob.glob(os.path.join(SPECS, "*.textproto")):
        with open(path) as f:
            weighed |= set(re.findall(r'source: "(\w+)"', f.read()))
    assert weighed and weighed <= {s.name for s in specs}
    assert {s.kind for s in specs} == set(sources.KINDS)
    docs = [
        d for s in specs if s.name != "synthetic_code" for d in sources.iter_source(s)
    ]  # the synthetic reader runs the sandbox; synthetic_test covers it
    assert len(docs) == len(set(docs))
    # Every document of the copies is read, but SlimPajama's GitHub part (and
    # CommitPackFT's, which the alternative code_adjacent recipe reads).
    assert len(docs) == 2 * 6 + 9


def _fields(inp: sources.Input) -> set[str]:
    used = {key for key in inp.where}
    if inp.template:
        used |= {f for _, f, _, _ in string.Formatter().parse(inp.template) if f}
    elif not inp.reader:
        used.add(inp.text_field)
    return used


def test_every_recipe_records_its_dataset_columns_terms_and_filters():
    for name in sorted(os.listdir(RECIPES)):
        if not name.endswith(".json") or "include" in _recipe(name):
            continue
        about = _recipe(name)["about"]
        for spec in sources.load_spec_file(os.path.join(RECIPES, name)):
            notes = about[spec.name]
            assert notes["paper"], (name, spec.name)
            per_input = notes.get("inputs") or [notes] * len(spec.inputs)
            assert len(per_input) == len(spec.inputs), (name, spec.name)
            for inp, note in zip(spec.inputs, per_input):
                assert note["dataset"] and note["terms"] and note["filters"], (name, spec.name)
                assert _fields(inp) <= set(note["columns"]), (name, spec.name, _fields(inp))


def test_a_recipe_builds_a_sharded_corpus(hub, tmp_path):
    specs = _load("text.json", hub) + _load("code.json", hub)
    config = corpus.BuildConfig(vocab_size=300, benchmarks_dir="", include_humaneval=False)
    manifest = pipeline.build_sharded(specs, str(tmp_path / "c"), config, log=print)
    by = {s["name"]: s for s in manifest["sources"]}
    assert len(by["text"]["shards"]) == 2  # one a SlimPajama chunk file
    assert by["code"]["dropped"]["filter:max_line_length"] == 1
