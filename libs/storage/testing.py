"""A Cloud Storage emulator for tests: gcp-storage-emulator as a child process.

    with testing.gcs_emulator(bucket="bkt") as gcs:
        gcs.env        # the variables that point every client at it
        ...            # os.environ holds them for the duration

The emulator serves the GCS JSON API on a free loopback port, in memory, with
one bucket. The environment set here is what gcsfs, google-cloud-storage
(STORAGE_EMULATOR_HOST, anonymous), and tensorstore (TENSORSTORE_GCS_HTTP_URL
with a fake token) read; child processes started afterwards inherit it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time

# Run in the emulator's process. Three gaps between gcp-storage-emulator and
# GCS, closed here because tensorstore (checkpoints) depends on them:
# - it serves one request at a time with socketserver's listen backlog of 5,
#   and tensorstore opens dozens of connections at once: a deep backlog makes
#   them wait instead of being refused;
# - a media download carries no x-goog-generation header, which tensorstore
#   reads to make its next write conditional ("Malformed StorageGeneration");
# - uploads ignore ifGenerationMatch, the condition OCDBT's manifest
#   updates rely on (412 when it does not hold, as GCS answers).
SERVE = """
import http.server, sys, threading
from http import HTTPStatus
http.server.HTTPServer.request_queue_size = 1024
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.exceptions import NotFound

def _current(storage, bucket, name):
    try:
        return storage.get_file_obj(bucket, name)
    except NotFound:
        return None

_download = objects.download
def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    obj = _current(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
objects.download = download

_insert = objects.insert
def insert(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    if wanted:
        name = request.query.get("name", [None])[0]
        if name is None and isinstance(request.data, dict):
            name = request.data.get("meta", {}).get("name")
        obj = _current(storage, request.params["bucket_name"], name) if name else None
        have = str(obj["generation"]) if obj is not None else "0"
        if wanted[0] != have:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            return
    return _insert(request, response, storage, *args, **kwargs)
objects.insert = insert

from gcp_storage_emulator.server import create_server
server = create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2])
server.start()
print("emulator listening", flush=True)
threading.Event().wait()
"""


@dataclasses.dataclass
class Emulator:
    address: str
    bucket: str
    env: dict[str, str]
    process: subprocess.Popen

    def uri(self, *parts: str) -> str:
        return "gs://" + "/".join((self.bucket,) + parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
    """The variables that point gcsfs, google-cloud-storage and tensorstore at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": "test",
    }


@contextlib.contextmanager
def gcs_emulator(bucket: str = "bkt", timeout: float = 60.0):
    port = _free_port()
    # The emulator logs every request: to a file, since an undrained pipe
    # fills and blocks its (single) serving thread.
    log = tempfile.NamedTemporaryFile("w+", prefix="gcs-emulator-", suffix=".log")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port), bucket],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the GCS emulator exited: {log.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the GCS emulator did not listen on {port} in {timeout}s")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        env = client_env(url)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield Emulator(address=url, bucket=bucket, env=env, process=process)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        process.kill()
        process.wait()
        log.close()
