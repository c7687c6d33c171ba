"""The one storage layer: every file the system writes, at a local path or a gs:// URI.

A location is a string: a local path (`/tmp/study`) or a Cloud Storage URI
(`gs://bucket/study`). The functions here take either and do the same thing,
so a caller never branches on where its files live:

    storage.makedirs(run_dir)
    with storage.open(storage.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(line); f.flush()
    storage.write_text(storage.join(out, "state.json"), text)   # atomic
    storage.read_text(...), storage.exists(...), storage.listdir(...)

Local files go through the os module. gs:// goes through gcsfs (the same
filesystem etils.epath uses, hence orbax for checkpoint metadata; checkpoint
arrays go through tensorstore, which speaks GCS itself). What differs, and
why the functions are shaped as they are:

- GCS has no directories: `makedirs` is a no-op there, and a "directory"
  exists once an object lives under it.
- GCS objects are immutable and replaced atomically, so `write_text` is one
  upload there (a reader sees the old object or the new, never half), and a
  temporary file, fsync and rename locally.
- GCS has no append: a file opened with "a" keeps its content in memory and
  rewrites the whole object on every `flush()` and on `close()`. That costs
  the file's size per flush; the files appended to (metrics, run events)
  grow by a line per logged step, small next to a step's time.

Against an emulator (tests; ../libs/storage/testing.py) the environment says
where: STORAGE_EMULATOR_HOST for gcsfs and google-cloud-storage (then
anonymous credentials are used), TENSORSTORE_GCS_HTTP_URL for tensorstore.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.metadata
import io
import os
import posixpath
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence

GCS = "gs://"

_fs_lock = threading.Lock()
_fs_cache: dict[str, object] = {}


class StorageError(OSError):
    """A storage operation failed; the message names the location."""


def is_gcs(uri: str) -> bool:
    return str(uri).startswith(GCS)


def join(base: str, *parts: str) -> str:
    """`base/part/...`, with '/' for URIs and the os's separator for paths."""
    base = os.fspath(base)
    if is_gcs(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    uri = os.fspath(uri)
    if is_gcs(uri):
        bucket_and_key = uri[len(GCS) :].rstrip("/")
        head = posixpath.dirname(bucket_and_key)
        return GCS + (head or bucket_and_key)
    return os.path.dirname(uri)


def basename(uri: str) -> str:
    return posixpath.basename(os.fspath(uri).rstrip("/"))


def _check_bucket(uri: str) -> None:
    if not uri[len(GCS) :].split("/", 1)[0]:
        raise StorageError(f"{uri}: a gs:// URI needs a bucket (gs://BUCKET/...)")


# -- gcsfs -------------------------------------------------------------------------


@contextlib.contextmanager
def _proto_plus_named_proto():
    """Lets proto-plus import as `proto` for the duration.

    Our generated messages live in the top-level package `proto` (proto/),
    and so does proto-plus, which google-cloud-storage (hence gcsfs) imports
    when it loads. Python holds one module per name, and ours comes first on
    the path, so proto-plus would find our package and fail. proto-plus is
    imported here while the name is its own; then the name is given back to
    ours. proto-plus's submodules (proto.marshal, proto.message, ...) stay
    registered beside ours (proto.trainer_pb2, ...): the names never collide,
    and proto-plus's code holds the references it took when it loaded.
    """
    try:
        site = str(importlib.metadata.distribution("proto-plus").locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        yield
        return
    ours = {
        k: sys.modules.pop(k) for k in list(sys.modules) if k == "proto" or k.startswith("proto.")
    }
    sys.path.insert(0, site)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(site)  # the first occurrence: the one inserted above
        sys.modules.pop("proto", None)
        sys.modules.update(ours)
        importlib.invalidate_caches()


def _gcsfs():
    if "gcsfs" not in sys.modules:
        with _fs_lock:
            if "gcsfs" not in sys.modules:
                # Without this gcsfs first tries gRPC features (zonal buckets)
                # that an emulator lacks, costing a 60 s time-out per bucket.
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
                with _proto_plus_named_proto():
                    import gcsfs  # noqa: F401

                    # Imported lazily by gcsfs's uploads and by tensorboardX's
                    # gs:// writer: load them while proto-plus has its name.
                    import gcsfs.extended_gcsfs  # noqa: F401
                    import google.cloud.storage  # noqa: F401
    return sys.modules["gcsfs"]


def prepare_gcs() -> None:
    """Loads the GCS client libraries; call before anything else may (etils.epath,
    orbax, tensorboardX import them lazily and would trip on the `proto` name)."""
    _gcsfs()


def filesystem():
    """The gcsfs filesystem for gs:// (anonymous against an emulator)."""
    gcsfs = _gcsfs()
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    with _fs_lock:
        fs = _fs_cache.get(emulator)
        if fs is None:
            # No listing cache: other processes (the trainer's, the runner's)
            # write the same bucket, and a cached listing would hide their objects.
            fs = gcsfs.GCSFileSystem(
                token="anon" if emulator else None,
                use_listings_cache=False,
                skip_instance_cache=True,
            )
            _fs_cache[emulator] = fs
        return fs


def _key(uri: str) -> str:
    _check_bucket(uri)
    return uri[len(GCS) :].rstrip("/")


# -- operations ----------------------------------------------------------------------


def makedirs(uri: str) -> None:
    """Makes the directory and its parents; nothing to do on GCS."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        _check_bucket(uri)
        return
    os.makedirs(uri, exist_ok=True)


def exists(uri: str) -> bool:
    """True for a file, or a directory (on GCS: a prefix holding objects)."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        key = _key(uri)
        return filesystem().exists(key)
    return os.path.exists(uri)


def isfile(uri: str) -> bool:
    uri = os.fspath(uri)
    if is_gcs(uri):
        return filesystem().isfile(_key(uri))
    return os.path.isfile(uri)


def listdir(uri: str) -> list[str]:
    """Names directly under the directory, sorted; [] when there is none."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        key = _key(uri)
        try:
            entries = filesystem().ls(key, detail=False)
        except FileNotFoundError:
            return []
        return sorted({posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != key})
    if not os.path.isdir(uri):
        return []
    return sorted(os.listdir(uri))


def size(uri: str) -> int:
    """A file's size in bytes; FileNotFoundError when there is none."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        try:
            return int(filesystem().size(_key(uri)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri}: no such object") from None
    return os.path.getsize(uri)


def read_range(uri: str, start: int, length: int) -> bytes:
    """`length` bytes of a file from byte `start` (fewer at its end): one
    ranged GET on gs://, a seek and read locally."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        try:
            return filesystem().cat_file(_key(uri), start=start, end=start + length)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri}: no such object") from None
    with builtins.open(uri, "rb") as f:
        f.seek(start)
        return f.read(length)


def read_ranges(ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
    """The bytes of each (uri, start, length) range, in order (fewer at a
    file's end): the gs:// ones all at once (fsspec's cat_ranges: concurrent
    ranged GETs on the filesystem's event loop), local ones a seek and read
    each."""
    out: list[bytes] = [b""] * len(ranges)
    remote = [i for i, (uri, _, _) in enumerate(ranges) if is_gcs(os.fspath(uri))]
    if remote:
        try:
            parts = filesystem().cat_ranges(
                [_key(os.fspath(ranges[i][0])) for i in remote],
                [ranges[i][1] for i in remote],
                [ranges[i][1] + ranges[i][2] for i in remote],
                on_error="raise",
            )
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}: no such object") from None
        for i, part in zip(remote, parts):
            out[i] = bytes(part)
    for i, (uri, start, length) in enumerate(ranges):
        if not is_gcs(os.fspath(uri)):
            with builtins.open(uri, "rb") as f:
                f.seek(start)
                out[i] = f.read(length)
    return out


def read_bytes(uri: str) -> bytes:
    uri = os.fspath(uri)
    if is_gcs(uri):
        try:
            return filesystem().cat_file(_key(uri))
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri}: no such object") from None
    with builtins.open(uri, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Replaces the file atomically: readers see the old content or the new."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        filesystem().pipe_file(_key(uri), data)
        return
    directory = os.path.dirname(uri) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, uri)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str) -> None:
    """Deletes a file or a whole directory tree; nothing there is not an error."""
    uri = os.fspath(uri)
    if is_gcs(uri):
        fs = filesystem()
        key = _key(uri)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(key, recursive=True)
        return
    if os.path.isdir(uri):
        shutil.rmtree(uri)
    elif os.path.exists(uri):
        os.unlink(uri)


def upload_tree(local_dir: str, uri: str) -> None:
    """Copies every file under the local directory to `uri` (same relative names)."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local_dir)
            with builtins.open(path, "rb") as f:
                write_bytes(join(uri, *rel.split(os.sep)), f.read())


def open(uri: str, mode: str = "r"):  # noqa: A001  (the file-opening verb, as os and io say it)
    """A file object: modes r, rb, w, wb, a, ab. Writes to gs:// become visible on
    close (w) or on every flush and close (a); see the module docstring."""
    uri = os.fspath(uri)
    if mode not in ("r", "rb", "w", "wb", "a", "ab"):
        raise ValueError(f"storage.open: mode must be r, rb, w, wb, a or ab, got {mode!r}")
    if not is_gcs(uri):
        return builtins.open(uri, mode)
    fs, key = filesystem(), _key(uri)
    if mode.startswith("a"):
        return _AppendFile(fs, key, binary=mode == "ab")
    try:
        return fs.open(key, mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such object") from None


class _AppendFile(io.RawIOBase):
    """Append on GCS: the object's content in memory, the whole object rewritten
    on flush() when something was written since the last one."""

    def __init__(self, fs, key: str, *, binary: bool):
        self._fs, self._key, self._binary = fs, key, binary
        try:
            self._data = bytearray(fs.cat_file(key))
        except FileNotFoundError:
            self._data = bytearray()
        self._dirty = False

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.closed:
            raise ValueError(f"gs://{self._key}: write to a closed file")
        data = b.encode("utf-8") if isinstance(b, str) else bytes(b)
        if isinstance(b, str) and self._binary:
            raise TypeError("a bytes-like object is required in mode 'ab'")
        self._data += data
        self._dirty = True
        return len(b)

    def flush(self) -> None:
        if self._dirty and not self.closed:
            self._fs.pipe_file(self._key, bytes(self._data))
            self._dirty = False

    def close(self) -> None:
        if not self.closed:
            self.flush()
        super().close()


def local_dir(uri: str) -> str:
    """A directory on this machine standing for `uri`: the path itself when local;
    for gs:// a fixed folder under the temporary directory named after the URI
    (for what must be local: locks, files rendered before they are uploaded)."""
    uri = os.fspath(uri)
    if not is_gcs(uri):
        return uri
    import hashlib

    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), "code_lab", "gcs", f"{basename(uri)}-{digest}")
    os.makedirs(path, exist_ok=True)
    return path
