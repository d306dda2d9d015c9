"""A Python client for tfsr models behind TF Serving (the stock model server or ``tfsr serve``).

After TF Serving's ``resnet_client_grpc.py``: a ``PredictionServiceStub`` on one channel, an explicit
``signature_name`` on every request, a deadline on every call, retries with bounded, jittered exponential
backoff on ``UNAVAILABLE`` (a server restarting or swapping) and on load shedding (``RESOURCE_EXHAUSTED``
"Concurrent RPC limit exceeded": the server's ``maximum_concurrent_rpcs``; a message over the size limit
is also RESOURCE_EXHAUSTED and is not retried); every other status is the caller's problem and is raised
at once; and
``.future()`` for concurrency. Candidate batching: one query/user context x N candidate items goes out as
one request of N ``tf.Example``s.

Example::

    client = ScoringClient("127.0.0.1:8500", "tfsr")
    scored = client.score_candidates(
        {"domain": "search_tags", "user_id": "42", "query_text": "space", "query_id": "space"},
        [{"item_id": "260", "item_title": "Star Wars (1977)", "item_genres": ["Sci-Fi"]}, ...])
    for row in sorted(scored, key=lambda r: -r["ctr"]): print(row["item_id"], row["ctr"])
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Mapping, Sequence

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.cli import UsageError
from tfsr.contract import ASPECTS, ENTITIES

import grpc
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

log = logging.getLogger("tfsr.client")


def make_example(record: Mapping[str, object], spec=None) -> example_pb2.Example:
    """A python record of raw features -> ``tf.train.Example``.

    With a ``tfsr.features.FeatureSpec`` the record is validated and completed with defaults; without one,
    types are inferred: str/bytes -> bytes_list, int -> int64_list, float -> float_list, lists likewise
    (an empty list is an empty bytes_list).
    """
    if spec is not None:
        return spec.to_example(record, roles=("raw",))
    features = {}
    for name, value in record.items():
        values = list(value) if isinstance(value, list | tuple) else [value]
        if all(isinstance(v, str | bytes) for v in values):
            feature = feature_pb2.Feature(
                bytes_list=feature_pb2.BytesList(
                    value=[v.encode("utf-8") if isinstance(v, str) else v for v in values]
                )
            )
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            feature = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))
        else:
            raise ValueError(f"feature {name!r}: cannot encode {value!r:.60} (mixed or unsupported types)")
        features[name] = feature
    return example_pb2.Example(features=feature_pb2.Features(feature=features))


LOAD_SHED_DETAILS = "Concurrent RPC limit exceeded"  # gRPC's message when maximum_concurrent_rpcs is reached


def retryable(err: grpc.RpcError) -> bool:
    """UNAVAILABLE (server restarting, swapping, unreachable) or a load-shedding RESOURCE_EXHAUSTED.

    A RESOURCE_EXHAUSTED for a message over the size limit would fail again: it is not retried.
    """
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and LOAD_SHED_DETAILS in (err.details() or "")


def string_tensor_proto(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """A ``[len(values)]`` DT_STRING TensorProto, built without a numpy round trip."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        ),
        string_val=list(values),
    )


class ScoredFuture:
    """The future of an asynchronous :meth:`ScoringClient.score_candidates_future` call."""

    def __init__(self, future, candidates, key):
        self._future = future
        self._candidates = candidates
        self._key = key

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> list[dict]:
        return _scored_rows(self._future.result(timeout=timeout), self._candidates, self._key)


def _scored_rows(response, candidates, key) -> list[dict]:
    ctr = tf.make_ndarray(response.outputs["ctr"])
    gates = tf.make_ndarray(response.outputs["gate_weights"]) if "gate_weights" in response.outputs else None
    rows = []
    for i, candidate in enumerate(candidates):
        row = {key: candidate.get(key), "ctr": float(ctr[i])}
        if gates is not None:
            row["gate_weights"] = {
                e: dict(zip(ASPECTS, map(float, gates[i][j]), strict=True)) for j, e in enumerate(ENTITIES)
            }
        rows.append(row)
    return rows


class ScoringClient:
    """Scores tfsr requests against a model server over gRPC.

    Args:
      target: ``host:port`` of the server.
      model_name: the served model.
      signature_name: the signature for Predict (``serving_default`` takes serialized tf.Examples).
      version: a specific version, or None for the newest one served.
      deadline_s: deadline of every call, in seconds.
      max_retries: retries on ``UNAVAILABLE`` and load shedding, with exponential backoff from `backoff_s`.
      backoff_s: first backoff (each wait is drawn in [0.5, 1] x min(backoff_s x 2**attempt, max_backoff_s)).
      max_backoff_s: the longest wait between two tries.
      spec: optional ``tfsr.features.FeatureSpec`` to validate records before sending.
      max_message_bytes: largest message sent / received.
      channel: an existing channel (then `target` is only used for messages).
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        signature_name: str = "serving_default",
        version: int | None = None,
        deadline_s: float = 5.0,
        max_retries: int = 3,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        spec=None,
        max_message_bytes: int = 64 * 1024 * 1024,
        channel=None,
    ):
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.version = version
        self.deadline_s = deadline_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.spec = spec
        self.channel = channel or grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    # -- plumbing
    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_spec(self, spec, signature_name: str | None = None):
        spec.name = self.model_name
        if signature_name is not None:
            spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = self.version
        return spec

    def _call(self, method, request):
        """Calls with the deadline; retries UNAVAILABLE and load shedding (see :func:`retryable`)."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.deadline_s)
            except grpc.RpcError as err:
                if not retryable(err) or attempt >= self.max_retries:
                    raise
                delay = min(self.backoff_s * (2**attempt), self.max_backoff_s) * random.uniform(0.5, 1.0)
                log.warning(
                    "%s %s (%s); retry %d in %.2f s",
                    self.target,
                    err.code().name,
                    err.details(),
                    attempt + 1,
                    delay,
                )
                time.sleep(delay)
                attempt += 1

    # -- requests
    def examples(self, records: Sequence[Mapping]) -> list[bytes]:
        return [make_example(r, self.spec).SerializeToString() for r in records]

    def predict_request(
        self, serialized: Sequence[bytes], output_filter: Sequence[str] = ()
    ) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, self.signature_name)
        request.inputs["examples"].CopyFrom(string_tensor_proto(serialized))
        request.output_filter.extend(output_filter)
        return request

    def candidate_request(
        self, context: Mapping, candidates: Sequence[Mapping]
    ) -> predict_pb2.PredictRequest:
        """One request: `context` (domain, user, query) merged into each candidate (item features)."""
        if not candidates:
            raise ValueError("no candidates to score")
        return self.predict_request(self.examples([{**context, **c} for c in candidates]))

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self._call(self.stub.Predict, request)

    def predict_future(self, request: predict_pb2.PredictRequest):
        """``stub.Predict.future`` with the deadline (no retries: check ``.exception()``)."""
        return self.stub.Predict.future(request, timeout=self.deadline_s)

    def score_candidates(
        self, context: Mapping, candidates: Sequence[Mapping], key: str = "item_id"
    ) -> list[dict]:
        """Scores one context x N candidates in one request: ``[{key, "ctr", "gate_weights"}]`` in input order."""
        return _scored_rows(self.predict(self.candidate_request(context, candidates)), candidates, key)

    def score_candidates_future(
        self, context: Mapping, candidates: Sequence[Mapping], key: str = "item_id"
    ) -> ScoredFuture:
        return ScoredFuture(self.predict_future(self.candidate_request(context, candidates)), candidates, key)

    def rank(
        self, context: Mapping, candidates: Sequence[Mapping], top_k: int | None = None, key: str = "item_id"
    ) -> list[dict]:
        rows = sorted(self.score_candidates(context, candidates, key), key=lambda r: -r["ctr"])
        return rows[:top_k] if top_k else rows

    def classify(self, records: Sequence[Mapping], signature_name: str = "classify") -> list[float]:
        """P(click) per record through TF Serving's Classify API."""
        request = classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, signature_name)
        for r in records:
            request.input.example_list.examples.add().CopyFrom(make_example(r, self.spec))
        response = self._call(self.stub.Classify, request)
        return [
            next(c.score for c in result.classes if c.label == "1")
            for result in response.result.classifications
        ]

    def metadata(self) -> dict:
        """Signature name -> {"inputs": {name: dtype}, "outputs": {...}, "method_name"}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self.stub.GetModelMetadata, request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return {
            name: {
                "method_name": sig.method_name,
                "inputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
                "outputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in sig.outputs.items()},
            }
            for name, sig in sig_map.signature_def.items()
        }

    def status(self) -> list[dict]:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self.model_stub.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            {
                "version": s.version,
                "state": states.Name(s.state),
                "error_code": s.status.error_code,
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    def wait_until_available(self, timeout_s: float = 300.0, poll_s: float = 1.0, alive=None) -> int:
        """Blocks until a version of the model is AVAILABLE (a server still starting up); returns it.

        `alive`, if given, is called between polls (e.g. a server process's liveness): waiting stops as
        soon as it returns False.

        Raises:
          TimeoutError: nothing AVAILABLE within `timeout_s`, or `alive()` turned False; the message
            carries the last status or error seen.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                statuses = self.status()
                available = [s["version"] for s in statuses if s["state"] == "AVAILABLE"]
                if available:
                    return max(available)
                last = f"status {statuses}"
            except grpc.RpcError as err:  # not listening yet, or the model is not loaded yet
                last = f"{err.code().name}: {err.details()}"
            if (alive is not None and not alive()) or time.monotonic() > deadline:
                raise TimeoutError(f"model {self.model_name!r} at {self.target} not available: {last}")
            time.sleep(poll_s)


# --------------------------------------------------------------------------- CLI
def format_ranking(rows: Sequence[dict], key: str = "item_id") -> str:
    lines = [f"{'rank':>4}  {key:<24} {'ctr':>7}  gate weights (id/text/sparse) user | query | item"]
    for i, row in enumerate(rows, 1):
        gates = row.get("gate_weights") or {}
        g = " | ".join("/".join(f"{gates[e][a]:.2f}" for a in ASPECTS) for e in ENTITIES if e in gates)
        lines.append(f"{i:>4}  {str(row[key]):<24} {row['ctr']:7.4f}  {g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``tfsr score``: score one context against candidate items on a model server."""
    parser = argparse.ArgumentParser(prog="tfsr score", description=main.__doc__)
    parser.add_argument("--server", default="127.0.0.1:8500", help="host:port of the model server")
    parser.add_argument("--model_name", default="tfsr")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--signature_name", default="serving_default")
    parser.add_argument("--deadline_s", type=float, default=5.0)
    parser.add_argument("--request", help='JSON file {"context": {...}, "candidates": [{...}, ...]}')
    parser.add_argument("--domain", help="domain of the context (without --request)")
    parser.add_argument("--user_id", default="")
    parser.add_argument("--query_text", default="", help="query (search domains); also used as query_id")
    parser.add_argument("--items", default="", help="comma-separated candidate item ids")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--status", action="store_true", help="print the model's version status and exit")
    parser.add_argument("--metadata", action="store_true", help="print the model's signatures and exit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    with ScoringClient(
        args.server, args.model_name, args.signature_name, args.version, args.deadline_s
    ) as client:
        try:
            if args.status or args.metadata:
                print(json.dumps(client.status() if args.status else client.metadata(), indent=2))
                return 0
            if args.request:
                with open(args.request, encoding="utf-8") as f:
                    payload = json.load(f)
                if not isinstance(payload, dict) or not {"context", "candidates"} <= payload.keys():
                    raise UsageError(
                        f'--request {args.request}: expected {{"context": ..., "candidates": [...]}}'
                    )
                context, candidates = payload["context"], payload["candidates"]
            else:
                if not args.domain or not args.items:
                    parser.error("pass --request, or --domain and --items")
                context = {
                    "domain": args.domain,
                    "user_id": args.user_id,
                    "query_text": args.query_text,
                    "query_id": args.query_text.strip().lower(),
                }
                candidates = [{"item_id": i.strip()} for i in args.items.split(",") if i.strip()]
            rows = client.rank(context, candidates, top_k=args.top_k)
        except grpc.RpcError as err:
            print(f"tfsr score: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(json.dumps(rows, indent=2) if args.json else format_ranking(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
