"""The trainer's side of the data service: always through its gRPC API.

With no address, a local data service process is started (and stopped with
the run). Mixture checks are the data service's verdict, turned into
SpecErrors that name the RunSpec field. Batches arrive through the data
client's prefetching stream, which reconnects and resumes at the next step
when the data service restarts.
"""

from __future__ import annotations

import grpc

from services.data import client as data_client
from services.trainer import spec as spec_lib


class DataLink:
    def __init__(
        self,
        address: str,
        *,
        owned_process=None,
        seed: int = 0,
        global_batch_size: int = 8,
        seq_len: int = 256,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        self.address = address
        self._process = owned_process
        self._client = data_client.DataClient(address)
        self._request = dict(
            global_batch_size=global_batch_size,
            seq_len=seq_len,
            shard_index=shard_index,
            num_shards=num_shards,
        )
        self._seed = seed
        # A spec naming a dead address should fail in seconds, not after the
        # streaming client's two minutes of reconnecting.
        probe = data_client.DataClient(address, retry=data_client.RetryPolicy(give_up_s=10))
        try:
            sources = probe.list_sources(timeout=10)
        except grpc.RpcError as e:
            self.close()
            raise spec_lib.SpecError(
                "data_address",
                f"cannot reach data service at {address}: {e.code().name} {e.details()}",
            ) from None
        finally:
            probe.close()
        self.vocab_size = sources.vocab_size
        self.tokenizer_json = sources.tokenizer_json
        self.source_names = [s.name for s in sources.sources]

    def check_mixture(self, field: str, mixture) -> None:
        try:
            self._client.validate_mixture(mixture, timeout=60)
        except grpc.RpcError as e:
            # The service names its own field ("mixture.stages[0]...: ..."); re-root it.
            detail = (e.details() or e.code().name).removeprefix("mixture")
            sub, sep, message = detail.partition(": ")
            if sep and (not sub or sub.startswith((".", "["))):
                raise spec_lib.SpecError(
                    field + sub, message, not_found=e.code() == grpc.StatusCode.NOT_FOUND
                ) from None
            raise spec_lib.SpecError(
                field, detail, not_found=e.code() == grpc.StatusCode.NOT_FOUND
            ) from None

    def batches(self, phase_index: int, phase, start_step: int):
        """The phase's batches from `start_step`, prefetched."""
        with self._client.stream(
            phase.mixture, seed=self._seed + phase_index, start_step=start_step, **self._request
        ) as stream:
            # The data client's batches carry every field the loop reads (train.Batch).
            yield from stream

    def close(self) -> None:
        self._client.close()
        if self._process is not None:
            self._process.stop()
            self._process = None


def connect(
    spec,
    *,
    data_flags: list[str] | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    echo: bool = True,
) -> DataLink:
    """Opens the data side of `spec`: its data_address, or a local service
    serving the default corpus (built on first use)."""
    owned = None
    address = spec.data_address
    if not address:
        try:
            owned = data_client.start_local_server(
                extra_args=data_flags or (), timeout=900, echo=echo
            )
        except RuntimeError as e:
            raise spec_lib.SpecError(
                "data_address", f"no address given and the local data service failed to start: {e}"
            ) from None
        address = owned.address
    return DataLink(
        address,
        owned_process=owned,
        seed=spec.seed,
        global_batch_size=spec.global_batch_size,
        seq_len=spec.seq_len,
        shard_index=shard_index,
        num_shards=num_shards,
    )
