"""A local model server speaking TF Serving's gRPC API (and its REST predict endpoint).

The stock ``tensorflow_model_server`` cannot be installed on our machines, so this server implements the
parts of its API that tfsr clients use, over the protos of ``tensorflow-serving-api``:

* ``tensorflow.serving.PredictionService``: ``Predict``, ``Classify``, ``GetModelMetadata``;
* ``tensorflow.serving.ModelService``: ``GetModelStatus``;
* REST (optional, ``--rest_api_port``): ``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict`` and
  ``GET /v1/models/<name>[/versions/<v>]``, in TF Serving's JSON formats.

It reads the same ``models.config`` (ModelServerConfig text proto) as the real server, or a single
``--model_name``/``--model_base_path``; serves the versions its version policy asks for; polls the base paths
and hot-swaps new versions (a new version is loaded and warmed up with ``assets.extra/
tf_serving_warmup_requests`` before it takes traffic; in-flight requests finish on the version they started
on); keeps serving the old version when a new one fails to load, and reports the failure in
``GetModelStatus``. Errors carry TF Serving's status codes. SavedModels are loaded with
``tf.saved_model.load`` (TF Text ops registered first): this module never imports ``tfsr.models`` or
``tfsr.layers``, so it serves exactly what the stock model server would.

Usage::

    tfsr serve --model_config_file serving/models.config --port 8500 --rest_api_port 8501
    tfsr serve --model_name tfsr --model_base_path saved_models/tfsr
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.cli import UsageError

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

try:  # registers the TF Text ops the stock model server links in
    import tensorflow_text  # noqa: F401
except ImportError:  # pragma: no cover
    tensorflow_text = None

log = logging.getLogger("tfsr.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 1024
# Hostile-input limits (issue 17; docs/SERVING.md "Limits"): every size a request declares is checked
# against these before anything of that size is allocated.
DEFAULT_MAX_VALUES_PER_FEATURE = 1024  # values of one varlen (ragged) REST input in one instance
DEFAULT_REST_TIMEOUT_S = 30.0  # REST: idle time between bytes, and the whole body's reading time
DEFAULT_MAX_REST_CONNECTIONS = 64  # REST connections held at once; more are answered 503 and closed
CONCURRENT_RPCS_PER_THREAD = 16  # gRPC load shedding: more RPCs in flight get RESOURCE_EXHAUSTED
_VERSION_RE = re.compile("[0-9]{1,18}")  # a REST path's version: ASCII digits that fit in int64

State = get_model_status_pb2.ModelVersionStatus.State


class ServingError(Exception):
    """An error with a gRPC status code (TF Serving's codes) and a message naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


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


def _first_line(message: str, limit: int = 600) -> str:
    """The useful part of a (TensorFlow) error message: no graph-tracing frames, no node annotations."""
    lines = []
    for line in message.splitlines():
        text = line.strip()
        if (
            not text
            or line.startswith((" ", "\t"))
            or text.startswith(("Graph execution error", "Detected at node"))
            or "[[{{node" in text
        ):
            continue
        lines.append(text)
    message = " ".join(lines) or message.strip()
    return message if len(message) <= limit else message[:limit] + "..."


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass
class ModelConfig:
    """One served model: its name, base path and version policy.

    Args:
      name: the name requests address.
      base_path: directory holding integer version subdirectories.
      policy: "latest" (the `num_versions` highest), "all", or "specific" (`versions`).
      num_versions: for "latest".
      versions: for "specific".
      version_labels: label -> version.
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.policy not in ("latest", "all", "specific"):
            raise ValueError(f"model {self.name!r}: unknown version policy {self.policy!r}")
        if self.policy == "latest" and self.num_versions < 1:
            raise ValueError(
                f"model {self.name!r}: latest.num_versions must be >= 1, got {self.num_versions}"
            )

    def wanted(self, on_disk: Sequence[int]) -> list[int]:
        on_disk = sorted(on_disk)
        if self.policy == "all":
            return on_disk
        if self.policy == "specific":
            return [v for v in on_disk if v in set(self.versions)]
        return on_disk[-self.num_versions :]


def parse_model_config(text: str, relative_to: str | os.PathLike | None = None) -> list[ModelConfig]:
    """ModelServerConfig text proto -> ModelConfigs. Relative base paths are taken from `relative_to` (cwd)."""
    proto = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, proto)
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError("models.config needs a model_config_list (custom_model_config is not supported)")
    out = []
    for c in proto.model_config_list.config:
        if c.model_platform and c.model_platform != "tensorflow":
            raise ValueError(f"model {c.name!r}: model_platform {c.model_platform!r} is not supported")
        base = c.base_path
        if relative_to is not None and not os.path.isabs(base):
            base = os.path.join(str(relative_to), base)
        policy = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        out.append(
            ModelConfig(
                name=c.name,
                base_path=base,
                policy=policy,
                num_versions=(c.model_version_policy.latest.num_versions or 1) if policy == "latest" else 1,
                versions=tuple(c.model_version_policy.specific.versions) if policy == "specific" else (),
                version_labels=dict(c.version_labels),
            )
        )
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in models.config: {names}")
    return out


def read_model_config(
    path: str | os.PathLike, relative_to: str | os.PathLike | None = None
) -> list[ModelConfig]:
    return parse_model_config(pathlib.Path(path).read_text(encoding="utf-8"), relative_to)


# --------------------------------------------------------------------------- a loaded version
class Servable:
    """One loaded SavedModel version with its signatures and their input specs."""

    def __init__(self, name: str, version: int, path: str):
        self.name = name
        self.version = version
        self.path = path
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(pathlib.Path(path, "saved_model.pb").read_bytes())
        self.signature_defs = dict(proto.meta_graphs[0].signature_def)
        self.module = tf.saved_model.load(path)
        self.signatures = dict(self.module.signatures)
        self.input_specs = {k: fn.structured_input_signature[1] for k, fn in self.signatures.items()}

    def method_name(self, signature: str) -> str:
        sig = self.signature_defs.get(signature)
        return sig.method_name if sig is not None else PREDICT_METHOD

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found; model {self.name} version '
                f"{self.version} has {sorted(self.signatures)}",
            )
        return name, self.signatures[name]

    def warmup(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests (Predict and Classify logs) like TF Serving."""
        path = os.path.join(self.path, WARMUP_PATH)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            entry = prediction_log_pb2.PredictionLog()
            entry.ParseFromString(record.numpy())
            kind = entry.WhichOneof("log_type")
            if kind == "predict_log":
                run_predict(self, entry.predict_log.request, max_batch_size=None)
            elif kind == "classify_log":
                run_classify(self, entry.classify_log.request, max_batch_size=None)
            else:
                raise ValueError(f"unsupported warmup record type {kind!r} in {path}")
            count += 1
        return count


@dataclasses.dataclass
class VersionStatus:
    state: int
    error_code: int = 0
    error_message: str = ""
    mtime: float = 0.0


class ModelManager:
    """Loads, swaps and unloads versions per the version policies; thread-safe lookups for requests."""

    def __init__(self, configs: Sequence[ModelConfig], warmup: bool = True):
        self.configs = {c.name: c for c in configs}
        self.warmup = warmup
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._servables: dict[str, dict[int, Servable]] = {c.name: {} for c in configs}
        self._status: dict[str, dict[int, VersionStatus]] = {c.name: {} for c in configs}

    # -- loading
    @staticmethod
    def versions_on_disk(base_path: str) -> list[int]:
        try:
            entries = os.listdir(base_path)
        except FileNotFoundError:
            return []
        return sorted(int(e) for e in entries if e.isdigit() and os.path.isdir(os.path.join(base_path, e)))

    def poll(self) -> None:
        """One pass over every model's base path: load what the policy wants, unload what it dropped."""
        with self._poll_lock:
            for config in self.configs.values():
                self._poll_model(config)

    def _poll_model(self, config: ModelConfig) -> None:
        on_disk = self.versions_on_disk(config.base_path)
        wanted = config.wanted(on_disk)
        loaded = self._servables[config.name]
        statuses = self._status[config.name]
        for version in wanted:
            if version in loaded:
                continue
            path = os.path.join(config.base_path, str(version))
            mtime = _mtime(path)
            previous = statuses.get(version)
            if previous is not None and previous.state == State.END and previous.mtime == mtime:
                continue  # failed before and unchanged since
            self._load(config, version, path, mtime)
        available = [v for v in wanted if v in self._servables[config.name]]
        if not available:
            return  # nothing new is ready: keep serving whatever is loaded
        for version in list(self._servables[config.name]):
            if version not in wanted:
                with self._lock:
                    statuses[version] = VersionStatus(State.UNLOADING)
                    servable = self._servables[config.name].pop(version)
                log.info("unloaded %s version %d", config.name, version)
                del servable  # in-flight requests keep their own reference until they finish
                with self._lock:
                    statuses[version] = VersionStatus(State.END)

    def _load(self, config: ModelConfig, version: int, path: str, mtime: float) -> None:
        with self._lock:
            self._status[config.name][version] = VersionStatus(State.LOADING, mtime=mtime)
        start = time.perf_counter()
        try:
            servable = Servable(config.name, version, path)
            warm = servable.warmup() if self.warmup else 0
        except Exception as err:  # a broken version must not take the server down
            message = (
                f"failed to load {config.name} version {version} from {path}: {type(err).__name__}: "
                f"{_first_line(str(err))}"
            )
            log.error(message)
            with self._lock:
                self._status[config.name][version] = VersionStatus(
                    State.END, 13, message, mtime
                )  # 13 = INTERNAL
            return
        with self._lock:
            self._servables[config.name][version] = servable
            self._status[config.name][version] = VersionStatus(State.AVAILABLE, mtime=mtime)
        log.info(
            "loaded %s version %d in %.1f s (%d warmup requests)",
            config.name,
            version,
            time.perf_counter() - start,
            warm,
        )

    # -- lookups
    def resolve(self, model_spec) -> Servable:
        name = model_spec.name
        if not name:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is empty: name the model to use"
            )
        with self._lock:
            if name not in self._servables:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: model {name!r} is not served "
                    f"(served models: {sorted(self._servables)})",
                )
            versions = self._servables[name]
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version":
                version = model_spec.version.value
            elif choice == "version_label":
                label = model_spec.version_label
                labels = self.configs[name].version_labels
                if label not in labels:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND,
                        f"Unrecognized servable version label {label!r} for model {name!r} "
                        f"(labels: {sorted(labels)})",
                    )
                version = labels[label]
            else:
                if not versions:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE, f"model {name!r} has no available version yet"
                    )
                return versions[max(versions)]
            if version not in versions:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({name}, {version}); available "
                    f"versions of {name!r}: {sorted(versions)}",
                )
            return versions[version]

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        with self._lock:
            if name not in self._status:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name!r}"
                )
            items = sorted(self._status[name].items())
        if version is not None:
            items = [(v, s) for v, s in items if v == version]
            if not items:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name!r}"
                )
        return items

    def available(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._servables.get(name, {}))


def _mtime(path: str) -> float:
    try:
        return max(
            os.path.getmtime(os.path.join(path, f))
            for f in ("", "saved_model.pb")
            if os.path.exists(os.path.join(path, f))
        )
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------- request handling
def _batch_size(name: str, array: np.ndarray) -> int:
    if array.ndim == 0:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} is a scalar; a batch (first dimension) is expected",
        )
    return int(array.shape[0])


def prepare_inputs(
    servable: Servable, signature: str, arrays: Mapping[str, np.ndarray], max_batch_size: int | None
) -> dict:
    """Checks names, dtypes, ranks and batch sizes against the signature; returns tensors to call it with."""
    specs = servable.input_specs[signature]
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input tensor alias not found in signature {signature!r}: {unknown}; "
            f"inputs expected: {sorted(specs)}",
        )
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Request inputs do not match required inputs for signature {signature!r}: missing {missing}",
        )
    tensors = {}
    batch = None
    for name, spec in specs.items():
        array = arrays[name]
        expected = spec.dtype
        got = "string" if array.dtype.kind in ("O", "S", "U") else tf.as_dtype(array.dtype).name
        if got != expected.name:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} has dtype {got} but signature {signature!r} expects {expected.name}",
            )
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} has shape {list(array.shape)} but signature {signature!r} "
                f"expects {spec.shape.as_list()}",
            )
        size = _batch_size(name, array)
        if batch is not None and size != batch:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inputs have different batch sizes ({batch} and {size} for {name!r})",
            )
        batch = size
        tensors[name] = tf.constant(array, dtype=expected)
    if batch == 0:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"empty batch: input(s) {sorted(specs)} of signature {signature!r} hold 0 examples",
        )
    if max_batch_size is not None and batch is not None and batch > max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch size {batch} exceeds the server's max_batch_size {max_batch_size}: split the request",
        )
    return tensors


def call_signature(servable: Servable, signature: str, tensors: Mapping[str, tf.Tensor]) -> dict:
    _, fn = servable.signature(signature)
    try:
        outputs = fn(**tensors)
    except tf.errors.OpError as err:
        code = next((c for cls, c in _TF_TO_GRPC.items() if isinstance(err, cls)), grpc.StatusCode.INTERNAL)
        raise ServingError(code, _first_line(err.message)) from None
    except UnicodeDecodeError:
        # TensorFlow quotes the offending input in its message; with binary garbage that quote is not UTF-8
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Could not parse example input: signature {signature!r} received bytes that are not "
            "a serialized tf.Example",
        ) from None
    except (TypeError, ValueError) as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, _first_line(str(err))) from None
    return {k: v.numpy() for k, v in outputs.items()}


def check_tensor_proto(name: str, proto, max_batch_size: int | None) -> None:
    """Refuses a TensorProto whose declared shape would allocate more than the request carries.

    `tf.make_ndarray` fills a declared shape by repeating the last value given: a 58-byte request declaring
    a [10,000,000] string tensor of one value would cost hundreds of MB before any other check. The batch
    (first dimension) must be within `max_batch_size`, and a shape may only declare more elements than
    values are given when it is small (at most `max_batch_size` elements: TF's own broadcast of a
    repeated value).
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} declares an unknown shape {dims}"
        )
    if dims and max_batch_size is not None and dims[0] > max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch size {dims[0]} (declared shape {dims}) exceeds the server's max_batch_size "
            f"{max_batch_size}: split the request",
        )
    elements = math.prod(dims)
    if proto.tensor_content:
        try:
            given = len(proto.tensor_content) // max(tf.as_dtype(proto.dtype).size, 1)
        except TypeError:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} has an invalid dtype"
            ) from None
    else:
        given = sum(len(value) for field, value in proto.ListFields() if field.name.endswith("_val"))
    if elements > max(given, max_batch_size or 1):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} declares shape {dims} ({elements} elements) but carries {given} values",
        )


def _to_ndarray(name: str, proto, max_batch_size: int | None = None) -> np.ndarray:
    check_tensor_proto(name, proto, max_batch_size)
    try:
        return tf.make_ndarray(proto)
    except Exception as err:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} is not a valid TensorProto: {_first_line(str(err))}",
        ) from None


def run_predict(servable: Servable, request, max_batch_size: int | None):
    signature, _ = servable.signature(request.model_spec.signature_name)
    arrays = {name: _to_ndarray(name, proto, max_batch_size) for name, proto in request.inputs.items()}
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


def examples_from_input(input_proto) -> list[bytes]:
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        out = []
        for example in input_proto.example_list_with_context.examples:
            merged = type(context)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            out.append(merged.SerializeToString())
        return out
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT, "Input is empty: set example_list or example_list_with_context"
    )


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


# --------------------------------------------------------------------------- gRPC services
class _Servicer(
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
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {_first_line(str(err))}")

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


# --------------------------------------------------------------------------- REST
def _json_to_arrays(
    body: Mapping,
    specs: Mapping[str, tf.TensorSpec],
    max_batch_size: int | None = None,
    max_values_per_feature: int = DEFAULT_MAX_VALUES_PER_FEATURE,
) -> dict[str, np.ndarray]:
    """A REST body's inputs as arrays; batch sizes and ragged row lengths are checked before padding."""

    def decode(value):
        if isinstance(value, dict) and set(value) == {"b64"}:
            import base64

            return base64.b64decode(value["b64"])
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    if "instances" in body and "inputs" in body:  # as TF Serving: the two formats answer differently
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, "request body holds both 'instances' and 'inputs': send one"
        )
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'instances' must be a list")
        if max_batch_size is not None and len(instances) > max_batch_size:  # before building columns
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"'instances' holds a batch of {len(instances)}, over the server's max_batch_size "
                f"{max_batch_size}: split the request",
            )
        if len(specs) == 1 and instances and not isinstance(instances[0], dict):
            columns = {next(iter(specs)): [decode(v) for v in instances]}
        else:
            if not all(isinstance(i, dict) for i in instances):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, "each instance must be an object of named inputs"
                )
            names = set().union(*(i.keys() for i in instances)) if instances else set(specs)
            columns = {n: [decode(i.get(n)) for i in instances] for n in names}
    elif "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict):
            inputs = {next(iter(specs)): inputs}
        columns = {k: decode(v) for k, v in inputs.items()}
    else:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "request body needs 'instances' or 'inputs'")
    arrays = {}
    for name, values in columns.items():
        if isinstance(values, list) and max_batch_size is not None and len(values) > max_batch_size:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} holds a batch of {len(values)}, over the server's max_batch_size "
                f"{max_batch_size}: split the request",
            )
        spec = specs.get(name)
        if spec is not None and spec.dtype == tf.string:
            if not isinstance(values, list):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} must be a list (a batch)"
                )
            if any(v is None for v in values):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} is missing in some instances"
                )
            if spec.shape.rank == 2:  # varlen: pad ragged lists with ""
                for row in values:
                    if not isinstance(row, list) or not all(isinstance(x, str | bytes) for x in row):
                        raise ServingError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"input {name!r}: each instance must be a list of strings, got {json.dumps(row)[:60]}",
                        )
                    if len(row) > max_values_per_feature:
                        raise ServingError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"input {name!r}: an instance holds {len(row)} values, over the server's "
                            f"limit of {max_values_per_feature} per feature",
                        )
                width = max((len(v) for v in values), default=0)
                values = [list(v) + [""] * (width - len(v)) for v in values]
                array = np.empty((len(values), width), dtype=object)
                for i, row in enumerate(values):
                    array[i, :] = [x.encode() if isinstance(x, str) else x for x in row]
            else:
                if not all(isinstance(v, str | bytes) for v in values):
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: each instance must be a string"
                    )
                array = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object)
        else:
            array = np.array(values)
        arrays[name] = array
    return arrays


class _Disconnected(Exception):
    """The REST client went away (or stalled past the timeout) mid-request: nothing can be answered."""


_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def _make_rest_handler(
    manager: ModelManager,
    max_batch_size: int,
    max_request_bytes: int,
    timeout_s: float = DEFAULT_REST_TIMEOUT_S,
    max_values_per_feature: int = DEFAULT_MAX_VALUES_PER_FEATURE,
):
    from http.server import BaseHTTPRequestHandler

    http_codes = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # socket timeout of every read and write: an idle keep-alive connection, or a client that stops
        # sending mid-request, is closed after `timeout_s` instead of holding a thread forever
        timeout = timeout_s

        def log_message(self, fmt, *args):  # route to logging, quietly
            log.debug("rest: " + fmt, *args)

        def _reply(self, code: int, payload: dict, close: bool = False):
            data = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)
            except _CLIENT_GONE as err:
                self.close_connection = True
                log.info(
                    "rest: client %s gone before the response (%s)",
                    self.client_address[0],
                    type(err).__name__,
                )

        def _error(self, err: ServingError, close: bool = False):
            self._reply(http_codes.get(err.code, 500), {"error": err.message}, close=close)

        def _read_body(self) -> bytes:
            """The request body, its size checked before reading and its reading time bounded."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raise _HttpError(411, "chunked request bodies are not supported: send a Content-Length")
            declared = self.headers.get("Content-Length")
            if declared is None:
                raise _HttpError(411, "a Content-Length header is required")
            if not declared.strip().isascii() or not declared.strip().isdigit():
                raise _HttpError(400, f"Content-Length {declared[:40]!r} is not a non-negative integer")
            length = int(declared.strip()[:20])
            if length > max_request_bytes:
                raise _HttpError(
                    413, f"request body of {length} bytes exceeds the limit of {max_request_bytes}"
                )
            deadline = time.monotonic() + timeout_s
            chunks, got = [], 0
            while got < length:
                if time.monotonic() > deadline:
                    raise _HttpError(408, f"request body not received within {timeout_s:g} s")
                try:
                    chunk = self.rfile.read1(min(length - got, 1 << 16))
                except TimeoutError:
                    raise _HttpError(408, f"no byte of the request body for {timeout_s:g} s") from None
                if not chunk:
                    raise _Disconnected("connection closed before the end of the body")
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        def _method_not_allowed(self):
            self._reply(
                405,
                {"error": f"method {self.command} is not supported: GET status or POST :predict"},
                close=True,
            )

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # noqa: N815

        def _spec(self, path: str):
            from tensorflow_serving.apis import model_pb2

            parts = path.strip("/").split("/")
            if len(parts) < 3 or parts[:2] != ["v1", "models"]:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown path {path!r}")
            spec = model_pb2.ModelSpec(name=parts[2])
            if len(parts) == 5 and parts[3] == "versions":
                if not _VERSION_RE.fullmatch(parts[4]):
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"version {parts[4][:40]!r} is not an integer"
                    )
                spec.version.value = int(parts[4])
            elif len(parts) == 5 and parts[3] == "labels":
                spec.version_label = parts[4]
            elif len(parts) != 3:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown path {path!r}")
            return spec

        def do_GET(self):  # noqa: N802
            try:
                spec = self._spec(self.path)
                version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
                states = State.DESCRIPTOR.values_by_number
                self._reply(
                    200,
                    {
                        "model_version_status": [
                            {
                                "version": str(v),
                                "state": states[s.state].name,
                                "status": {
                                    "error_code": "OK" if not s.error_code else str(s.error_code),
                                    "error_message": s.error_message,
                                },
                            }
                            for v, s in manager.status(spec.name, version)
                        ]
                    },
                )
            except ServingError as err:
                self._error(err)
            except Exception as err:
                log.exception("rest internal error")
                self._reply(500, {"error": f"{type(err).__name__}: {_first_line(str(err))}"})

        def do_POST(self):  # noqa: N802
            try:
                path, _, verb = self.path.partition(":")
                if verb != "predict":
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"unsupported verb {verb!r}: only :predict")
                raw = self._read_body()
                try:
                    body = json.loads(raw or b"{}")
                except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8/16/32
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"body is not JSON: {err}") from None
                except RecursionError:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, "body is JSON nested too deeply"
                    ) from None
                if not isinstance(body, dict):
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"body must be a JSON object with 'instances' or 'inputs', got {type(body).__name__}",
                    )
                spec = self._spec(path)
                servable = manager.resolve(spec)
                signature_name = body.get("signature_name", DEFAULT_SIGNATURE)
                if not isinstance(signature_name, str):
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'signature_name' must be a string")
                signature, _ = servable.signature(signature_name)
                try:
                    arrays = _json_to_arrays(
                        body, servable.input_specs[signature], max_batch_size, max_values_per_feature
                    )
                except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as err:
                    # what the body holds does not fit the signature's inputs (e.g. ragged numbers,
                    # a b64 that is not base64): the client's error, not the server's
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"inputs do not fit signature {signature!r}: {type(err).__name__}: {_first_line(str(err), 200)}",
                    ) from None
                outputs = call_signature(
                    servable, signature, prepare_inputs(servable, signature, arrays, max_batch_size)
                )
                outputs = {
                    k: np.char.decode(v.astype(bytes)).tolist() if v.dtype.kind in "OS" else v.tolist()
                    for k, v in outputs.items()
                }
                if "inputs" in body:
                    payload = {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))}
                elif len(outputs) == 1:
                    payload = {"predictions": next(iter(outputs.values()))}
                else:
                    n = len(next(iter(outputs.values())))
                    payload = {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}
                self._reply(200, payload)
            except _HttpError as err:
                self._reply(err.status, {"error": err.message}, close=True)  # the body was not read
            except ServingError as err:
                self._error(err)
            except (_Disconnected, *_CLIENT_GONE) as err:
                self.close_connection = True
                log.info(
                    "rest: client %s gone mid-request (%s)", self.client_address[0], err or type(err).__name__
                )
            except Exception as err:
                log.exception("rest internal error")
                self._reply(500, {"error": f"{type(err).__name__}: {_first_line(str(err))}"})

    return Handler


class _HttpError(Exception):
    """A REST request refused before its body was read (HTTP status, message); the connection is closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _rest_server_class():
    from http.server import ThreadingHTTPServer

    class RestServer(ThreadingHTTPServer):
        """ThreadingHTTPServer with a cap on connections held at once and one-line logs of disconnects.

        Each connection holds a thread until it closes (idle connections after the handler's timeout);
        past `max_connections` a new connection is answered 503 at once and closed, so slow or idle
        clients cannot multiply threads without bound.
        """

        daemon_threads = True
        max_connections = DEFAULT_MAX_REST_CONNECTIONS

        def __init__(self, *args, max_connections: int = DEFAULT_MAX_REST_CONNECTIONS, **kwargs):
            self._slots = threading.BoundedSemaphore(max_connections)
            self.max_connections = max_connections
            super().__init__(*args, **kwargs)

        def process_request(self, request, client_address):
            if not self._slots.acquire(blocking=False):
                log.warning("rest: %d connections open; refusing %s", self.max_connections, client_address[0])
                body = json.dumps({"error": f"server busy: {self.max_connections} connections open"}).encode()
                with contextlib.suppress(OSError):
                    request.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                        + body
                    )
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except Exception:
                self._slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._slots.release()

        def handle_error(self, request, client_address):
            err = sys.exc_info()[1]
            if isinstance(err, _CLIENT_GONE):
                log.info("rest: client %s gone (%s)", client_address[0], type(err).__name__)
            else:
                log.exception("rest: error on the connection from %s", client_address[0])

    return RestServer


# --------------------------------------------------------------------------- the server
class ModelServer:
    """The local model server: gRPC (and optionally REST) over a :class:`ModelManager`.

    Args:
      configs: the served models.
      host: interface to bind (127.0.0.1 by default: expose deliberately).
      port: gRPC port (0 picks a free one; see `.port` after `start()`).
      rest_api_port: REST port, None for no REST endpoint (0 picks a free one).
      max_batch_size: the largest batch (first dimension) a request may carry.
      max_request_bytes: the largest gRPC message / REST body accepted.
      poll_wait_s: seconds between polls of the base paths (0 or less: no polling thread).
      num_threads: gRPC worker threads.
      warmup: replay the warmup requests when loading a version.
      max_concurrent_rpcs: gRPC RPCs in flight at once (default `num_threads` x 16); more are shed at
        once with RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded" (the client retries those).
      rest_timeout_s: REST idle timeout (between bytes) and the whole body's reading time.
      max_rest_connections: REST connections held at once; more are answered 503 and closed.
      max_values_per_feature: values of one ragged (varlen) REST input in one instance.

    Example:
      >>> server = ModelServer([ModelConfig("tfsr", "saved_models/tfsr")], port=0).start()
      >>> server.wait_until_available("tfsr")
      >>> ...; server.stop()
    """

    def __init__(
        self,
        configs: Sequence[ModelConfig],
        host: str = "127.0.0.1",
        port: int = 8500,
        rest_api_port: int | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        poll_wait_s: float = 1.0,
        num_threads: int = 8,
        warmup: bool = True,
        max_concurrent_rpcs: int | None = None,
        rest_timeout_s: float = DEFAULT_REST_TIMEOUT_S,
        max_rest_connections: int = DEFAULT_MAX_REST_CONNECTIONS,
        max_values_per_feature: int = DEFAULT_MAX_VALUES_PER_FEATURE,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, got {max_request_bytes}")
        self.manager = ModelManager(configs, warmup=warmup)
        self.host = host
        self.requested_port = port
        self.rest_api_port = rest_api_port
        self.max_batch_size = max_batch_size
        self.max_request_bytes = max_request_bytes
        self.poll_wait_s = poll_wait_s
        self.num_threads = num_threads
        self.max_concurrent_rpcs = max_concurrent_rpcs or num_threads * CONCURRENT_RPCS_PER_THREAD
        self.rest_timeout_s = rest_timeout_s
        self.max_rest_connections = max_rest_connections
        self.max_values_per_feature = max_values_per_feature
        self.port: int | None = None
        self._grpc = None
        self._http = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> ModelServer:
        self.manager.poll()
        options = [
            ("grpc.max_receive_message_length", self.max_request_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="tfsr-grpc"),
            options=options,
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
        )
        servicer = _Servicer(self.manager, self.max_batch_size)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, self._grpc)
        self.port = self._grpc.add_insecure_port(f"{self.host}:{self.requested_port}")
        if not self.port:
            raise OSError(f"could not bind gRPC to {self.host}:{self.requested_port}")
        self._grpc.start()
        if self.rest_api_port is not None:
            self._http = _rest_server_class()(
                (self.host, self.rest_api_port),
                _make_rest_handler(
                    self.manager,
                    self.max_batch_size,
                    self.max_request_bytes,
                    self.rest_timeout_s,
                    self.max_values_per_feature,
                ),
                max_connections=self.max_rest_connections,
            )
            self.rest_api_port = self._http.server_address[1]
            self._spawn(self._http.serve_forever, "tfsr-rest")
        if self.poll_wait_s and self.poll_wait_s > 0:
            self._spawn(self._poll_loop, "tfsr-poll")
        log.info(
            "serving %s on %s:%d (gRPC)%s",
            sorted(self.manager.configs),
            self.host,
            self.port,
            f" and :{self.rest_api_port} (REST)" if self._http else "",
        )
        return self

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_loop(self):
        while not self._stop.wait(self.poll_wait_s):
            try:
                self.manager.poll()
            except Exception:  # keep polling whatever happens
                log.exception("poll failed")

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_until_available(self, name: str, version: int | None = None, timeout_s: float = 60.0) -> int:
        """Blocks until `name` (at `version`, if given) is served; returns the newest available version."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            available = self.manager.available(name)
            if available and (version is None or version in available):
                return max(available)
            time.sleep(0.05)
        raise TimeoutError(
            f"model {name!r} version {version} not available after {timeout_s} s: {self.manager.status(name)}"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting requests, lets in-flight ones finish for up to `grace_s` seconds."""
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait()
        log.info("server stopped")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace_s=1.0)


def main(argv: list[str] | None = None) -> int:
    """``tfsr serve``: a local model server speaking TF Serving's gRPC (and REST) API."""
    parser = argparse.ArgumentParser(prog="tfsr serve", description=main.__doc__)
    parser.add_argument("--model_config_file", help="ModelServerConfig text proto (serving/models.config)")
    parser.add_argument("--model_name", default="tfsr", help="model name (without --model_config_file)")
    parser.add_argument("--model_base_path", help="base path of the versions (without --model_config_file)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument(
        "--rest_api_port",
        type=int,
        default=0,
        help="REST port in TF Serving's format; 0 (default) disables it",
    )
    parser.add_argument(
        "--max_batch_size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="largest number of examples in one request",
    )
    parser.add_argument(
        "--max_request_bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request message in bytes (gRPC max receive size)",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="seconds between polls for new versions; 0 disables polling",
    )
    parser.add_argument("--num_threads", type=int, default=8, help="gRPC worker threads")
    parser.add_argument(
        "--max_concurrent_rpcs",
        type=int,
        default=0,
        help=f"gRPC RPCs in flight before load shedding (RESOURCE_EXHAUSTED); 0: {CONCURRENT_RPCS_PER_THREAD}"
        " x --num_threads",
    )
    parser.add_argument(
        "--rest_timeout_seconds",
        type=float,
        default=DEFAULT_REST_TIMEOUT_S,
        help="REST idle timeout and body reading limit",
    )
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    parser.add_argument("--no_warmup", action="store_true", help="skip assets.extra warmup requests")
    args = parser.parse_args(argv)

    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    if args.model_config_file:
        try:
            configs = read_model_config(args.model_config_file)
        except (text_format.ParseError, ValueError) as err:
            raise UsageError(f"--model_config_file {args.model_config_file}: {err}") from None
    elif args.model_base_path:
        configs = [ModelConfig(args.model_name, os.path.abspath(args.model_base_path))]
    else:
        parser.error("pass --model_config_file or --model_base_path")
    server = ModelServer(
        configs,
        host=args.host,
        port=args.port,
        rest_api_port=args.rest_api_port or None,
        max_batch_size=args.max_batch_size,
        max_request_bytes=args.max_request_bytes,
        poll_wait_s=args.file_system_poll_wait_seconds,
        num_threads=args.num_threads,
        warmup=not args.no_warmup,
        max_concurrent_rpcs=args.max_concurrent_rpcs or None,
        rest_timeout_s=args.rest_timeout_seconds,
    ).start()
    for c in configs:
        versions = server.manager.available(c.name)
        if not versions:
            log.warning(
                "model %s: no version available yet under %s (%s)",
                c.name,
                c.base_path,
                [(v, s.error_message) for v, s in server.manager.status(c.name)],
            )
    print(
        f"tfsr serve: gRPC on {server.target}"
        + (f", REST on http://{args.host}:{server.rest_api_port}" if server.rest_api_port else ""),
        flush=True,
    )

    done = threading.Event()

    def _shutdown(signum, _frame):
        log.info("signal %d: shutting down gracefully", signum)
        done.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    done.wait()
    server.stop(grace_s=10.0)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
