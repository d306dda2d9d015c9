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
``tf.saved_model.load`` (TF Text ops registered first): ``serving/`` never imports ``tfsr.models`` or
``tfsr.layers``, so it serves exactly what the stock model server would.

This module is the process: :class:`ModelServer` (binding the gRPC and REST ports, the polling thread,
graceful stop) and :func:`main` (``tfsr serve`` / ``python -m serving.server``: flags, startup, signals,
shutdown). It owns no request logic; each concept has its own module, so a sample can be followed from the
socket to the answer one room at a time:

* :mod:`serving.config`: ``models.config`` and version policies;
* :mod:`serving.versions`: loading, warmup, hot swap and lookup of versions (``ModelManager``);
* :mod:`serving.validation`: checks of what a request declares, before anything is allocated;
* :mod:`serving.inference`: Predict / Classify / GetModelMetadata on one version, transport-free;
* :mod:`serving.grpc_service`: the ``PredictionService`` and ``ModelService`` RPCs;
* :mod:`serving.rest`: the REST API (HTTP, JSON formats, connection limits);
* :mod:`serving.errors`: ``ServingError``, the status code and message every layer raises.

Usage::

    tfsr serve --model_config_file serving/models.config --port 8500 --rest_api_port 8501
    tfsr serve --model_name tfsr --model_base_path saved_models/tfsr
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.config import ModelConfig, read_model_config
from serving.grpc_service import Servicer
from serving.rest import (
    DEFAULT_MAX_REST_CONNECTIONS,
    DEFAULT_MAX_VALUES_PER_FEATURE,
    DEFAULT_REST_TIMEOUT_S,
    make_rest_handler,
    rest_server_class,
)
from serving.versions import ModelManager
from tfsr.cli import UsageError

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

# ModelConfig, read_model_config and ModelManager are imported here (and so still importable from
# serving.server) but owned by serving.config and serving.versions: import them from there.
__all__ = ["ModelConfig", "ModelManager", "ModelServer", "main", "read_model_config"]

log = logging.getLogger("tfsr.serving")

# Hostile-input limits (issue 17; docs/SERVING.md "Limits"); the REST ones live in serving.rest.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 1024
CONCURRENT_RPCS_PER_THREAD = 16  # gRPC load shedding: more RPCs in flight get RESOURCE_EXHAUSTED


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
        servicer = Servicer(self.manager, self.max_batch_size)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, self._grpc)
        self.port = self._grpc.add_insecure_port(f"{self.host}:{self.requested_port}")
        if not self.port:
            raise OSError(f"could not bind gRPC to {self.host}:{self.requested_port}")
        self._grpc.start()
        if self.rest_api_port is not None:
            self._http = rest_server_class()(
                (self.host, self.rest_api_port),
                make_rest_handler(
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
