"""The trainer's side of the data service: always through its gRPC API.

With no address, a local data service process is started (and stopped with
the run). With several addresses (RunSpec.data_addresses: replicas serving
the same corpus), process i of the run reads replica i mod R; since a batch
is a pure function of the request, every replica serves the same bytes.
The data service's bearer token and CA certificate (ClientCredentials) go
with every call. Mixture checks are the data service's verdict, its field
errors re-rooted to name the RunSpec field; a refused token is a
DataAuthError, said plainly. Batches arrive through the data client's
prefetching stream, which reconnects and resumes at the next step when the
data service restarts.
"""

from __future__ import annotations

import grpc

from libs import errors
from libs.serving import status
from libs.serving.credentials import ClientCredentials
from services.data.api import client as data_client


class DataAuthError(RuntimeError):
    """The data service refused the trainer's credentials (UNAUTHENTICATED)."""


def addresses_of(spec) -> list[str]:
    """The data-service replicas of a spec; [] means start a local service."""
    replicas = list(spec.data_addresses)
    for i, address in enumerate(replicas):
        if not address.strip():
            raise errors.InvalidArgument(f"data_addresses[{i}]", "empty address")
    if spec.data_address and replicas and spec.data_address not in replicas:
        raise errors.InvalidArgument(
            "data_address",
            f"{spec.data_address!r} is not one of data_addresses; give one or the other",
        )
    return replicas or ([spec.data_address] if spec.data_address else [])


def replica_for(addresses: list[str], process_index: int) -> str:
    """Process i reads replica i mod R."""
    return addresses[process_index % len(addresses)]


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
        credentials: ClientCredentials = ClientCredentials(),
        field: str = "data_address",
    ):
        self.address = address
        self._process = owned_process
        client_args = dict(
            auth_token=credentials.token, root_certificates=credentials.root_certificates
        )
        self._client = data_client.DataClient(address, **client_args)
        self._request = dict(
            global_batch_size=global_batch_size,
            seq_len=seq_len,
            shard_index=shard_index,
            num_shards=num_shards,
        )
        self._seed = seed
        # A spec naming a dead address should fail in seconds, not after the
        # streaming client's two minutes of reconnecting.
        probe = data_client.DataClient(
            address, retry=data_client.RetryPolicy(give_up_s=10), **client_args
        )
        try:
            sources = probe.list_sources(timeout=10)
        except grpc.RpcError as e:
            self.close()
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise DataAuthError(
                    f"UNAUTHENTICATED: the data service at {address} refused the trainer "
                    f"({e.details()}); "
                    + (
                        "its token is not the one the service expects"
                        if credentials.token
                        else "give the trainer the service's token with --data_auth_token_file"
                    )
                ) from None
            raise errors.InvalidArgument(
                field,
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
            error = status.field_error(e)
            if error is None:
                raise errors.InvalidArgument(field, e.details() or e.code().name) from None
            # The service names its request's field ("mixture.stages[0]..."); re-root it.
            raise error.within(field, root="mixture") from None

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
    credentials: ClientCredentials = ClientCredentials(),
) -> DataLink:
    """Opens the data side of `spec` for process `shard_index` of `num_shards`:
    its replica of data_addresses (or data_address), or a local service
    serving the default corpus (built on first use)."""
    owned = None
    addresses = addresses_of(spec)
    field = "data_addresses" if spec.data_addresses else "data_address"
    if addresses:
        address = replica_for(addresses, shard_index)
        if spec.data_addresses:
            field = f"data_addresses[{addresses.index(address)}]"
    else:
        try:
            owned = data_client.start_local_server(
                extra_args=data_flags or (), timeout=900, echo=echo
            )
        except RuntimeError as e:
            raise errors.InvalidArgument(
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
        credentials=credentials,
        field=field,
    )
