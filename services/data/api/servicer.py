"""DataService over gRPC: translates messages to library calls and back.

Nothing here knows how a corpus is read or a batch assembled (mixture.py);
errors the library raises name the offending request field and end the call
through libs/serving/status.
"""

from __future__ import annotations

import grpc

from libs import errors
from libs.serving import status
from proto import data_pb2, data_pb2_grpc
from services.data import mixture as mixture_lib
from services.data.api import wire

SERVICE_NAME = wire.SERVICE_NAME


def add_to_server(data_servicer: "DataServicer", server: grpc.Server) -> None:
    """Registers the servicer like the generated add_DataServiceServicer_to_
    server, except that the streams' responses are pre-serialized bytes
    (wire.encode_batch, wire.encode_group): protobuf-python's own
    serialization of a large bytes message cost more than assembling the
    batch."""
    handlers = {
        "ListSources": grpc.unary_unary_rpc_method_handler(
            data_servicer.ListSources,
            request_deserializer=data_pb2.ListSourcesRequest.FromString,
            response_serializer=data_pb2.ListSourcesResponse.SerializeToString,
        ),
        "ValidateMixture": grpc.unary_unary_rpc_method_handler(
            data_servicer.ValidateMixture,
            request_deserializer=data_pb2.ValidateMixtureRequest.FromString,
            response_serializer=data_pb2.ValidateMixtureResponse.SerializeToString,
        ),
        "StreamBatches": grpc.unary_stream_rpc_method_handler(
            data_servicer.StreamBatches,
            request_deserializer=data_pb2.StreamBatchesRequest.FromString,
            response_serializer=_serialize,
        ),
        "StreamBatchGroups": grpc.unary_stream_rpc_method_handler(
            data_servicer.StreamBatchGroups,
            request_deserializer=data_pb2.StreamBatchesRequest.FromString,
            response_serializer=_serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _serialize(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class DataServicer(data_pb2_grpc.DataServiceServicer):
    """Serves one corpus. Work ahead is bounded: a stream's generator runs
    only when gRPC has sent the previous message, and HTTP/2 flow control
    stops it when the client stops reading; `read_ahead` > 0 adds a thread
    that assembles that many batches ahead (it cost CPU in the benchmark:
    the client's own prefetch queue already overlaps transfer and use)."""

    def __init__(self, corpus, *, read_ahead: int = 0):
        self.corpus = corpus
        self.read_ahead = read_ahead
        self._available = {s.name: s.num_tokens for s in corpus.sources}
        self._token_bytes = wire.token_width(corpus.vocab_size)
        self._tokenizer_json = corpus.tokenizer_json()

    def ListSources(self, request, context):
        c = self.corpus
        return data_pb2.ListSourcesResponse(
            sources=[
                data_pb2.SourceInfo(
                    name=s.name,
                    kind=s.kind,
                    num_tokens=s.num_tokens,
                    num_documents=s.num_documents,
                    content_hash=s.content_hash,
                    description=s.description,
                    heldout_documents=s.heldout_documents,
                )
                for s in c.sources
            ],
            corpus_id=c.corpus_id,
            vocab_size=c.vocab_size,
            eos_id=c.eos_id,
            pad_id=c.pad_id,
            tokenizer_json=self._tokenizer_json,
        )

    def ValidateMixture(self, request, context):
        try:
            budget, plan = mixture_lib.plan(
                wire.mixture_from_proto(request.mixture), self._available, request.token_budget
            )
        except errors.FieldError as e:
            status.abort(context, e)
        return data_pb2.ValidateMixtureResponse(
            plan=[
                data_pb2.SourcePlan(source=name, tokens=t, epochs=e)
                for name, (t, e) in plan.items()
            ],
            token_budget=budget,
        )

    def StreamBatches(self, request, context):
        batches, _ = self._open(request, context, grouped=False)
        return self._send(
            batches, 1, context, lambda group: wire.encode_batch(group[0], self._token_bytes)
        )

    def StreamBatchGroups(self, request, context):
        batches, size = self._open(request, context, grouped=True)
        return self._send(
            batches, size, context, lambda group: wire.encode_group(group, self._token_bytes)
        )

    def _open(self, request, context, *, grouped: bool):
        """The request's batches (PackedBatch for the PACKED encoding) and
        batches per message, or the call aborted with the field at fault."""
        try:
            reader = mixture_lib.BatchReader(
                self.corpus,
                wire.mixture_from_proto(request.mixture),
                seed=request.seed,
                global_batch_size=request.global_batch_size,
                seq_len=request.seq_len,
                shard_index=request.shard_index,
                num_shards=request.num_shards,
            )
            packed = request.encoding == data_pb2.BATCH_ENCODING_PACKED
            if not packed and request.encoding != data_pb2.BATCH_ENCODING_FULL:
                raise errors.InvalidArgument(
                    "encoding", f"unknown BatchEncoding {request.encoding}"
                )
            if grouped:
                size = wire.batches_per_message(
                    request.batches_per_message,
                    reader.rows,
                    request.seq_len,
                    packed=packed,
                    token_bytes=self._token_bytes,
                )
            elif request.batches_per_message not in (0, 1):
                raise errors.InvalidArgument(
                    "batches_per_message",
                    f"StreamBatches sends one batch a message, got {request.batches_per_message}"
                    " (StreamBatchGroups sends several)",
                )
            else:
                size = 1
            batches = reader.iterate(
                request.start_step, request.num_steps, read_ahead=self.read_ahead, packed=packed
            )
            return batches, size
        except errors.FieldError as e:
            status.abort(context, e)

    @staticmethod
    def _send(batches, size: int, context, encode):
        """Yields encode(group) for consecutive groups of `size` batches. An
        error mid-stream (e.g. the epoch cap reached) ends the call with its
        status after the batches before it have been sent."""
        group = []
        try:
            for batch in batches:
                group.append(batch)
                if len(group) == size:
                    yield encode(group)
                    group = []
        except errors.FieldError as e:
            if group:
                yield encode(group)
            status.abort(context, e)
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()
        if group:
            yield encode(group)
