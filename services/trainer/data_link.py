"""The trainer's side of the data service: always through its gRPC API.

With no address, a local data service process is started (and stopped with
the run). Mixture checks are the data service's verdict, turned into
SpecErrors that name the RunSpec field.
"""

from __future__ import annotations

import grpc

from libs.serving import process as service_process
from libs.serving import server as serving
from proto import data_pb2, data_pb2_grpc
from services.data import client as data_client
from services.trainer import spec as spec_lib
from services.trainer.train import Batch

# The local data service builds (once) and serves the default corpus.
LOCAL_DATA_SERVICE = "services.data.main"


class DataLink:
    def __init__(self, address: str, *, owned_process=None, seed: int = 0,
                 global_batch_size: int = 8, seq_len: int = 256, shard_index: int = 0,
                 num_shards: int = 1):
        self.address = address
        self._process = owned_process
        self._channel = grpc.insecure_channel(address, options=serving.channel_options())
        self._stub = data_pb2_grpc.DataServiceStub(self._channel)
        self._request = dict(seed=seed, global_batch_size=global_batch_size, seq_len=seq_len,
                             shard_index=shard_index, num_shards=num_shards)
        try:
            sources = self._stub.ListSources(data_pb2.ListSourcesRequest(), timeout=60)
        except grpc.RpcError as e:
            self.close()
            raise spec_lib.SpecError("data_address", f"cannot reach data service at {address}: "
                                     f"{e.code().name} {e.details()}") from None
        self.vocab_size = sources.vocab_size
        self.tokenizer_json = sources.tokenizer_json
        self.source_names = [s.name for s in sources.sources]

    def check_mixture(self, field: str, mixture: data_pb2.MixtureSpec) -> None:
        try:
            self._stub.ValidateMixture(data_pb2.ValidateMixtureRequest(mixture=mixture), timeout=60)
        except grpc.RpcError as e:
            detail = e.details() or ""
            # The service names its own field ("mixture.stages[0]..."); re-root it.
            detail = detail.removeprefix("mixture.").removeprefix("mixture")
            raise spec_lib.SpecError(
                f"{field}.{detail}" if detail and not detail.startswith(":") else field,
                "" if detail else e.code().name,
                not_found=e.code() == grpc.StatusCode.NOT_FOUND) from None

    def batches(self, phase_index: int, phase, start_step: int):
        """The phase's batches from `start_step`, prefetched, resuming over
        data service restarts."""
        stream = data_client.BatchStream(
            self.address, mixture=phase.mixture, start_step=start_step,
            seed=self._request["seed"] + phase_index,
            global_batch_size=self._request["global_batch_size"],
            seq_len=self._request["seq_len"],
            shard_index=self._request["shard_index"], num_shards=self._request["num_shards"],
        )
        for b in stream:
            yield Batch(tokens=b.tokens, targets=b.targets, segment_ids=b.segment_ids,
                        positions=b.positions, loss_mask=b.loss_mask, source_ids=b.source_ids,
                        source_names=list(b.source_names))

    def close(self) -> None:
        self._channel.close()
        if self._process is not None:
            self._process.stop()
            self._process = None


def connect(spec, *, data_flags: list[str] | None = None, shard_index: int = 0,
            num_shards: int = 1, echo: bool = True) -> DataLink:
    """Opens the data side of `spec`: its data_address, or a local service."""
    owned = None
    address = spec.data_address
    if not address:
        argv = service_process.module_command(LOCAL_DATA_SERVICE) + (data_flags or [])
        try:
            owned = service_process.start(argv, timeout=900, echo=echo)
        except RuntimeError as e:
            raise spec_lib.SpecError("data_address", f"no address given and the local data "
                                     f"service failed to start: {e}") from None
        address = owned.address
    return DataLink(address, owned_process=owned, seed=spec.seed,
                    global_batch_size=spec.global_batch_size, seq_len=spec.seq_len,
                    shard_index=shard_index, num_shards=num_shards)
