"""Local paths and gs:// URIs behind one set of functions (see storage.py)."""

from libs.storage.storage import (  # noqa: F401
    GCS,
    StorageError,
    basename,
    exists,
    filesystem,
    is_gcs,
    isfile,
    join,
    listdir,
    local_dir,
    makedirs,
    open,
    parent,
    prepare_gcs,
    read_bytes,
    read_text,
    remove,
    upload_tree,
    write_bytes,
    write_text,
)
