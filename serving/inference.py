"""Running one request on a loaded version: Predict, Classify and GetModelMetadata, transport-free.

Owns the TF Serving protocol's names (signature and method names), calling a signature with validated
tensors (TensorFlow errors mapped to TF Serving's status codes) and building the response protos. The gRPC
service calls these directly, warmup replay (:meth:`serving.versions.Servable.warmup`) replays logged
requests through them, and REST shares :func:`call_signature`, so a request gets the same answer whichever
way it arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.errors import ServingError, first_line
from serving.validation import examples_from_input, prepare_inputs, to_ndarray

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, predict_pb2

if TYPE_CHECKING:  # serving.versions imports this module (warmup replays requests through it)
    from serving.versions import Servable

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"

_TF_TO_GRPC = {
    tf.errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    tf.errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    tf.errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    tf.errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    tf.errors.OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    tf.errors.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    tf.errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    tf.errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
}


def call_signature(servable: Servable, signature: str, tensors: Mapping[str, tf.Tensor]) -> dict:
    _, fn = servable.signature(signature)
    try:
        outputs = fn(**tensors)
    except tf.errors.OpError as err:
        code = next((c for cls, c in _TF_TO_GRPC.items() if isinstance(err, cls)), grpc.StatusCode.INTERNAL)
        raise ServingError(code, first_line(err.message)) from None
    except UnicodeDecodeError:
        # TensorFlow quotes the offending input in its message; with binary garbage that quote is not UTF-8
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Could not parse example input: signature {signature!r} received bytes that are not "
            "a serialized tf.Example",
        ) from None
    except (TypeError, ValueError) as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, first_line(str(err))) from None
    return {k: v.numpy() for k, v in outputs.items()}


def run_predict(servable: Servable, request, max_batch_size: int | None):
    signature, _ = servable.signature(request.model_spec.signature_name)
    arrays = {name: to_ndarray(name, proto, max_batch_size) for name, proto in request.inputs.items()}
    outputs = call_signature(servable, signature, prepare_inputs(servable, signature, arrays, max_batch_size))
    wanted = list(request.output_filter) or list(outputs)
    unknown = [k for k in wanted if k not in outputs]
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output tensor alias not found in signature {signature!r}: {unknown}; "
            f"outputs: {sorted(outputs)}",
        )
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
    return response


def run_classify(servable: Servable, request, max_batch_size: int | None):
    signature, _ = servable.signature(request.model_spec.signature_name)
    method = servable.method_name(signature)
    if method != CLASSIFY_METHOD:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: "
            f"{method} (signature {signature!r}; use signature_name='classify')",
        )
    examples = examples_from_input(request.input)
    specs = servable.input_specs[signature]
    if len(specs) != 1:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"classification signature {signature!r} must have exactly one input",
        )
    (input_name,) = specs
    array = np.array(examples, dtype=object)
    outputs = call_signature(
        servable, signature, prepare_inputs(servable, signature, {input_name: array}, max_batch_size)
    )
    scores, classes = outputs.get("scores"), outputs.get("classes")
    if scores is None:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION, f"signature {signature!r} has no 'scores' output"
        )
    response = classification_pb2.ClassificationResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature
    for i, row in enumerate(scores):
        result = response.result.classifications.add()
        for j, score in enumerate(row):
            label = classes[i][j].decode() if classes is not None else str(j)
            result.classes.add(label=label, score=float(score))
    return response


def run_metadata(servable: Servable, request):
    fields = list(request.metadata_field)
    if fields != ["signature_def"]:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Metadata field(s) {fields} not supported: request exactly ['signature_def']",
        )
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in servable.signature_defs.items():
        if not name.startswith("__"):
            sig_map.signature_def[name].CopyFrom(sig)
    response.metadata["signature_def"].Pack(sig_map)
    return response
