"""The gRPC services: TF Serving's ``PredictionService`` and ``ModelService`` over a :class:`ModelManager`.

Owns the mapping of each RPC to its implementation (:mod:`serving.inference`, the manager's status) and
the translation of errors into gRPC aborts: a :class:`ServingError` keeps its code and message, anything
else is ``INTERNAL`` with one log line, and never kills a worker. Methods tfsr does not support answer
``UNIMPLEMENTED``. The server (:mod:`serving.server`) binds it to a port.
"""

from __future__ import annotations

import logging

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.errors import ServingError, first_line
from serving.inference import run_classify, run_metadata, run_predict
from serving.versions import ModelManager

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    status_pb2,
)

log = logging.getLogger("tfsr.serving")


class Servicer(
    prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer
):
    def __init__(self, manager: ModelManager, max_batch_size: int):
        self.manager = manager
        self.max_batch_size = max_batch_size

    def _handle(self, context, fn):
        try:
            return fn()
        except ServingError as err:
            context.abort(err.code, err.message)
        except Exception as err:  # never let a request kill the worker; report it
            log.exception("internal error")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {first_line(str(err))}")

    def Predict(self, request, context):
        return self._handle(
            context,
            lambda: run_predict(self.manager.resolve(request.model_spec), request, self.max_batch_size),
        )

    def Classify(self, request, context):
        return self._handle(
            context,
            lambda: run_classify(self.manager.resolve(request.model_spec), request, self.max_batch_size),
        )

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by tfsr models (use Predict)")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported (use Predict)")

    def GetModelMetadata(self, request, context):
        return self._handle(context, lambda: run_metadata(self.manager.resolve(request.model_spec), request))

    def GetModelStatus(self, request, context):
        def status():
            spec = request.model_spec
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for v, st in self.manager.status(spec.name, version):
                response.model_version_status.add(
                    version=v,
                    state=st.state,
                    status=status_pb2.StatusProto(error_code=st.error_code, error_message=st.error_message),
                )
            return response

        return self._handle(context, status)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "config reload is not supported: restart the server")
