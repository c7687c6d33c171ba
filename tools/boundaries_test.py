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
