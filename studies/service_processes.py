"""The three services a study drives, as child processes of the runner.

Each is started as `python -m services.<name>.api.main` by libs/serving/process,
which (1) has the kernel SIGTERM the child when the runner dies, even by
SIGKILL, and (2) here makes the child hold a shared lock on
`<out>/services.lock` for its whole life. A runner started again takes that
lock exclusively before starting its own services, so it waits for any
orphan of a killed runner to finish exiting: two trainers never write one
run's checkpoints at once.

(Not named `services.py`: the runner binary runs with studies/ first on its
path, where such a module would hide the top-level `services` package.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

import grpc

from libs import errors
from libs.serving import process, status
from libs.serving import server as serving
from libs.serving.credentials import ClientCredentials
from proto import data_pb2, data_pb2_grpc, eval_pb2_grpc, trainer_pb2_grpc

LOCK_FILE = "services.lock"

# name -> (module, flags every start passes)
MODULES = {
    "data": ("services.data.api.main", []),
    "trainer": ("services.trainer.api.main", ["--serve"]),
    "eval": ("services.eval.api.main", []),
}
START_TIMEOUT_S = {"data": 1800.0, "trainer": 300.0, "eval": 300.0}


def lock_path(out_dir: str) -> str:
    return os.path.join(out_dir, LOCK_FILE)


def wait_for_orphans(out_dir: str, log=print, timeout: float = 120.0) -> None:
    """Blocks until no service of an earlier runner on `out_dir` is alive."""
    os.makedirs(out_dir, exist_ok=True)
    process.wait_for_lock(
        lock_path(out_dir),
        timeout,
        on_wait=lambda: log("waiting for the services of an earlier runner to exit ..."),
    )


@dataclasses.dataclass
class Service:
    name: str
    address: str
    process: process.ServiceProcess | None = None  # None: not ours
    channel: grpc.Channel | None = None

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None:
            self.process.stop()
            self.process = None


class Services:
    """Lazily started services: nothing starts until a stub is asked for, so
    a study with nothing left to do never starts a process."""

    def __init__(
        self,
        out_dir: str,
        *,
        addresses: dict[str, str] | None = None,
        flags: dict[str, list[str]] | None = None,
        log=print,
        echo: bool = False,
        data_credentials: ClientCredentials = ClientCredentials(),
    ):
        self._out_dir = out_dir
        # The runner's own calls to the data service (ListSources) carry the
        # token and use TLS as the trainer's do.
        self._data_credentials = data_credentials
        self._addresses = {k: v for k, v in (addresses or {}).items() if v}
        self._flags = flags or {}
        self._log = log
        self._echo = echo
        self._running: dict[str, Service] = {}
        self._checked_orphans = False
        self._lock = threading.RLock()

    def address(self, name: str) -> str:
        return self._service(name).address

    def channel(self, name: str) -> grpc.Channel:
        with self._lock:
            service = self._service(name)
            if service.channel is None:
                roots = self._data_credentials.root_certificates if name == "data" else None
                if roots is not None:
                    service.channel = grpc.secure_channel(
                        service.address,
                        grpc.ssl_channel_credentials(root_certificates=roots),
                        options=serving.channel_options(),
                    )
                else:
                    service.channel = grpc.insecure_channel(
                        service.address, options=serving.channel_options()
                    )
            return service.channel

    def data(self) -> data_pb2_grpc.DataServiceStub:
        return data_pb2_grpc.DataServiceStub(self.channel("data"))

    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.channel("trainer"))

    def eval(self) -> eval_pb2_grpc.EvalServiceStub:
        return eval_pb2_grpc.EvalServiceStub(self.channel("eval"))

    def source_kinds(self) -> dict[str, str]:
        token = self._data_credentials.token
        response = self.data().ListSources(
            data_pb2.ListSourcesRequest(),
            timeout=120,
            metadata=(("authorization", f"Bearer {token}"),) if token else None,
        )
        return {s.name: s.kind for s in response.sources}

    def check_mixture(self, field: str, mixture) -> None:
        """The data service's verdict on a mixture: raises the libraries' field
        error it sends, named from `field` (the mixture's field in a RunSpec)."""
        token = self._data_credentials.token
        try:
            self.data().ValidateMixture(
                data_pb2.ValidateMixtureRequest(mixture=mixture),
                timeout=120,
                metadata=(("authorization", f"Bearer {token}"),) if token else None,
            )
        except grpc.RpcError as e:
            error = status.field_error(e)
            if error is None:
                raise errors.Unavailable(field, f"{e.code().name}: {e.details()}") from None
            raise error.within(field, root="mixture") from None

    def _service(self, name: str) -> Service:
        with self._lock:
            if name in self._running:
                return self._running[name]
            if name in self._addresses:
                service = Service(name, self._addresses[name])
            else:
                service = self._start(name)
            self._running[name] = service
            return service

    def started(self) -> list[str]:
        """Services this runner started itself (not given by address)."""
        return [n for n, s in self._running.items() if s.process is not None]

    def _start(self, name: str) -> Service:
        if not self._checked_orphans:
            wait_for_orphans(self._out_dir, log=self._log)
            self._checked_orphans = True
        module, flags = MODULES[name]
        argv = process.module_command(module) + flags + self._flags.get(name, [])
        self._log(f"starting the {name} service ...")
        started = time.monotonic()
        child = process.start(
            argv,
            env=process.child_env(self._jax_cache_env()),
            timeout=START_TIMEOUT_S[name],
            echo=self._echo,
            shared_lock=lock_path(self._out_dir),
        )
        self._log(f"{name} service at {child.address} ({time.monotonic() - started:.0f}s)")
        return Service(name, child.address, process=child)

    def _jax_cache_env(self) -> dict[str, str]:
        """JAX's persistent compilation cache in the study's directory (unless the
        environment names one): the trainer compiles the same step for every phase
        of a preset and batch shape, and with the cache only the first compiles."""
        if "JAX_COMPILATION_CACHE_DIR" in os.environ:
            return {}
        return {
            "JAX_COMPILATION_CACHE_DIR": os.path.join(self._out_dir, "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }

    def close(self) -> None:
        """Stops the services this runner started (SIGTERM, then SIGKILL)."""
        with self._lock:
            for service in reversed(list(self._running.values())):
                with contextlib.suppress(Exception):
                    service.stop()
            self._running.clear()

    def logs(self, name: str, lines: int = 30) -> str:
        service = self._running.get(name)
        if service is None or service.process is None:
            return ""
        return "\n".join(service.process.log_lines[-lines:])
