"""Every `./bazelw run` command the README and docs/ show still works as written.

Each command is read from the Markdown (continuation lines joined, comments
dropped), its label followed to the py_binary's main file through the BUILD
files (aliases too), and the binary started the way `bazel run` starts it,
in a quick form: the program is imported (all of it, as `bazel run` would)
and the command's own arguments parsed by its flags, so an unknown, mistyped
or missing required flag fails; commands that ask for `--help`, and those in
REAL_RUNS, run as written. A relative path the command names must exist from
the repository root, where the reader runs it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

# Commands cheap enough to run as written (label -> seconds allowed).
REAL_RUNS = {"//libs/model:presets": 120}

_COMMAND = re.compile(r"\./bazelw run ")

# Imports a binary's main file without running it, then parses the arguments
# with its flags (absl raises on an unknown flag, a bad value, a missing one).
_PARSE_ONLY = (
    "import runpy, sys\n"
    "from absl import flags\n"
    "runpy.run_path(sys.argv[1], run_name='documented_command')\n"
    "flags.FLAGS(sys.argv[1:])\n"
    "print('flags parsed')\n"
)


def _markdown_files() -> list[str]:
    found = []
    for folder, dirs, files in os.walk("."):
        dirs[:] = [
            d for d in dirs if d not in ("external", "third_party") and not d.startswith(".")
        ]
        found += [os.path.join(folder, f)[2:] for f in files if f.endswith(".md")]
    return sorted(found)


def documented_commands(text: str) -> list[str]:
    """The `./bazelw run ...` commands in a Markdown text, one string each."""
    commands = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _COMMAND.search(line)
        if not match:
            continue
        command = line[match.start() :]
        while command.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command.rstrip()[:-1] + " " + lines[i].strip()
        command = command.split("`")[0]  # inline code ends at its backtick
        command = re.split(r"\s#\s", command)[0]  # a trailing shell comment
        command = re.sub(r"\$\{?\w+\}?", "0", command).rstrip(
            " &"
        )  # a loop's variable, a background job
        commands.append(" ".join(command.split()))
    return commands


def split_command(command: str) -> tuple[str, list[str]]:
    """(label, the binary's arguments) of `./bazelw run [bazel flags] LABEL [-- args]`."""
    words = shlex.split(command)[2:]
    while words and words[0].startswith("--"):
        words.pop(0)  # Bazel's own options (--config=...)
    label, args = words[0], words[1:]
    if args and args[0] == "--":
        args = args[1:]
    return label, args


def _rules(build_file: str) -> dict[str, dict[str, str]]:
    """name -> {kind, main, actual} of the py_binary and alias rules of a BUILD file."""
    with open(build_file) as f:
        text = f.read()
    rules = {}
    for kind, body in re.findall(r"^(py_binary|alias)\(\n(.*?)^\)", text, re.M | re.S):
        fields = dict(re.findall(r'^\s+(name|main|actual) = "([^"]+)"', body, re.M))
        if "main" not in fields and kind == "py_binary":
            srcs = re.search(r'srcs = \["([^"]+)"', body)
            fields["main"] = srcs.group(1) if srcs else ""
        rules[fields["name"]] = {"kind": kind, **fields}
    return rules


def main_file(label: str) -> str:
    """The Python file `bazel run LABEL` executes, relative to the repository root."""
    package, _, name = label[2:].partition(":")
    name = name or package.rsplit("/", 1)[-1]
    build = os.path.join(package, "BUILD")
    assert os.path.isfile(build), f"{label}: no {build} in this test's runfiles"
    rule = _rules(build).get(name)
    assert rule, f"{label}: no py_binary or alias {name!r} in {build}"
    if rule["kind"] == "alias":
        return main_file(rule["actual"])
    return os.path.join(package, rule["main"])


def _relative_paths(args: list[str]) -> list[str]:
    """Values of flags that name a file of the repository (`--spec=studies/...`)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith("--") and "=" in a]
    return [
        v
        for v in values
        if "/" in v
        and "://" not in v
        and not v.startswith(("/", "~", "$"))
        and re.search(r"\.\w+$", v)
    ]


COMMANDS = sorted(
    {
        (command, path)
        for path in _markdown_files()
        for command in documented_commands(open(path).read())
    }
)


def test_the_docs_show_commands():
    labels = {split_command(c)[0] for c, _ in COMMANDS}
    assert {"//services/trainer", "//studies:run", "//services/trainer:compile"} <= labels, labels


def _run(
    script: str, args: list[str], timeout: int, parse_only: bool = False
) -> subprocess.CompletedProcess:
    root = os.getcwd()
    python_path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        PYTHONPATH=python_path,
        BUILD_WORKING_DIRECTORY=root,
        BUILD_WORKSPACE_DIRECTORY=root,
    )
    return subprocess.run(
        [sys.executable, *(["-c", _PARSE_ONLY] if parse_only else []), script, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("command, source", COMMANDS)
def test_documented_command_works(command, source):
    label, args = split_command(command)
    script = main_file(label)
    assert os.path.isfile(script), (
        f"{source}: {label}: {script} is not in this test's runfiles (add it to data)"
    )
    for path in _relative_paths(args):
        assert os.path.exists(path), (
            f"{source}: `{command}` names {path}, which is not in the repository"
        )
    if "--help" in args:  # absl prints the flags and exits 1
        result = _run(script, args, 120)
        assert result.returncode in (0, 1) and "flags:" in result.stdout, (
            f"{source}: `{command}`\n{result.stderr}"
        )
        return
    if label in REAL_RUNS:
        result = _run(script, args, REAL_RUNS[label])
        assert result.returncode == 0, f"{source}: `{command}`\n{result.stdout}\n{result.stderr}"
        return
    result = _run(script, args, 120, parse_only=True)
    assert result.returncode == 0 and "flags parsed" in result.stdout, (
        f"{source}: `{command}`\n{result.stdout}\n{result.stderr}"
    )


def test_a_broken_command_is_caught():
    """A flag the program does not define, or a value of the wrong type, fails."""
    script = main_file("//libs/model:presets")
    for bad in ["--no_such_flag=1", "--seq_len=long"]:
        result = _run(script, [bad], 120, parse_only=True)
        assert result.returncode != 0 and "flags parsed" not in result.stdout, bad


def test_commands_are_read_whole():
    text = "Run\n\n    ./bazelw run //studies:run -- \\\n        --spec=a/b.textproto --out=/tmp/x  # note\n"
    (command,) = documented_commands(text)
    assert split_command(command) == ("//studies:run", ["--spec=a/b.textproto", "--out=/tmp/x"])
    (inline,) = documented_commands("| `./bazelw run //libs/model:bench` | 0.58 |")
    assert split_command(inline) == ("//libs/model:bench", [])
    (configured,) = documented_commands("./bazelw run --config=tpu //services/trainer -- --help")
    assert split_command(configured) == ("//services/trainer", ["--help"])
