"""Source readers and specs: local formats parsed into documents."""

import gzip
import json
import os
import sys

import pytest

from services.data import sources

CHANGELOG = """pkg (1.2-1) unstable; urgency=medium

  * Fix the frobnicator.
  * Closes: #123.

 -- A Maintainer <a@example.org>  Tue, 20 Sep 2022 12:17:15 -0400

pkg (1.1-1) unstable; urgency=low

  * Initial release.

 -- A Maintainer <a@example.org>  Mon, 19 Sep 2022 12:17:15 -0400
"""

NEWS = """Python News
+++++++++++

Library
-------

- gh-issue-1: Fix a thing in :mod:`os`.
  Patch by Someone.

- bpo-2: Another fix.

Tests
-----

- gh-issue-3: Flaky test fixed.
"""

FAQ = """===
FAQ
===

How do I do X?
--------------

Like this::

   do_x()

Why is Y slow?
--------------

Because of Z.
"""

MAN = r""".TH LS "1"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
.PP
List information about the FILEs \fB\-\-all\fR files.
.TP
\fB\-a\fR
do not ignore entries starting with .
"""


def test_debian_changelog_entries(tmp_path):
    p = tmp_path / "changelog.Debian.gz"
    with gzip.open(p, "wt") as f:
        f.write(CHANGELOG)
    entries = list(sources.read_debian_changelog([str(p)]))
    assert len(entries) == 2
    assert (
        entries[0].startswith("pkg (1.2-1)")
        and "frobnicator" in entries[0]
        and "Initial" not in entries[0]
    )


def test_news_items(tmp_path):
    p = tmp_path / "NEWS"
    p.write_text(NEWS)
    items = list(sources.read_news_items([str(p)]))
    assert items == [
        "Library: - gh-issue-1: Fix a thing in :mod:`os`.\n  Patch by Someone.\n",
        "Library: - bpo-2: Another fix.\n",
        "Tests: - gh-issue-3: Flaky test fixed.\n",
    ]


def test_rst_sections_as_questions(tmp_path):
    p = tmp_path / "faq.rst.txt"
    p.write_text(FAQ)
    docs = list(sources.read_rst_sections([str(p)]))
    assert docs == [
        "Q: How do I do X?\n\nLike this::\n\n   do_x()\n",
        "Q: Why is Y slow?\n\nBecause of Z.\n",
    ]


def test_html_and_troff_to_text(tmp_path):
    html = "<html><head><title>t</title><style>x{}</style></head><body><h1>Title</h1><p>One &amp; two</p><pre>  code\n   here</pre><script>bad()</script></body></html>"
    text = sources.html_to_text(html)
    assert "Title" in text and "One & two" in text and "  code\n   here" in text
    assert "bad()" not in text and "x{}" not in text
    man = sources.troff_to_text(MAN)
    assert (
        "ls - list directory contents" in man
        and "--all" in man
        and "\\f" not in man
        and ".TP" not in man
    )


def test_paragraphs_grouping_and_caps(tmp_path):
    p = tmp_path / "dict.dz"
    with gzip.open(p, "wt") as f:  # dictzip files are gzip files
        f.write(
            "00-database-info\n  header\n\n"
            + "\n\n".join(f"word{i}\n  meaning {i}" for i in range(50))
        )
    inp = sources.Input(
        reader="paragraphs",
        data_files=(str(p),),
        group_chars=100,
        options={"skip_prefix": "00-database"},
    )
    docs = list(sources.iter_documents(inp))
    assert "header" not in docs[0] and docs[0].startswith("word0")
    assert all(len(d) <= 100 for d in docs) and len(docs) > 5
    assert "\n\n".join(docs).count("meaning") == 50
    capped = list(
        sources.iter_documents(
            sources.Input(reader="paragraphs", data_files=(str(p),), max_chars=50)
        )
    )
    assert sum(map(len, capped[:-1])) < 50 <= sum(map(len, capped))


def test_datasets_builders_read_local_files(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(3))
    )
    (tmp_path / "b.py").write_text("x = 1\n\n\ny = 2  \n")
    docs = list(
        sources.iter_documents(
            sources.Input(path="json", data_files=(str(tmp_path / "*.jsonl"),), text_field="body")
        )
    )
    assert docs == ["doc 0", "doc 1", "doc 2"]
    files = list(
        sources.iter_documents(sources.Input(path="text", data_files=(str(tmp_path / "*.py"),)))
    )
    assert files == ["x = 1\n\n\ny = 2  \n"]  # one file, one document, whitespace kept
    with pytest.raises(KeyError, match="text_field"):
        list(
            sources.iter_documents(
                sources.Input(path="json", data_files=(str(tmp_path / "a.jsonl"),))
            )
        )


def test_where_keeps_records_by_a_nested_field_and_template_joins_fields(tmp_path):
    rows = [
        {"subject": "Fix a", "message": None, "old": "x = 1", "meta": {"set": "A"}},
        {"subject": "Fix b", "message": "why", "old": "y = 1", "meta": {"set": "B"}},
        {"subject": "Fix c", "message": "", "old": "z = 1", "meta": {}},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = (str(tmp_path / "c.jsonl"),)
    template = "{subject}\n{message}\n{old}"

    def read(**kw):
        return list(sources.iter_documents(sources.Input(path="json", data_files=files, **kw)))

    assert read(template=template) == ["Fix a\n\nx = 1", "Fix b\nwhy\ny = 1", "Fix c\n\nz = 1"]
    assert read(template="{subject}", where={"meta.set": {"in": ["A", "B"]}}) == ["Fix a", "Fix b"]
    # A record without the field passes "not_in".
    assert read(template="{subject}", where={"meta.set": {"not_in": ["A"]}}) == ["Fix b", "Fix c"]
    assert read(template="{meta[set]}", where={"meta.set": {"in": ["B"]}}) == ["B"]
    with pytest.raises(KeyError, match="template field 'new'"):
        read(template="{new}")
    with pytest.raises(ValueError, match="template"):
        sources.Input(path="json", template="{subject")
    with pytest.raises(ValueError, match="where.lang"):
        sources.Input(path="json", where={"lang": {"is": ["Go"]}})
    spec = sources.SourceSpec(
        "c", "code_adjacent", "", (sources.Input(path="json", template=template),)
    )
    assert sources.source_from_json(spec.to_json()) == spec
    plain = sources.SourceSpec("p", "text", "", (sources.Input(path="json"),))
    assert "template" not in plain.to_json()["inputs"][0]  # the JSON form of older specs


def test_expand_files(tmp_path):
    for name in ("b.txt", "a.txt", "c.log"):
        (tmp_path / name).write_text(name)
    files = sources.expand_files([str(tmp_path / "*.txt")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.txt", "b.txt"]
    assert sources.expand_files([str(tmp_path / "*")], exclude=["*.log"]) == files
    assert sorted(sources.expand_files([str(tmp_path / "*")], shuffle=True)) == sorted(
        sources.expand_files([str(tmp_path / "*")])
    )
    with pytest.raises(FileNotFoundError):
        sources.expand_files([str(tmp_path / "*.missing")])
    assert sources.expand_files([str(tmp_path / "*.missing")], missing_ok=True) == []
    optional = sources.Input(
        path="text", data_files=(str(tmp_path / "*.missing"),), missing_ok=True
    )
    assert list(sources.iter_documents(optional)) == []


def test_spec_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "spec.json").write_text(
        json.dumps(
            {
                "sources": [
                    {
                        "name": "web",
                        "kind": "text",
                        "description": "d",
                        "max_tokens": 100,
                        "inputs": [
                            {"path": "json", "data_files": "data/*.jsonl"},
                            {"path": "org/some-dataset", "split": "train"},
                        ],
                    },
                ]
            }
        )
    )
    [spec] = sources.load_spec_file(str(tmp_path / "spec.json"))
    assert spec.inputs[0].data_files == (str(tmp_path / "data" / "*.jsonl"),)
    assert spec.inputs[1].path == "org/some-dataset" and spec.inputs[1].streaming
    assert sources.source_from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="kind"):
        sources.SourceSpec("x", "poetry", "", (sources.Input(path="json"),))
    with pytest.raises(ValueError, match="unknown reader"):
        sources.SourceSpec("x", "text", "", (sources.Input(reader="nope"),))


def test_spec_file_includes_other_spec_files(tmp_path):
    def spec(name: str, data: str) -> dict:
        return {"name": name, "kind": "text", "inputs": [{"path": "json", "data_files": data}]}

    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.json").write_text(json.dumps({"sources": [spec("a", "a/*.jsonl")]}))
    (tmp_path / "b.json").write_text(
        json.dumps({"about": {"b": "notes"}, "sources": [spec("b", "b/*.jsonl")]})
    )
    (tmp_path / "all.json").write_text(
        json.dumps({"include": ["parts/a.json", "b.json"], "sources": [spec("c", "/c.jsonl")]})
    )
    specs = sources.load_spec_file(str(tmp_path / "all.json"))
    assert [s.name for s in specs] == ["a", "b", "c"]
    # Relative files are taken relative to the file that names them.
    assert specs[0].inputs[0].data_files == (str(tmp_path / "parts" / "a" / "*.jsonl"),)
    assert specs[1].inputs[0].data_files == (str(tmp_path / "b" / "*.jsonl"),)
    (tmp_path / "twice.json").write_text(json.dumps({"include": ["b.json", "b.json"]}))
    with pytest.raises(ValueError, match="duplicate source names"):
        sources.load_spec_file(str(tmp_path / "twice.json"))
    (tmp_path / "loop.json").write_text(json.dumps({"include": ["loop.json"]}))
    with pytest.raises(ValueError, match="includes itself"):
        sources.load_spec_file(str(tmp_path / "loop.json"))


def test_default_catalogue_covers_the_paper_kinds():
    specs = sources.default_sources()
    # Every kind of the paper, in order; the cooldown's code is a source of its own.
    assert list(dict.fromkeys(s.kind for s in specs)) == list(sources.KINDS)
    assert [s.name for s in specs] == list(sources.KINDS) + ["cooldown_code"]
    small = sources.default_sources(0.01)
    assert all(s.max_tokens <= b.max_tokens for s, b in zip(small, specs))


def test_the_catalogue_file_gives_the_sources_the_code_catalogue_gave():
    # testdata/default_sources_expected.json: the sources that the catalogue
    # written as code produced, before it became default_sources.json.
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "testdata", "default_sources_expected.json")) as f:
        expected = json.load(f)
    doc = f"/usr/share/doc/python{sys.version_info.major}.{sys.version_info.minor}"
    for scale, specs in expected.items():
        got = sources.default_sources(
            float(scale), stdlib_dir="/STDLIB", site_packages_dirs=["/SITE/a", "/SITE/b"]
        )
        text = json.dumps([s.to_json() for s in got]).replace(doc, "/usr/share/doc/python{X.Y}")
        assert json.loads(text) == specs, scale
