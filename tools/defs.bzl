"""Build macros shared by every package: pytest tests and gRPC proto code."""

def py_pytest(name, srcs, deps = [], data = [], args = [], **kwargs):
    """A py_test that runs pytest over `srcs` (files named *_test.py)."""
    native.py_test(
        name = name,
        srcs = srcs + ["//tools:pytest_main.py"],
        main = "//tools:pytest_main.py",
        args = args + ["$(location %s)" % s for s in srcs],
        deps = deps,
        data = data,
        python_version = "PY3",
        **kwargs
    )

def proto_filegroup(name, srcs):
    """`x_proto`: the .proto sources (native proto_library needs a protobuf
    repository Bazel would download, so the sources travel as files)."""
    native.filegroup(name = name, srcs = srcs)

def _protoc_genrule(name, proto, out_suffix, flag):
    src = native.package_name() + "/" + proto
    out = proto[:-len(".proto")] + out_suffix
    native.genrule(
        name = name + "_gen",
        # Every .proto of the package, so that imports between them resolve.
        srcs = native.glob(["*.proto"]),
        outs = [out],
        tools = ["//tools:protoc"],
        cmd = ("$(location //tools:protoc) -I. {flag}=$(GENDIR) {src}").format(flag = flag, src = src),
    )
    return out

def py_pb2_library(name, proto, deps = []):
    """`x_py_pb2`: message classes generated from one .proto file."""
    out = _protoc_genrule(name, proto, "_pb2.py", "--python_out")
    native.py_library(name = name, srcs = [out], deps = deps)

def py_pb2_grpc_library(name, proto, pb2):
    """`x_py_pb2_grpc`: gRPC stubs and servicer base classes for one .proto."""
    out = _protoc_genrule(name, proto, "_pb2_grpc.py", "--grpc_python_out")
    native.py_library(name = name, srcs = [out], deps = [pb2])

def py_srcs(files = ["**"]):
    """`py_srcs`: the package's Python files, which //tools:boundaries_test reads
    for imports; `package_files`: every file of the package (code, tests, BUILD,
    docs, specs), which it reads for paths outside the repository."""
    native.filegroup(
        name = "py_srcs",
        srcs = native.glob(["*.py"]),
        visibility = ["//tools:__pkg__"],
    )
    native.filegroup(
        name = "package_files",
        srcs = native.glob(files, exclude = ["**/__pycache__/**", "**/*.pyc"]),
        visibility = ["//tools:__pkg__"],
    )
