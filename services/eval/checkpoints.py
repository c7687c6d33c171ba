"""From a checkpoint URI to a TextModel: loading through libs/checkpoint, and a cache.

`load_checkpoint(uri)` reads a committed checkpoint (model, config, tokenizer,
lineage) and wraps it in a LanguageModel; libs/checkpoint's errors become
errors.NotFound (nothing there, or not committed yet) or errors.FailedPrecondition
(committed but unreadable), naming the request field. `ModelCache` keeps the few most
recently used models so that repeated requests do not reload them.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Callable

from libs import errors


@dataclasses.dataclass
class LoadedCheckpoint:
    uri: str
    step: int
    lineage: dict
    model: Any  # a TextModel


def eval_mesh(devices):
    """The mesh evaluation runs on over `devices`, FSDP-style: parameters
    sharded over all of them by the trainer's rules, each batch split across
    them."""
    from libs.model import sharding

    return sharding.make_mesh(data=1, fsdp=len(devices), devices=list(devices))


def local_mesh():
    """eval_mesh over this host's devices; None with one device."""
    import jax

    devices = jax.local_devices()
    return None if len(devices) == 1 else eval_mesh(devices)


def eval_config(config, platform: str):
    """The model a checkpoint's `config` is evaluated as on devices of `platform`:
    the platform's attention kernel (splash on TPU), the rest as stored."""
    from libs.model import attention

    return dataclasses.replace(config, attention=attention.for_platform(platform))


_LOCAL = object()  # load_checkpoint's default mesh: local_mesh()


def load_checkpoint(
    uri: str, *, field: str = "checkpoint_uri", batch_size: int = 16, mesh=_LOCAL
) -> LoadedCheckpoint:
    """The committed checkpoint at `uri` as a LanguageModel: restored onto
    `mesh` (default: every local device, local_mesh()) and scoring across it;
    mesh=None: one device."""
    from libs.checkpoint import checkpoint as ckpt_lib
    from services.eval.lm import LanguageModel

    import jax

    from libs.model import attention

    if mesh is _LOCAL:
        mesh = local_mesh()
    if not uri:
        raise errors.InvalidArgument(field, "required")
    platform = (jax.local_devices() if mesh is None else mesh.devices.flat)[0].platform
    try:
        ckpt = ckpt_lib.load(uri, mesh=mesh, attention=attention.for_platform(platform))
    except (ckpt_lib.NotFoundError, ckpt_lib.NotCommittedError) as e:
        raise errors.NotFound(field, str(e)) from e
    except ckpt_lib.CheckpointError as e:
        raise errors.FailedPrecondition(field, str(e)) from e
    except (OSError, ValueError) as e:  # e.g. a malformed URI or unknown scheme
        raise errors.NotFound(field, f"cannot read {uri!r}: {e}") from e
    try:
        tokenizer = ckpt.tokenizer
    except Exception as e:  # noqa: BLE001  (missing or malformed tokenizer JSON)
        raise errors.FailedPrecondition(field, f"{uri}: no usable tokenizer: {e}")
    lineage = dict(ckpt.lineage or {})
    model = LanguageModel(ckpt.model, tokenizer, batch_size=batch_size, mesh=mesh)
    return LoadedCheckpoint(
        uri=uri, step=int(lineage.get("step", ckpt.step)), lineage=lineage, model=model
    )


class ModelCache:
    """Keeps the `capacity` most recently used checkpoints loaded (thread-safe)."""

    def __init__(
        self, loader: Callable[[str], LoadedCheckpoint] = load_checkpoint, capacity: int = 2
    ):
        self._loader = loader
        self._capacity = max(1, capacity)
        self._items: "collections.OrderedDict[str, LoadedCheckpoint]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, uri: str, field: str = "checkpoint_uri") -> LoadedCheckpoint:
        if not uri:
            raise errors.InvalidArgument(field, "required")
        with self._lock:
            if uri in self._items:
                self._items.move_to_end(uri)
                return self._items[uri]
            loading = self._loading.setdefault(uri, threading.Lock())
        with loading:  # one load per URI at a time
            with self._lock:
                if uri in self._items:
                    return self._items[uri]
            try:
                loaded = self._loader(uri)
            except errors.FieldError as e:
                if e.field != field:  # report the field of this request
                    raise type(e)(field, e.message) from e
                raise
            with self._lock:
                self._items[uri] = loaded
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
                self._loading.pop(uri, None)
            return loaded
