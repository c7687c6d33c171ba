"""Checkpoints on disk: the one format the trainer writes and the eval service reads.

Layout: `<checkpoint_dir>/<run_id>/<step>/` is one orbax checkpoint with three items:

    params  the model's nnx.Param state (tensorstore arrays)
    opt     the optimizer state (only the trainer reads it back)
    meta    JSON: model config, preset, lineage, tokenizer, data position

A checkpoint's URI is its step directory. It is *committed* once orbax has
finalised it (renamed its temporary directory locally, or written its commit
marker on GCS); a save killed half-way leaves only a temporary directory that
`load` refuses and `latest_step` ignores. The tokenizer travels inside `meta`
so a checkpoint can be scored with nothing else at hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from libs import storage
from libs.model import model as model_lib
from libs.model.config import ModelConfig

PARAMS, OPT, META = "params", "opt", "meta"


class CheckpointError(Exception):
    """A checkpoint cannot be used."""


class NotFoundError(CheckpointError):
    """Nothing is at the URI."""


class NotCommittedError(CheckpointError):
    """The save has not finished (or was killed): only a temporary directory exists."""


class CorruptError(CheckpointError):
    """The checkpoint is committed but cannot be read."""


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint loaded for inference."""

    uri: str
    step: int
    config: ModelConfig
    model: Any  # libs.model.model.Transformer
    meta: dict

    @property
    def lineage(self) -> dict:
        return lineage(self.meta)

    @property
    def tokenizer(self):
        """The tokenizer the model was trained with (tokenizers.Tokenizer)."""
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.meta["tokenizer_json"])


def lineage(meta: dict) -> dict:
    """Where a checkpoint's weights came from (the fields of trainer.proto's Lineage),
    derived from its one resumable record: the run's position and its RunSpec."""
    if "position" not in meta or "run_spec" not in meta:
        return dict(meta.get("lineage", {}))  # a checkpoint written with a separate copy
    pos, spec = meta["position"], meta["run_spec"]
    phases = spec.get("phases", [])
    phase = phases[min(pos["phase_index"], len(phases) - 1)]["name"] if phases else ""
    return {
        "run_id": spec.get("run_id", ""),
        "phase": phase,
        "parent_uri": pos["parent_uri"],
        "step": pos["step"],
        "phase_step": pos["phase_step"],
        "tokens_per_source": dict(pos["tokens_per_source"]),
        "tokens_seen": pos["tokens_seen"],
        "phases_done": list(pos["phases_done"]),
        "preset": spec.get("preset", ""),
    }


def _path(uri: str) -> epath.Path:
    # epath loads gcsfs on its first gs:// path; the storage layer must load
    # it first (see storage.prepare_gcs).
    if storage.is_gcs(uri):
        storage.prepare_gcs()
    return epath.Path(uri)


def _check_committed(path: epath.Path) -> None:
    if ocp.path.step.is_path_temporary(path):
        raise NotCommittedError(f"checkpoint {path}: a temporary directory, not committed")
    if not path.exists():
        tmp = [p for p in path.parent.glob(path.name + ".*") if ocp.path.step.is_path_temporary(p)]
        if tmp:
            raise NotCommittedError(
                f"checkpoint {path}: save in progress or killed ({tmp[0].name})"
            )
        raise NotFoundError(f"checkpoint {path}: no such checkpoint")
    if not ocp.path.step.is_path_finalized(path):
        raise NotCommittedError(f"checkpoint {path}: not committed")


def read_meta(uri: str) -> dict:
    """The JSON metadata of a committed checkpoint."""
    path = _path(uri)
    _check_committed(path)
    meta_dir = path / META
    try:
        handler = ocp.JsonCheckpointHandler()
        return handler.restore(meta_dir)
    except Exception as e:  # orbax raises several kinds for a broken item
        raise CorruptError(f"checkpoint {uri}: cannot read {META}: {e}") from e


def abstract_params(config: ModelConfig, shardings: dict | None = None) -> dict:
    """The model's parameters as a pure dict of shapes and dtypes (nothing
    allocated), placed by `shardings` (a matching dict) or on the first device."""
    pure = nnx.to_pure_dict(nnx.state(model_lib.abstract_model(config), nnx.Param))
    if shardings is None:
        shardings = jax.tree.map(lambda _: _local_sharding(), pure)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), pure, shardings
    )


def model_from_params(config: ModelConfig, params: dict):
    """A Transformer whose parameters are the pure dict `params`."""
    graphdef, state = nnx.split(model_lib.abstract_model(config), nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def param_shardings(config: ModelConfig, mesh) -> dict:
    """Where each parameter lives on `mesh`: its logical axes mapped by the
    config's sharding rules (libs/model/sharding.py), as the trainer places them."""
    from libs.model import sharding

    _, abstract_state = nnx.split(model_lib.abstract_model(config), nnx.Param)
    return nnx.to_pure_dict(sharding.state_shardings(abstract_state, mesh, config.sharding_rules))


def load(uri: str, mesh=None, attention: str | None = None) -> Checkpoint:
    """Loads a committed checkpoint's model for inference (read-only). With a
    `mesh`, each parameter is restored straight into its shards on the mesh's
    devices (param_shardings), whatever mesh wrote it, never whole on one
    device; without one, onto the first device. `attention`: the implementation
    the model computes with (default: the checkpoint's, which runs anywhere)."""
    meta = read_meta(uri)
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        if attention is not None:
            config = dataclasses.replace(config, attention=attention)
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptError(f"checkpoint {uri}: bad model_config in {META}: {e}") from e
    params = load_params(uri, config, None if mesh is None else param_shardings(config, mesh))
    return Checkpoint(
        uri=uri,
        step=int(meta.get("step", -1)),
        config=config,
        model=model_from_params(config, params),
        meta=meta,
    )


def load_params(uri: str, config: ModelConfig, shardings: dict | None = None) -> dict:
    """The parameters (pure dict) of a committed checkpoint, placed by `shardings`."""
    _check_committed(_path(uri))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(
                epath.Path(uri) / PARAMS, abstract_params(config, shardings)
            )
    except Exception as e:
        raise CorruptError(f"checkpoint {uri}: cannot read {PARAMS}: {e}") from e


def _local_sharding():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def load_optimizer(uri: str, abstract_opt_state):
    """The optimizer state of a committed checkpoint, shaped and placed like
    `abstract_opt_state` (ShapeDtypeStructs with shardings)."""
    _check_committed(_path(uri))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(epath.Path(uri) / OPT, abstract_opt_state)
    except Exception as e:
        raise CorruptError(f"checkpoint {uri}: cannot read {OPT}: {e}") from e


class CheckpointWriter:
    """Saves and restores one run's checkpoints with an orbax CheckpointManager.

    Saves are asynchronous: `save` returns once the arrays are copied off the
    device, and the commit happens in the background; `committed()` lists
    (step, uri) pairs that became visible since the last call, in order.
    """

    def __init__(self, directory: str, *, keep: int = 0, async_save: bool = True):
        self.directory = _path(os.fspath(directory))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._keep = keep
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=async_save,
                max_to_keep=None,  # deletion is ours: phase-final checkpoints are kept
                cleanup_tmp_directories=True,
            ),
            item_names=(PARAMS, OPT, META),
        )
        self._pending: list[int] = []
        self._protected: set[int] = set()

    def uri(self, step: int) -> str:
        return os.fspath(self.directory / str(step))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, params, opt_state, meta: dict, *, protect: bool = False) -> str:
        """Starts saving; `protect` keeps it from the keep-newest-N policy."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    PARAMS: ocp.args.StandardSave(params),
                    OPT: ocp.args.StandardSave(opt_state),
                    META: ocp.args.JsonSave(json.loads(json.dumps(meta))),
                }
            ),
            force=True,
        )
        self._pending.append(step)
        if protect:
            self._protected.add(step)
        return self.uri(step)

    def _is_committed(self, step: int) -> bool:
        path = self.directory / str(step)
        return path.exists() and ocp.path.step.is_path_finalized(path)

    def committed(self) -> list[tuple[int, str]]:
        """Checkpoints saved by this writer that have committed since last asked."""
        done = []
        for step in list(self._pending):
            path = self.directory / str(step)
            if path.exists() and ocp.path.step.is_path_finalized(path):
                done.append((step, self.uri(step)))
                self._pending.remove(step)
        if done:
            self._apply_keep_policy()
        return done

    def wait(self) -> list[tuple[int, str]]:
        """Blocks until every save has committed; returns those not yet reported."""
        self._manager.wait_until_finished()
        return self.committed()

    def _apply_keep_policy(self) -> None:
        if self._keep <= 0:
            return
        # Only committed steps: the manager lists a step while its save is still
        # in flight, and reading that one's metadata would fail.
        steps = [s for s in self.all_steps() if s not in self._pending and self._is_committed(s)]
        protected = self._protected | {s for s in steps if read_meta(self.uri(s)).get("phase_end")}
        candidates = [s for s in steps if s not in protected]
        for step in candidates[: max(0, len(candidates) - self._keep)]:
            self._manager.delete(step)

    def restore(self, step: int, abstract_params_state, abstract_opt_state):
        """(params, opt_state, meta) of a committed step, onto the given
        shardings (the abstract states carry them)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    PARAMS: ocp.args.StandardRestore(abstract_params_state),
                    OPT: ocp.args.StandardRestore(abstract_opt_state),
                    META: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[PARAMS], restored[OPT], restored[META]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
