"""A repository rule that builds a virtual environment from the lockfile.

The environment lives in Bazel's external directory and is registered as the
Python toolchain, so `bazel run` and `bazel test` use exactly the locked
packages. Bazel re-runs the rule (and so rebuilds the environment) whenever
the lockfile's content changes, because the rule reads it through a label.
"""

def _python_env_impl(rctx):
    lockfile = rctx.path(rctx.attr.lockfile)

    # Reading the file records it as an input of this repository.
    lock_text = rctx.read(lockfile)
    python = rctx.which(rctx.attr.python)
    if python == None:
        fail("python_env: interpreter '%s' not found on PATH" % rctx.attr.python)

    rctx.report_progress("creating virtual environment")
    result = rctx.execute([python, "-m", "venv", "--clear", "venv"], timeout = 300)
    if result.return_code != 0:
        fail("python_env: venv creation failed:\n" + result.stderr)

    rctx.report_progress("installing %d locked packages (first build only, several minutes)" % len([l for l in lock_text.splitlines() if "==" in l]))
    result = rctx.execute(
        ["venv/bin/python", "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--progress-bar", "off", "-q", "-r", str(lockfile)],
        timeout = 3600,
        quiet = False,
    )
    if result.return_code != 0:
        fail("python_env: pip install -r %s failed:\n%s" % (lockfile, result.stderr))

    interpreter = str(rctx.path("venv/bin/python3"))
    rctx.file("BUILD", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")
package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    # The launcher stub runs under the same interpreter, not whatever
    # `python` the PATH of an action or a user happens to hold.
    stub_shebang = "#!{interpreter}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)

exports_files(["venv/bin/python3"])
""".format(interpreter = interpreter))

python_env = repository_rule(
    implementation = _python_env_impl,
    attrs = {
        "lockfile": attr.label(allow_single_file = True, mandatory = True),
        "python": attr.string(default = "python3"),
    },
    environ = [],
)

def _pip_target_impl(rctx):
    """Installs a lockfile's packages into a plain directory (pip --target), for a few
    targets that need them and nothing else should see."""
    lockfile = rctx.path(rctx.attr.lockfile)
    rctx.read(lockfile)  # a changed lockfile re-runs the rule
    python = rctx.which(rctx.attr.python)
    if python == None:
        fail("pip_target: interpreter '%s' not found on PATH" % rctx.attr.python)
    result = rctx.execute([python, "-m", "venv", "--clear", "pip_venv"], timeout = 300)
    if result.return_code != 0:
        fail("pip_target: venv creation failed:\n" + result.stderr)
    rctx.report_progress("installing %s (first build only)" % rctx.attr.lockfile)
    result = rctx.execute(
        ["pip_venv/bin/python", "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--progress-bar", "off", "-q", "--target", "site", "-r", str(lockfile)],
        timeout = 3600,
        quiet = False,
    )
    if result.return_code != 0:
        fail("pip_target: pip install -r %s failed:\n%s" % (lockfile, result.stderr))
    rctx.execute(["rm", "-rf", "pip_venv"])
    rctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

filegroup(
    name = "files",
    srcs = glob(["site/**"], exclude = ["site/**/__pycache__/**"]),
)
""")

pip_target = repository_rule(
    implementation = _pip_target_impl,
    attrs = {
        "lockfile": attr.label(allow_single_file = True, mandatory = True),
        "python": attr.string(default = "python3"),
    },
    environ = [],
)
