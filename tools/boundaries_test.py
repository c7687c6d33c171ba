import glob
import os

import pytest

from tools import boundaries

# The packages the check reads (tools/BUILD brings their files in as data).
PACKAGES = [
    "services/data",
    "services/data/api",
    "services/trainer",
    "services/trainer/api",
    "services/eval",
    "services/eval/api",
    "studies",
    "tests",
]


def test_no_file_imports_another_services_core():
    found = []
    for package in PACKAGES:
        files = sorted(glob.glob(os.path.join(package, "*.py")))
        assert files, f"no Python files of {package} to check"
        for path in files:
            with open(path) as f:
                found += boundaries.violations(path, f.read())
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "path, source",
    [
        ("services/trainer/step.py", "from services.data.mixture import MAX_SOURCES\n"),
        ("services/trainer/train.py", "from services.data import batch\n"),
        ("services/eval/harness.py", "def f():\n    import services.trainer.runs\n"),
        ("studies/runner.py", "from services.trainer import spec as spec_lib\n"),
        ("tests/pipeline_test.py", "from services.data import testing\n"),
        ("services/eval/harness.py", "from services.data import corpus\n"),
    ],
)
def test_a_planted_import_of_another_services_core_is_caught(path, source):
    (line,) = boundaries.violations(path, source)
    assert line.startswith(f"{path}: imports services.")


@pytest.mark.parametrize(
    "path, source",
    [
        ("services/trainer/data_link.py", "from services.data.api import client\n"),
        ("studies/services_test.py", "from services.data.api import testing as t\n"),
        ("services/trainer/train.py", "from services.trainer import spec\n"),
        ("services/data/api/main.py", "from services.data import corpus\n"),
        ("services/eval/heldout.py", "from services.data import corpus\n"),
        ("studies/report.py", "from proto import eval_pb2\nimport numpy\n"),
    ],
)
def test_the_edge_the_own_service_and_the_protos_are_allowed(path, source):
    assert boundaries.violations(path, source) == []


def _repository_files():
    """Every file of the repository's packages in this test's runfiles (tools/BUILD
    lists the packages), as paths relative to the repository root."""
    for folder, dirs, files in os.walk("."):
        dirs[:] = [
            d
            for d in dirs
            if d not in ("external", "__pycache__")
            and (d == ".ci" or not d.startswith("."))
            and not d.startswith("bazel-")
        ]
        for name in files:
            path = os.path.join(folder, name)
            if "/bazel-out/" in os.path.realpath(path):
                continue  # built by Bazel (launchers, generated protos), not written here
            yield os.path.relpath(path, ".")


def test_no_file_names_a_path_outside_the_repository():
    checked, found = 0, []
    for path in sorted(_repository_files()):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue  # figures and other binary files
        checked += 1
        found += boundaries.machine_paths(path, text)
    assert checked > 200, f"only {checked} files read: are the packages' files in the runfiles?"
    for expected in ("README.md", "docs/cluster.md", "studies/BUILD", "tools/defs.bzl"):
        assert os.path.isfile(expected), expected
    assert not found, "\n".join(found)


# Written in parts, so that this file does not itself name what it plants.
_SHARED = ".." + "/shared"
_WORK = "/" + "work"


@pytest.mark.parametrize(
    "text",
    [
        f"    here = os.path.join(repo, '{_SHARED}/benchmarks')\n",
        f"Read {_SHARED}/DESIGN.md for the reasons.\n",
        f"        '{_WORK}/main/services/eval/PWNED',\n",
        f"    default = '{_WORK}/shared/benchmarks'\n",
        "    python = '/" + "root/.cache" + "/bazel/_bazel" + "_root/abc/external/python_env'\n",
        "see /" + "home/alice/code-lab/README.md\n",
    ],
)
def test_a_planted_machine_path_is_caught(text):
    (line,) = boundaries.machine_paths("services/x.py", "import os\n" + text)
    assert line.startswith("services/x.py:2: names ")


@pytest.mark.parametrize(
    "text",
    [
        "~/.cache/code_lab/eval/results.sqlite\n",
        "/tmp/code_lab/checkpoints/tiny-code25\n",
        "gs://bkt/studies/work/main\n",
        "services/data/shared_cache.py and docs/work/notes.md\n",
        "./bazelw run //services/trainer\n",
    ],
)
def test_paths_inside_the_repository_or_temporary_are_allowed(text):
    assert boundaries.machine_paths("docs/x.md", text) == []
