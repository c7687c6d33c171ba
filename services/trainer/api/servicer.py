"""TrainerService: translates messages to and from the Runs library."""

from __future__ import annotations

import grpc

from libs import errors
from libs.serving import status
from proto import trainer_pb2, trainer_pb2_grpc
from services.trainer.data_link import DataAuthError
from services.trainer.runs import Runs

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, runs: Runs):
        self._runs = runs

    def StartRun(self, request, context):
        try:
            run_id, resumed = self._runs.start(request.spec)
        except errors.FieldError as e:
            status.abort(context, e.within("spec"))
        except DataAuthError as e:
            # The trainer's credentials for the data service, not the caller's.
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        return trainer_pb2.StartRunResponse(run_id=run_id, resumed=resumed)

    def WatchRun(self, request, context):
        try:
            yield from self._runs.watch(
                request.run_id,
                request.from_sequence,
                checkpoints_only=request.checkpoints_only,
                cancelled=lambda: not context.is_active(),
            )
        except errors.FieldError as e:
            status.abort(context, e)

    def ListRuns(self, request, context):
        return trainer_pb2.ListRunsResponse(runs=self._runs.list())

    def StopRun(self, request, context):
        try:
            return trainer_pb2.StopRunResponse(status=self._runs.stop(request.run_id))
        except errors.FieldError as e:
            status.abort(context, e)
