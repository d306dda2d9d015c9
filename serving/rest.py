"""The REST API: TF Serving's JSON ``POST /v1/models/<name>[...]:predict`` and ``GET /v1/models/<name>``.

Owns everything HTTP: the paths and their model specs, TF Serving's JSON request and response formats
(``instances``/``inputs``, ``b64``, ragged inputs padded), the mapping of gRPC status codes to HTTP ones,
and the defences of a socket-facing server (issue 17; docs/SERVING.md "Hostile requests"): the
Content-Length checked before the body is read, body reading bounded in time, JSON sizes checked before
arrays are built, a cap on connections held at once, and a client that disconnects logged as one line.
Inputs then go through the same validation and inference as gRPC (:mod:`serving.validation`,
:mod:`serving.inference`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.errors import ServingError, first_line
from serving.inference import DEFAULT_SIGNATURE, call_signature
from serving.validation import prepare_inputs
from serving.versions import ModelManager, State

import grpc
import numpy as np
import tensorflow as tf

log = logging.getLogger("tfsr.serving")

# Hostile-input limits (issue 17; docs/SERVING.md "Limits"): every size a request declares is checked
# against these before anything of that size is allocated.
DEFAULT_MAX_VALUES_PER_FEATURE = 1024  # values of one varlen (ragged) REST input in one instance
DEFAULT_REST_TIMEOUT_S = 30.0  # REST: idle time between bytes, and the whole body's reading time
DEFAULT_MAX_REST_CONNECTIONS = 64  # REST connections held at once; more are answered 503 and closed
_VERSION_RE = re.compile("[0-9]{1,18}")  # a REST path's version: ASCII digits that fit in int64


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
            if spec is not None and spec.dtype.is_integer and array.dtype.kind in "iu":
                # JSON numbers decode to int64: take the signature's integer dtype (the retrieval
                # signatures' int32 `k`) when every value fits it; a value that does not keeps int64 and
                # is refused by the dtype check
                cast = array.astype(spec.dtype.as_numpy_dtype)
                if np.array_equal(cast, array):
                    array = cast
        arrays[name] = array
    return arrays


class _Disconnected(Exception):
    """The REST client went away (or stalled past the timeout) mid-request: nothing can be answered."""


_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def make_rest_handler(
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
                self._reply(500, {"error": f"{type(err).__name__}: {first_line(str(err))}"})

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
                        f"inputs do not fit signature {signature!r}: {type(err).__name__}: {first_line(str(err), 200)}",
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
                self._reply(500, {"error": f"{type(err).__name__}: {first_line(str(err))}"})

    return Handler


class _HttpError(Exception):
    """A REST request refused before its body was read (HTTP status, message); the connection is closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def rest_server_class():
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
