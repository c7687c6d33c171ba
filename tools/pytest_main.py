"""Entry point of every py_test: runs pytest on the files named in argv.

Bazel passes the test files (see tools/defs.bzl); pytest's cache is kept out
of the read-only runfiles tree and its output goes where Bazel collects it.
"""

import os
import sys

import pytest

if __name__ == "__main__":
    args = ["-p", "no:cacheprovider", "-q", "-rs"]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append("--junitxml=" + xml)
    sys.exit(pytest.main(args + sys.argv[1:]))
