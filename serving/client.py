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
from tfsr.contract import (
    ASPECTS,
    ENTITIES,
    RETRIEVAL_K_INPUT,
    RETRIEVE_AND_RANK_SIGNATURE,
    RETRIEVE_SIGNATURE,
)
from tfsr.datasets.rows import normalize_query

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

# The raw context features of the default feature spec (the retrieval signatures' inputs besides `k`) and the
# value a context without them gets (a recommendation context has no query).
CONTEXT_INPUTS = ("domain", "user_id", "query_id", "query_text")
CONTEXT_DEFAULTS = {"query_id": "", "query_text": ""}


def with_query_id(context: Mapping) -> dict:
    """`context` with ``query_id`` derived from ``query_text`` the way training derives it
    (:func:`tfsr.datasets.rows.normalize_query`: NFKC, case-folded, whitespace collapsed) when it has a
    query text and no query id, so "Space  Opera" finds the id "space opera" the model learned."""
    context = dict(context)
    if context.get("query_text") and not context.get("query_id"):
        context["query_id"] = normalize_query(str(context["query_text"]))
    return context


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


def _gate_dict(gates) -> dict:
    """A ``[3, 3]`` gate-weight matrix -> ``{entity: {aspect: weight}}``."""
    return {e: dict(zip(ASPECTS, map(float, gates[j]), strict=True)) for j, e in enumerate(ENTITIES)}


def _scored_rows(response, candidates, key) -> list[dict]:
    ctr = tf.make_ndarray(response.outputs["ctr"])
    gates = tf.make_ndarray(response.outputs["gate_weights"]) if "gate_weights" in response.outputs else None
    rows = []
    for i, candidate in enumerate(candidates):
        row = {key: candidate.get(key), "ctr": float(ctr[i])}
        if gates is not None:
            row["gate_weights"] = _gate_dict(gates[i])
        rows.append(row)
    return rows


def _retrieved_rows(response) -> list[list[dict]]:
    """A ``retrieve`` / ``retrieve_and_rank`` response -> per context row, its items in the server's order:
    ``{"item_id", "score"}``, or ``{"item_id", "ctr", "retrieval_score", "gate_weights"}``."""
    outputs = response.outputs
    ids = tf.make_ndarray(outputs["item_ids"])
    if "ctr" not in outputs:
        scores = tf.make_ndarray(outputs["scores"])
        return [
            [{"item_id": i.decode("utf-8", "replace"), "score": float(s)} for i, s in zip(r, sc, strict=True)]
            for r, sc in zip(ids, scores, strict=True)
        ]
    ctr = tf.make_ndarray(outputs["ctr"])
    retrieval = tf.make_ndarray(outputs["retrieval_scores"])
    gates = tf.make_ndarray(outputs["gate_weights"]) if "gate_weights" in outputs else None
    out = []
    for b, row_ids in enumerate(ids):
        rows = []
        for j, item in enumerate(row_ids):
            row = {
                "item_id": item.decode("utf-8", "replace"),
                "ctr": float(ctr[b, j]),
                "retrieval_score": float(retrieval[b, j]),
            }
            if gates is not None:
                row["gate_weights"] = _gate_dict(gates[b, j])
            rows.append(row)
        out.append(rows)
    return out


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
        context = with_query_id(context)
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

    # -- retrieval (an export with --retrieval_model_dir: the whole catalogue in the SavedModel)
    def context_inputs(self) -> list[tuple[str, str | None]]:
        """(name, default) of the retrieval signatures' context inputs: the spec's raw features whose
        entity is not ``item`` when the client has a spec, else :data:`CONTEXT_INPUTS`."""
        if self.spec is not None:
            return [(f.name, f.default) for f in self.spec.raw_features if f.entity != "item"]
        return [(name, CONTEXT_DEFAULTS.get(name)) for name in CONTEXT_INPUTS]

    def retrieval_request(
        self, contexts: Sequence[Mapping], k: int, signature_name: str = RETRIEVE_SIGNATURE
    ) -> predict_pb2.PredictRequest:
        """One request of `contexts` (one row each) and the scalar int32 ``k``, for ``retrieve`` or
        ``retrieve_and_rank``. A context input missing from a context takes its default (an empty query);
        one without a default (``domain``, ``user_id``) missing from every context is left out, for the
        server to name."""
        if not contexts:
            raise ValueError("no context to retrieve for")
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k must be an int, got {k!r}")
        contexts = [with_query_id(c) for c in contexts]
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, default in self.context_inputs():
            if default is None and not any(name in c for c in contexts):
                continue
            values = []
            for c in contexts:
                value = c.get(name, default)
                if value is None:
                    raise ValueError(f"context {dict(c)!r} has no {name!r}")
                values.append(value.encode("utf-8") if isinstance(value, str) else bytes(value))
            request.inputs[name].CopyFrom(string_tensor_proto(values))
        request.inputs[RETRIEVAL_K_INPUT].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
        return request

    def retrieve_many(
        self, contexts: Sequence[Mapping], k: int, signature_name: str = RETRIEVE_SIGNATURE
    ) -> list[list[dict]]:
        """One request for several contexts; per context its items, best first (see :meth:`retrieve`)."""
        return _retrieved_rows(self.predict(self.retrieval_request(contexts, k, signature_name)))

    def retrieve(self, context: Mapping, k: int) -> list[dict]:
        """The `k` best items of the whole catalogue for one context (``domain``, ``user_id``, ``query_id``,
        ``query_text``; no query: a recommendation), by the retrieval model alone: ``[{"item_id",
        "score"}]``, best first; fewer when the catalogue holds fewer."""
        return self.retrieve_many([context], k, RETRIEVE_SIGNATURE)[0]

    def retrieve_and_rank(self, context: Mapping, k: int) -> list[dict]:
        """The `k` items retrieved for one context, re-scored by the ranking model: ``[{"item_id", "ctr",
        "retrieval_score", "gate_weights"}]`` by ``ctr`` descending."""
        return self.retrieve_many([context], k, RETRIEVE_AND_RANK_SIGNATURE)[0]

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
    """Ranked rows as a table: ctr, the retrieval score when the rows have one, the gate weights."""
    retrieval = any("retrieval_score" in r for r in rows)
    extra = f" {'retrieval':>9}" if retrieval else ""
    lines = [f"{'rank':>4}  {key:<24} {'ctr':>7}{extra}  gate weights (id/text/sparse) user | query | item"]
    for i, row in enumerate(rows, 1):
        gates = row.get("gate_weights") or {}
        g = " | ".join("/".join(f"{gates[e][a]:.2f}" for a in ASPECTS) for e in ENTITIES if e in gates)
        score = f" {row.get('retrieval_score', float('nan')):9.4f}" if retrieval else ""
        lines.append(f"{i:>4}  {str(row[key]):<24} {row['ctr']:7.4f}{score}  {g}")
    return "\n".join(lines)


def format_retrieved(rows: Sequence[dict], key: str = "item_id") -> str:
    """``retrieve`` rows (no ranker) as a table of rank, item and retrieval score."""
    lines = [f"{'rank':>4}  {key:<24} {'score':>9}"]
    lines += [f"{i:>4}  {str(row[key]):<24} {row['score']:9.4f}" for i, row in enumerate(rows, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``tfsr score``: score one context against candidate items on a model server, or (``--retrieve K``)
    retrieve K items of the whole catalogue for it and rank them (an export with retrieval signatures)."""
    parser = argparse.ArgumentParser(prog="tfsr score", description=main.__doc__)
    parser.add_argument("--server", default="127.0.0.1:8500", help="host:port of the model server")
    parser.add_argument("--model_name", default="tfsr")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--signature_name", default="serving_default")
    parser.add_argument("--deadline_s", type=float, default=5.0)
    parser.add_argument(
        "--request",
        help='JSON file {"context": {...}, "candidates": [{...}, ...]} ("candidates" not with --retrieve)',
    )
    parser.add_argument("--domain", help="domain of the context (without --request)")
    parser.add_argument("--user_id", default="")
    parser.add_argument("--query_text", default="", help="query (search domains); also used as query_id")
    parser.add_argument("--items", default="", help="comma-separated candidate item ids")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument(
        "--retrieve",
        type=int,
        metavar="K",
        help="no candidates: retrieve K items of the whole catalogue for the context and rank them "
        "(signature retrieve_and_rank; with --retrieval_only: retrieve, the retrieval scores alone)",
    )
    parser.add_argument(
        "--retrieval_only", action="store_true", help="with --retrieve: the retrieval model's scores alone"
    )
    parser.add_argument("--status", action="store_true", help="print the model's version status and exit")
    parser.add_argument("--metadata", action="store_true", help="print the model's signatures and exit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.retrieval_only and args.retrieve is None:
        parser.error("--retrieval_only goes with --retrieve K")
    if args.retrieve is not None and args.items:
        parser.error("--retrieve takes no --items: the candidates are the whole catalogue")

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
                wanted = {"context"} if args.retrieve is not None else {"context", "candidates"}
                if not isinstance(payload, dict) or not wanted <= payload.keys():
                    expected = '"context": ...' + (', "candidates": [...]' if "candidates" in wanted else "")
                    raise UsageError(f"--request {args.request}: expected {{{expected}}}")
                context, candidates = payload["context"], payload.get("candidates")
            else:
                if not args.domain or (not args.items and args.retrieve is None):
                    parser.error("pass --request, or --domain and --items (or --domain and --retrieve K)")
                context = {
                    "domain": args.domain,
                    "user_id": args.user_id,
                    "query_text": args.query_text,
                }
                candidates = [{"item_id": i.strip()} for i in args.items.split(",") if i.strip()]
            if args.retrieve is not None:
                if args.retrieval_only:
                    rows = client.retrieve(context, args.retrieve)
                else:
                    rows = client.retrieve_and_rank(context, args.retrieve)[: args.top_k]
            else:
                rows = client.rank(context, candidates, top_k=args.top_k)
        except grpc.RpcError as err:
            print(f"tfsr score: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_retrieved(rows) if args.retrieval_only else format_ranking(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
