"""The version manager: which versions are loaded, hot swaps, failed loads, and lookups for requests.

Owns :class:`Servable` (one loaded SavedModel version, warmed up with ``assets.extra/
tf_serving_warmup_requests``) and :class:`ModelManager`, which polls the base paths, loads what the
version policy (:mod:`serving.config`) wants before it takes traffic, unloads what it dropped (in-flight
requests keep their own reference), keeps serving the old version when a new one fails to load, and
resolves a request's ``model_spec`` to a version under a lock. SavedModels are loaded with
``tf.saved_model.load`` after ``import tensorflow_text``: this package never imports ``tfsr.models`` or
``tfsr.layers``, so it serves exactly what the stock model server would.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
import time
from collections.abc import Sequence

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.config import ModelConfig
from serving.errors import ServingError, first_line
from serving.inference import DEFAULT_SIGNATURE, PREDICT_METHOD, run_classify, run_predict

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

try:  # registers the TF Text ops the stock model server links in
    import tensorflow_text  # noqa: F401
except ImportError:  # pragma: no cover
    tensorflow_text = None

log = logging.getLogger("tfsr.serving")

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")

State = get_model_status_pb2.ModelVersionStatus.State


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
                f"{first_line(str(err))}"
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
