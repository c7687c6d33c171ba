"""Each recipe of services/data/recipes/ reads files written in its
dataset's own schema (the hub paths pointed at local copies), keeping and
dropping what it says."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from services.data import corpus, pipeline, sources

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
SETS = (
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaWikipedia",
    "RedPajamaBook",
    "RedPajamaArXiv",
    "RedPajamaGithub",
    "RedPajamaStackExchange",
)


def _prose(tag: str) -> str:
    return f"{tag}: " + " ".join(
        ["the river runs to the sea and that is what rivers have with them"] * 6
    )


def _code(tag: str) -> str:
    return f"# {tag}\ndef add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Local copies of the datasets' files, in their own schemas and layout."""
    root = tmp_path_factory.mktemp("hub")
    # SlimPajama-627B: train/chunkN/example_train_K.jsonl.zst, {"text", "meta": {"redpajama_set_name"}}.
    for chunk in (1, 2):
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
    folders = {
        "python": _code("python"),
        "go": _code("go"),
        "markdown": "# markdown\n\nSome *text* with a [link](http://example.com).\n",
        "html": "<html><body><p>html</p></body></html>\n",
        "git-commits-cleaned": "<commit_before>x = 1\n<commit_msg>git-commits-cleaned fix\n<commit_after>x = 2\n",
        "jupyter-scripts-dedup-filtered": _code("jupyter-scripts-dedup-filtered"),
        "jupyter-structured-clean-dedup": _code("jupyter-structured-clean-dedup"),
        "lua": "x" * 2000 + "\n",  # one line over The Stack's limit: filtered out
    }
    for folder, content in folders.items():
        path = root / "bigcode/starcoderdata" / folder / "train-00000-of-00001.parquet"
        path.parent.mkdir(parents=True)
        table = pa.table(
            {
                "max_stars_repo_path": [f"src/{folder}/a.txt"],
                "max_stars_repo_name": ["someone/something"],
                "max_stars_count": [3],
                "id": ["1"],
                "content": [content],
            }
        )
        pq.write_table(table, path)
    return root


def _load(name: str, hub) -> list[sources.SourceSpec]:
    specs = sources.load_spec_file(os.path.join(RECIPES, name))
    out = []
    for spec in specs:
        inputs = []
        for inp in spec.inputs:
            files = tuple(p.replace("hf://datasets/", f"{hub}/") for p in inp.data_files)
            # Only the folders the test wrote (the recipe names more languages).
            found = tuple(f for f in files if pipeline.expand_files(f))
            inputs.append(
                sources.Input(**{**inp.__dict__, "data_files": found, "missing_ok": True})
            )
        out.append(sources.SourceSpec(**{**spec.__dict__, "inputs": tuple(inputs)}))
    return out


def _tags(spec) -> set[str]:
    from services.data import filters

    rules = filters.Filters.from_json(spec.filters)
    return {
        t.split("\n")[0].split(":")[0].lstrip("# ")
        for t in sources.iter_source(spec)
        if rules.check(t) is None
    }


def test_text_is_slimpajama_without_github_and_stackexchange(hub):
    (text,) = _load("text.json", hub)
    got = _tags(text)
    assert got == {f"{s} {c}" for s in SETS[:5] for c in (1, 2)}


def test_code_and_markup_are_starcoderdata_folders(hub):
    (code,) = _load("code.json", hub)
    (markup,) = _load("markup.json", hub)
    assert _tags(code) == {"python", "go"}  # lua's 2,000-character line filtered out
    assert len(list(sources.iter_source(markup))) == 2


def test_code_adjacent_is_commits_notebooks_and_stackexchange(hub):
    commits, notebooks, stackexchange = _load("code_adjacent.json", hub)
    assert ["git-commits-cleaned fix" in t for t in sources.iter_source(commits)] == [True]
    assert _tags(notebooks) == {"jupyter-scripts-dedup-filtered", "jupyter-structured-clean-dedup"}
    assert _tags(stackexchange) == {"RedPajamaStackExchange 1", "RedPajamaStackExchange 2"}


def test_cooldown_is_the_high_quality_parts(hub):
    cooldown_text, cooldown_code = _load("cooldown.json", hub)
    assert _tags(cooldown_text) == {
        f"{s} {c}"
        for s in ("RedPajamaWikipedia", "RedPajamaBook", "RedPajamaArXiv")
        for c in (1, 2)
    }
    assert _tags(cooldown_code) == {"python"}


def test_every_recipe_parses_and_kinds_cover_the_paper(hub):
    kinds = set()
    for name in sorted(os.listdir(RECIPES)):
        if name.endswith(".json"):
            kinds |= {s.kind for s in sources.load_spec_file(os.path.join(RECIPES, name))}
    assert {"text", "code", "markup", "code_adjacent", "synthetic_code", "cooldown"} <= kinds


def test_a_recipe_builds_a_sharded_corpus(hub, tmp_path):
    specs = _load("text.json", hub) + _load("code.json", hub)
    config = corpus.BuildConfig(vocab_size=300, benchmarks_dir="", include_humaneval=False)
    manifest = pipeline.build_sharded(specs, str(tmp_path / "c"), config, log=print)
    by = {s["name"]: s for s in manifest["sources"]}
    assert len(by["text"]["shards"]) == 2  # one a SlimPajama chunk file
    assert by["code"]["dropped"]["filter:max_line_length"] == 1
