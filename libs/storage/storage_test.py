"""The storage layer against local paths and a GCS emulator started here.

Every test runs twice: on a temporary directory and on gs://bkt/<test> in
gcp-storage-emulator, so the two backends are held to the same behaviour.
"""

import os
import subprocess
import sys

import pytest

from libs import storage
from libs.storage import testing


@pytest.fixture(scope="module")
def gcs():
    with testing.gcs_emulator(bucket="bkt") as emulator:
        yield emulator


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    gcs = request.getfixturevalue("gcs")
    return gcs.uri(request.node.name.replace("[", "-").replace("]", ""))


def test_write_read_and_replace(root):
    path = storage.join(root, "a", "state.json")
    storage.makedirs(storage.parent(path))
    assert not storage.exists(path)
    storage.write_text(path, "one")
    assert storage.read_text(path) == "one"
    storage.write_text(path, "two")  # replaced whole
    assert storage.read_text(path) == "two"
    assert storage.exists(path) and storage.isfile(path)
    assert storage.exists(storage.join(root, "a"))
    assert not storage.isfile(storage.join(root, "a"))
    # Local atomic writes leave no temporary file beside the target.
    assert storage.listdir(storage.join(root, "a")) == ["state.json"]


def test_write_makes_parents_and_listdir(root):
    storage.write_bytes(storage.join(root, "d", "x", "1.bin"), b"\x00\x01")
    storage.write_text(storage.join(root, "d", "y.txt"), "y")
    assert storage.listdir(storage.join(root, "d")) == ["x", "y.txt"]
    assert storage.read_bytes(storage.join(root, "d", "x", "1.bin")) == b"\x00\x01"
    assert storage.listdir(storage.join(root, "nothing")) == []


def test_append_survives_reopen(root):
    storage.makedirs(root)
    path = storage.join(root, "metrics.jsonl")
    with storage.open(path, "a") as f:
        f.write("1\n")
        f.flush()
        # Visible after a flush, before the close: what a killed process leaves.
        assert storage.read_text(path) == "1\n"
        assert storage.size(path) == 2
        f.write("2\n")
    with storage.open(path, "a") as f:
        f.write("3\n")
    with storage.open(path) as f:
        assert f.read() == "1\n2\n3\n"
    with storage.open(path, "rb") as f:
        assert f.read() == b"1\n2\n3\n"
    assert storage.size(path) == 6
    assert storage.read_range(path, 2, 3) == b"2\n3"
    assert storage.read_range(path, 4, 10) == b"3\n"  # short at the end
    # Many ranges at once, in the order asked, the last short at the end.
    ranges = [(path, 4, 2), (path, 0, 2), (path, 2, 3), (path, 5, 10)]
    assert storage.read_ranges(ranges) == [b"3\n", b"1\n", b"2\n3", b"\n"]
    assert storage.read_ranges([]) == []
    with pytest.raises(FileNotFoundError):
        storage.read_ranges([(storage.join(root, "missing.jsonl"), 0, 1)])
    with pytest.raises(FileNotFoundError):
        storage.size(storage.join(root, "missing.jsonl"))


def test_open_for_writing_and_missing_files(root):
    storage.makedirs(root)
    path = storage.join(root, "report.md")
    with storage.open(path, "w") as f:
        f.write("# report\n")
    assert storage.read_text(path) == "# report\n"
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(root, "absent"))
    with pytest.raises(FileNotFoundError):
        storage.open(storage.join(root, "absent"))
    with pytest.raises(ValueError, match="mode"):
        storage.open(path, "r+")


def test_remove_and_upload_tree(root, tmp_path):
    local = tmp_path / "figures"
    (local / "sub").mkdir(parents=True)
    (local / "a.png").write_bytes(b"png")
    (local / "sub" / "b.png").write_bytes(b"png2")
    target = storage.join(root, "figures")
    storage.upload_tree(str(local), target)
    assert storage.listdir(target) == ["a.png", "sub"]
    assert storage.read_bytes(storage.join(target, "sub", "b.png")) == b"png2"
    storage.remove(target)
    assert not storage.exists(target)
    storage.remove(target)  # twice: nothing there is fine


def test_uri_helpers():
    assert storage.join("gs://b/x", "y", "z") == "gs://b/x/y/z"
    assert storage.parent("gs://b/x/y") == "gs://b/x"
    assert storage.parent("gs://b/x") == "gs://b"
    assert storage.basename("gs://b/x/y/") == "y"
    assert storage.is_gcs("gs://b") and not storage.is_gcs("/tmp/gs:")
    assert storage.local_dir("/tmp/a") == "/tmp/a"
    one, two = storage.local_dir("gs://b/study"), storage.local_dir("gs://b/other")
    assert one != two and os.path.isdir(one) and "study" in one
    with pytest.raises(storage.StorageError, match="bucket"):
        storage.write_text("gs:///x", "no bucket")


def test_our_proto_package_and_gcs_clients_load_together(gcs):
    """proto/ (ours) and proto-plus (google-cloud-storage's) share a name."""
    code = (
        "from proto import trainer_pb2\n"
        "from libs import storage\n"
        f"storage.write_text('{gcs.uri('clash', 'x')}', 'ok')\n"
        "from proto import data_pb2\n"
        "import google.cloud.storage as gcs_client\n"
        "from etils import epath\n"
        f"print(epath.Path('{gcs.uri('clash', 'x')}').read_text(), trainer_pb2.RunSpec.__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "RunSpec"]


def test_tensorboard_writes_to_gcs(gcs):
    # In a child process: tensorboardX uploads its GCS file again when the
    # writer is collected, which must happen while the emulator still runs.
    directory = gcs.uri("tb")
    code = (
        "from libs import storage\n"
        "storage.prepare_gcs()\n"
        "from tensorboardX import SummaryWriter\n"
        f"writer = SummaryWriter('{directory}')\n"
        "writer.add_scalar('loss/all', 1.5, 1)\n"
        "writer.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (name,) = storage.listdir(directory)
    assert name.startswith("events.out.tfevents")
    assert len(storage.read_bytes(storage.join(directory, name))) > 40
