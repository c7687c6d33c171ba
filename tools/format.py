"""Formats every Python file of the repository with ruff (pyproject.toml).

`./bazelw run //tools:format` formats in place; `-- --check` only reports.
"""

import os
import subprocess
import sys

if __name__ == "__main__":
    if {"-h", "--help", "--helpshort"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    root = os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd())
    check = ["--check"] if "--check" in sys.argv[1:] else []
    sys.exit(subprocess.call([sys.executable, "-m", "ruff", "format", *check, root], cwd=root))
