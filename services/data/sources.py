"""Corpus sources: what each named source reads, and the default catalogue.

A source is a named list of inputs of one data kind in the paper's terms
(text, code, markup, code_adjacent, synthetic_code, cooldown). Every input,
whatever it is, is opened as a `datasets.IterableDataset` of records and
read through one code path (`iter_documents`):

* a `datasets` builder over local files: `path="text"` (plain text, source
  files, .gz; `sample_by="document"` makes one file one document), `"json"`
  (json/jsonl), `"parquet"`, `"csv"`, with `data_files` globs;
* a Hugging Face dataset name or a local dataset folder (`path="org/name"`),
  loaded with `streaming=True` where the network allows;
* a registered reader (`reader="debian_changelog"`, ...) for local formats
  that need parsing (dictionary files, changelogs, man pages, HTML to text,
  reST Q&A, verified synthetic code), wrapped with
  `datasets.IterableDataset.from_generator`.

`default_sources()` reads the catalogue of the default corpus
(default_sources.json): real material
found on this machine (Debian packages python3.11-doc, dict-gcide,
jargon-text, debian-reference-en, manpages, and the Python interpreter's own
standard library and site-packages), nothing from a hub.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import gzip
import hashlib
import html
import html.parser
import json
import os
import re
import string
import sys
import sysconfig
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from proto import data_pb2, spelling
from services.data import filters as filters_lib

# The paper's kinds, spelled as data.proto's SourceKind names say.
KINDS = spelling.spellings(data_pb2.SourceKind)

# `datasets` builders that read local files; their data_files are expanded
# here (sorted, optionally shuffled) so the order of documents is ours.
LOCAL_BUILDERS = ("text", "json", "parquet", "csv", "arrow")


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a source.

    path: a `datasets` builder ("text", "json", "parquet", "csv"), a Hugging
        Face dataset name, or a local dataset folder; empty when `reader` is set.
    data_files: files or globs for a builder (local paths are expanded here).
    config: the dataset configuration (`name=` of `load_dataset`).
    split: the split to read.
    text_field: the record field that holds the document text.
    sample_by: for the "text" builder: "document" (one file, one document),
        "paragraph" or "line".
    reader: a registered reader (see READERS) instead of `path`.
    options: extra keyword arguments of `load_dataset`, or the reader's options.
    exclude: fnmatch patterns of expanded files to leave out.
    shuffle_files: visit expanded files in a seeded hash order instead of
        sorted order, so a token cap samples across the whole input.
    group_chars: join consecutive records into documents of up to this many
        characters (dictionary entries, paragraphs, changelog entries); 0 keeps
        one record per document.
    max_chars: stop reading the input after this many characters (0: all).
    streaming: `load_dataset(streaming=...)`; True never writes a cache.
    missing_ok: a local input whose patterns match no file yields nothing
        instead of failing (for installation-dependent material).
    where: records kept by the value of a field (dotted for nested fields):
        {"meta.redpajama_set_name": {"not_in": ["RedPajamaGithub"]}}, or
        {"lang": {"in": ["Python", "Go"]}}; a record lacking the field is
        dropped by "in" and kept by "not_in".
    template: a document made of several fields instead of `text_field`, as
        `str.format` fills it from the record ("{subject}\n\n{old_contents}",
        "{meta[url]}"); a field that is null fills in as "".
    """

    path: str = ""
    data_files: tuple[str, ...] = ()
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    sample_by: str = "document"
    reader: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    shuffle_files: bool = False
    group_chars: int = 0
    max_chars: int = 0
    streaming: bool = True
    missing_ok: bool = False
    where: Mapping[str, Mapping[str, Sequence[str]]] = dataclasses.field(default_factory=dict)
    template: str = ""

    def __post_init__(self):
        for key, rule in self.where.items():
            if not isinstance(rule, Mapping) or set(rule) - {"in", "not_in"} or not rule:
                raise ValueError(
                    f'where.{key}: give {{"in": [...]}} or {{"not_in": [...]}}, got {rule!r}'
                )
        try:
            list(string.Formatter().parse(self.template))
        except ValueError as e:
            raise ValueError(f"template {self.template!r}: {e}") from None

    def keeps(self, record: Mapping) -> bool:
        """Whether `record` passes `where`."""
        for key, rule in self.where.items():
            value = record
            for part in key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            if "in" in rule and value not in rule["in"]:
                return False
            if "not_in" in rule and value in rule["not_in"]:
                return False
        return True


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A named source of the corpus.

    name: the name mixtures use.
    kind: one of KINDS.
    description: where the material comes from, in words.
    inputs: what to read, in order.
    max_tokens: cap on the source's tokens (whole documents, EOS included);
        0 means no cap.
    filters: quality and language rules, {rule: threshold} (filters.py);
        applied by the sharded build (pipeline.py).
    """

    name: str
    kind: str
    description: str
    inputs: tuple[Input, ...]
    max_tokens: int = 0
    filters: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name or ""):
            raise ValueError(f"source name {self.name!r}: use 1-64 of [A-Za-z0-9_.-]")
        if self.kind not in KINDS:
            raise ValueError(f"source {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if not self.inputs:
            raise ValueError(f"source {self.name}: no inputs")
        if self.max_tokens < 0:
            raise ValueError(f"source {self.name}: max_tokens must be >= 0")
        filters_lib.Filters.from_json(self.filters, field=f"sources.{self.name}.filters")
        for i, inp in enumerate(self.inputs):
            if bool(inp.path) == bool(inp.reader):
                raise ValueError(
                    f"source {self.name}: inputs[{i}]: set exactly one of path and reader"
                )
            if inp.reader and inp.reader not in READERS:
                raise ValueError(
                    f"source {self.name}: inputs[{i}].reader: unknown reader {inp.reader!r}; known: {sorted(READERS)}"
                )

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["inputs"] = []
        for i in self.inputs:
            inp = dict(dataclasses.asdict(i), options=dict(i.options))
            inp["where"] = {k: {op: list(v) for op, v in r.items()} for k, r in i.where.items()}
            if not inp["where"]:
                del inp["where"]  # inputs without it keep their JSON form
            if not inp["template"]:
                del inp["template"]
            d["inputs"].append(inp)
        d["filters"] = dict(self.filters)
        if not d["filters"]:
            del d["filters"]  # specs without filters keep their JSON form
        return d


def source_from_json(d: Mapping[str, Any]) -> SourceSpec:
    """A SourceSpec from its JSON form (the spec-file format; see load_spec_file)."""
    known_inputs = {f.name for f in dataclasses.fields(Input)}
    inputs = []
    for i, raw in enumerate(d.get("inputs", ())):
        unknown = set(raw) - known_inputs
        if unknown:
            raise ValueError(
                f"source {d.get('name')}: inputs[{i}]: unknown fields {sorted(unknown)}"
            )
        raw = dict(raw)
        for key in ("data_files", "exclude"):
            if isinstance(raw.get(key), str):
                raw[key] = [raw[key]]
            if key in raw:
                raw[key] = tuple(raw[key])
        inputs.append(Input(**raw))
    unknown = set(d) - {"name", "kind", "description", "inputs", "max_tokens", "filters"}
    if unknown:
        raise ValueError(f"source {d.get('name')}: unknown fields {sorted(unknown)}")
    return SourceSpec(
        name=d.get("name", ""),
        kind=d.get("kind", ""),
        description=d.get("description", ""),
        inputs=tuple(inputs),
        max_tokens=int(d.get("max_tokens", 0)),
        filters=dict(d.get("filters") or {}),
    )


def load_spec_file(path: str) -> list[SourceSpec]:
    """Reads a source-spec file: JSON `{"sources": [{"name", "kind",
    "description", "max_tokens", "inputs": [{"path": "json", "data_files":
    ["/data/*.jsonl"], "text_field": "text"}, ...]}]}`. Relative data_files
    are taken relative to the file's directory. `"include": ["other.json"]`
    reads other spec files (relative to this one) first, in order, so one
    file can name a whole corpus made of several; other top-level keys (notes
    such as "about") are not read."""
    return _load_spec_file(path, ())


def _load_spec_file(path: str, seen: tuple[str, ...]) -> list[SourceSpec]:
    path = os.path.abspath(path)
    if path in seen:
        raise ValueError(f"{path} includes itself: {' -> '.join(seen + (path,))}")
    with open(path) as f:
        raw = json.load(f)
    base = os.path.dirname(path)
    specs = []
    for other in _as_list(raw.get("include", ())):
        specs += _load_spec_file(os.path.join(base, other), seen + (path,))
    for d in raw.get("sources", ()):
        d = dict(d)
        d["inputs"] = [
            dict(i, data_files=[_relative_to(base, p) for p in _as_list(i.get("data_files", ()))])
            if i.get("path", "") in LOCAL_BUILDERS or i.get("reader")
            else i
            for i in d.get("inputs", ())
        ]
        specs.append(source_from_json(d))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate source names in {names}")
    return specs


def _as_list(x):
    return [x] if isinstance(x, str) else list(x)


def _relative_to(base: str, p: str) -> str:
    return p if os.path.isabs(p) or "://" in p else os.path.join(base, p)


# ---------------------------------------------------------------------------
# Reading: every input becomes an IterableDataset, every record a document.


def expand_files(
    patterns: Sequence[str],
    exclude: Sequence[str] = (),
    shuffle: bool = False,
    missing_ok: bool = False,
) -> list[str]:
    """Local files matching `patterns` (recursive globs), minus `exclude`,
    sorted or in a seeded hash order. A pattern matching nothing is an error
    unless `missing_ok`, so a missing Debian package is noticed rather than
    silently empty."""
    files: set[str] = set()
    for pattern in patterns:
        matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matched and not missing_ok:
            raise FileNotFoundError(f"no files match {pattern!r}")
        files.update(matched)
    kept = sorted(f for f in files if not any(fnmatch.fnmatch(f, x) for x in exclude))
    if shuffle:
        kept.sort(key=lambda f: hashlib.sha1(f.encode()).hexdigest())
    return kept


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def import_datasets():
    """`datasets`, with its cache somewhere writable. Even streaming loads
    take a lock file in the cache; under Bazel's test sandbox ~/.cache is
    read-only, so a temporary directory stands in."""
    if "datasets" not in sys.modules and not os.environ.get("HF_DATASETS_CACHE"):
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "huggingface",
        )
        if not _writable_dir(os.path.join(home, "datasets")):
            os.environ["HF_DATASETS_CACHE"] = os.path.join(
                tempfile.gettempdir(), "code_lab_hf_datasets"
            )
    import datasets  # heavy; only corpus builds need it

    if not _writable_dir(str(datasets.config.HF_DATASETS_CACHE)):
        import pathlib

        datasets.config.HF_DATASETS_CACHE = pathlib.Path(
            tempfile.gettempdir(), "code_lab_hf_datasets"
        )
    return datasets


def open_input(inp: Input):
    """The input as a `datasets.IterableDataset` (or Dataset when
    streaming=False) of records."""
    datasets = import_datasets()

    if inp.reader:
        files = (
            expand_files(inp.data_files, inp.exclude, inp.shuffle_files, inp.missing_ok)
            if inp.data_files
            else []
        )
        return datasets.IterableDataset.from_generator(
            _reader_records,
            gen_kwargs={
                "reader": inp.reader,
                "files": files,
                "options": json.dumps(dict(inp.options)),
            },
        )
    kwargs = dict(inp.options)
    data_files = None
    if inp.data_files:
        local = inp.path in LOCAL_BUILDERS and not any("://" in p for p in inp.data_files)
        data_files = (
            expand_files(inp.data_files, inp.exclude, inp.shuffle_files, inp.missing_ok)
            if local
            else list(inp.data_files)
        )
        if local and not data_files:
            return []  # missing_ok and nothing matched
    if inp.path == "text":
        kwargs.setdefault("sample_by", inp.sample_by)
        kwargs.setdefault("encoding_errors", "replace")
        kwargs.setdefault("keep_linebreaks", True)
    return datasets.load_dataset(
        inp.path,
        name=inp.config,
        data_files=data_files,
        split=inp.split,
        streaming=inp.streaming,
        **kwargs,
    )


def _reader_records(reader: str, files: list[str], options: str) -> Iterator[dict]:
    # from_generator may split list-valued gen_kwargs into shards; each call
    # gets a slice of the files, in order.
    for text in READERS[reader](files, **json.loads(options)):
        yield {"text": text}


def iter_documents(inp: Input) -> Iterator[str]:
    """The documents of one input: its records' text field, optionally grouped
    into documents of up to `group_chars`, up to `max_chars` in total."""
    dataset = open_input(inp)
    texts = _texts(dataset, inp)
    if inp.group_chars:
        texts = _group(texts, inp.group_chars)
    total = 0
    for text in texts:
        if not text or text.isspace():
            continue
        yield text
        total += len(text)
        if inp.max_chars and total >= inp.max_chars:
            return


def _texts(dataset, inp: Input) -> Iterator[str]:
    for i, record in enumerate(dataset):
        if inp.where and not inp.keeps(record):
            continue
        if inp.template:
            yield _fill(inp, record)
            continue
        if inp.text_field not in record:
            raise KeyError(
                f"input {inp.path or inp.reader}: records have no field {inp.text_field!r} "
                f"(fields: {sorted(record)}); set text_field"
            )
        value = record[inp.text_field]
        if value is None:
            continue
        yield value if isinstance(value, str) else str(value)


def _fill(inp: Input, record: Mapping) -> str:
    fields = {k: "" if v is None else v for k, v in record.items()}
    try:
        return inp.template.format_map(fields)
    except KeyError as e:
        raise KeyError(
            f"input {inp.path or inp.reader}: template field {e} is not in the records "
            f"(fields: {sorted(record)})"
        ) from None


def _group(texts: Iterable[str], limit: int, sep: str = "\n\n") -> Iterator[str]:
    parts: list[str] = []
    size = 0
    for t in texts:
        t = t.strip("\n")
        if parts and size + len(t) > limit:
            yield sep.join(parts)
            parts, size = [], 0
        parts.append(t)
        size += len(t) + len(sep)
    if parts:
        yield sep.join(parts)


def iter_source(spec: SourceSpec) -> Iterator[str]:
    """The documents of every input of the source, in order."""
    for inp in spec.inputs:
        yield from iter_documents(inp)


# ---------------------------------------------------------------------------
# Registered readers for local formats that need parsing. Each takes the
# expanded files and its options and yields document strings.


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip, and dictzip (.dz) which is gzip-compatible
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace").replace("\r\n", "\n")


def read_paragraphs(files: Sequence[str], skip_prefix: str = "") -> Iterator[str]:
    """Blank-line separated paragraphs of (possibly gzipped) text files; with
    group_chars this makes documents of consecutive dictionary entries."""
    for path in files:
        for para in re.split(r"\n\s*\n", _read_text(path)):
            if para.strip() and not (skip_prefix and para.startswith(skip_prefix)):
                yield para


_DEBIAN_ENTRY = re.compile(r"^\S.*\(.*\).*;.*urgency=", re.MULTILINE)


def read_debian_changelog(files: Sequence[str]) -> Iterator[str]:
    """One document per Debian changelog entry: a version header, the change
    bullets and the maintainer's sign-off, much like a commit message."""
    for path in files:
        text = _read_text(path)
        starts = [m.start() for m in _DEBIAN_ENTRY.finditer(text)]
        for a, b in zip(starts, starts[1:] + [len(text)]):
            entry = text[a:b].strip()
            if entry:
                yield entry + "\n"


def read_news_items(files: Sequence[str]) -> Iterator[str]:
    """One document per top-level bullet ("- gh-issue-123: ...") of a NEWS
    file, with its section heading: a change description per fix."""
    for path in files:
        section = ""
        lines = _read_text(path).split("\n")
        item: list[str] = []

        def flush():
            if item:
                body = "\n".join(item).strip()
                return f"{section}: {body}\n" if section else body + "\n"
            return None

        for i, line in enumerate(lines):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if (
                nxt
                and set(nxt) <= set("-=")
                and len(nxt) >= len(line) > 0
                and not line.startswith("- ")
            ):
                out = flush()
                if out:
                    yield out
                item = []
                section = line.strip()
                continue
            if line.startswith("- "):
                out = flush()
                if out:
                    yield out
                item = [line]
            elif item and (line.startswith("  ") or not line.strip()):
                item.append(line)
            else:
                out = flush()
                if out:
                    yield out
                item = []
        out = flush()
        if out:
            yield out


def read_rst_sections(
    files: Sequence[str], underline: str = "-", prefix: str = "Q: "
) -> Iterator[str]:
    """One document per reST section underlined with `underline` (the
    questions of the Python FAQ): the heading as the question, the body as
    its answer."""
    for path in files:
        lines = _read_text(path).split("\n")
        heads = [
            i
            for i in range(len(lines) - 1)
            if lines[i].strip()
            and len(lines[i + 1]) >= len(lines[i].rstrip())
            and set(lines[i + 1].strip()) == {underline}
        ]
        for h, nxt in zip(heads, heads[1:] + [len(lines) + 1]):
            body = "\n".join(lines[h + 2 : nxt - 1]).strip()
            # Drop a trailing label or the next section's over-line, if any.
            body = re.sub(r"\n\.\. _[^\n]*:\s*$", "", body).strip()
            if body:
                yield f"{prefix}{lines[h].strip()}\n\n{body}\n"


class _HTMLText(html.parser.HTMLParser):
    _SKIP = {"script", "style", "head", "nav"}
    _BLOCK = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "dt",
        "dd",
        "table",
        "section",
    }

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self.skip:
            self.skip -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"[ \t\r\n]+", " ", data))

    def text(self) -> str:
        text = "".join(self.parts)
        text = re.sub(r"[ \t]+\n", "\n", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def read_html_text(files: Sequence[str]) -> Iterator[str]:
    """The visible text of HTML pages (handbook prose), one page per document."""
    for path in files:
        text = html_to_text(_read_text(path))
        if text.strip():
            yield text


_TROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d"), ""),  # size changes
    (re.compile(r"\\\(em|\\\(en"), "-"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((oq|cq)"), "'"),
    (re.compile(r"\\\(\w\w|\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[&|^%:/,]"), ""),
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\e"), "\\\\"),
    (re.compile(r"\\(.)"), r"\1"),
]


def troff_to_text(source: str) -> str:
    """A crude rendering of a man page's troff source as plain text: requests
    become paragraph breaks or headings, font escapes are dropped."""
    out: list[str] = []
    for line in source.split("\n"):
        if line.startswith(('.\\"', "'\\\"", ".\\}")) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            req, _, arg = line[1:].partition(" ")
            arg = arg.strip().strip('"')
            if req in ("SH", "SS"):
                out.append("\n" + arg.upper() if req == "SH" else "\n" + arg)
            elif req in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB"):
                out.append(arg.replace('" "', " ").replace('"', ""))
            elif req in ("PP", "LP", "P", "TP", "IP", "sp", "br", "HP"):
                out.append("")
                if req == "IP" and arg:
                    out.append(arg.split('"')[0].strip())
            continue
        out.append(line)
    text = "\n".join(out)
    for pattern, repl in _TROFF_ESCAPES:
        text = pattern.sub(repl, text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def read_man_pages(files: Sequence[str], min_chars: int = 400) -> Iterator[str]:
    """Man pages (troff, gzipped) rendered as plain text, one page per document;
    `.so` redirections and near-empty pages are skipped."""
    for path in files:
        source = _read_text(path)
        if source.lstrip().startswith(".so "):
            continue
        text = troff_to_text(source)
        if len(text) >= min_chars:
            yield text


def read_synthetic_python(files: Sequence[str], **options) -> Iterator[str]:
    """Verified synthetic Python problems (see synthetic.py); takes no files."""
    from services.data import synthetic

    yield from synthetic.verified_documents(**options)


READERS: dict[str, Callable[..., Iterator[str]]] = {
    "paragraphs": read_paragraphs,
    "debian_changelog": read_debian_changelog,
    "news_items": read_news_items,
    "rst_sections": read_rst_sections,
    "html_text": read_html_text,
    "man_pages": read_man_pages,
    "synthetic_python": read_synthetic_python,
}


# ---------------------------------------------------------------------------
# The default corpus: real material on this machine, no hub.

# Debian packages the default corpus reads (setup installs them).
DEBIAN_PACKAGES = ("python3.11-doc", "dict-gcide", "jargon-text", "debian-reference-en", "manpages")

# The catalogue itself is data: the spec-file format of load_spec_file, with
# this machine's locations left as placeholders.
CATALOGUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_sources.json")


def default_sources(
    scale: float = 1.0,
    *,
    stdlib_dir: str | None = None,
    site_packages_dirs: Sequence[str] | None = None,
) -> list[SourceSpec]:
    """The default corpus's sources: CATALOGUE with its placeholders filled in.

    `scale` multiplies every token cap and per-input character cap (tests
    build a small version with scale 0.02) and, five times as fast, the number
    of synthetic candidates (at least 8, at most the catalogue's). In strings,
    {stdlib} is the interpreter's standard library, {python_doc} its Debian
    documentation directory, {num_cooldown_modules} the number of
    `cooldown_stdlib_modules`; a file pattern holding {site_packages} or
    {cooldown_module} stands for one pattern per site-packages directory or
    per module. The cooldown's material is two sources, so that a cooldown
    "without code" can leave the code out entirely.
    """
    with open(CATALOGUE) as f:
        catalogue = json.load(f)
    if site_packages_dirs is None:
        paths = sysconfig.get_paths()
        site_packages_dirs = sorted({paths["purelib"], paths["platlib"]})
    modules = catalogue["cooldown_stdlib_modules"]
    values = {
        "{stdlib}": stdlib_dir or sysconfig.get_paths()["stdlib"],
        "{python_doc}": f"/usr/share/doc/python{sys.version_info.major}.{sys.version_info.minor}",
        "{num_cooldown_modules}": str(len(modules)),
    }
    each = {"{site_packages}": site_packages_dirs, "{cooldown_module}": modules}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    def patterns(raw: Sequence[str]) -> list[str]:
        out = []
        for p in raw:
            key = next((k for k in each if k in p), None)
            out += [fill(p.replace(key, v)) for v in each[key]] if key else [fill(p)]
        return out

    def scaled(inp: dict) -> dict:
        inp = dict(inp, data_files=patterns(inp.get("data_files", ())))
        inp["exclude"] = patterns(inp.get("exclude", ()))
        if inp.get("max_chars"):
            inp["max_chars"] = max(1, int(inp["max_chars"] * scale))
        options = inp.get("options", {})
        if "num_candidates" in options:
            n = max(8, int(options["num_candidates"] * min(1.0, scale * 5)))
            inp["options"] = dict(options, num_candidates=n)
        return inp

    return [
        source_from_json(
            dict(
                d,
                description=fill(d["description"]),
                max_tokens=int(d.get("max_tokens", 0) * scale),
                inputs=[scaled(i) for i in d["inputs"]],
            )
        )
        for d in catalogue["sources"]
    ]
