"""batch_score: score TFRecord samples or raw generic logs with an exported tfsr SavedModel (Apache Beam).

The offline twin of ``tfsr serve``: the same SavedModel, the same ``serving_default`` signature (serialized
``tf.Example``s of raw features -> ``ctr``, ``gate_weights``), run with Beam ``RunInference`` through a small
:class:`SavedModelHandler` of ours (Beam's ``TFModelHandlerTensor`` calls ``model(tf.stack(batch))`` and
imports ``tensorflow_hub``; docs/BEAM.md). Like every Beam job of tfsr it never imports the model classes:
it loads the exported graph, so what it scores is what the model server would score.

Steps, each a labelled transform::

  ReadRows            MatchFiles -> Reshuffle -> numbered rows: TFRecord records or log lines (bytes,
                      beam_jobs.reading as build_samples); CSV headers and blank lines filtered (counted);
                      a truncated .gz/.bz2 or a corrupt TFRecord frame -> one dead letter, and the job fails
  ParseAndValidate    tf.Example / JSONL / CSV -> FeatureSpec validation (raw roles; label and meta optional)
                      -> re-serialized raw tf.Example; any problem -> dead letter with its reason
  RunInference        KeyedModelHandler(SavedModelHandler): batches of serialized examples -> ctr, gate
                      weights; a batch that fails is retried row by row, a row that still fails -> dead letter
  WriteScores         JSONL or CSV: the key fields + ctr + gate weights
  WriteDeadLetters    dead_letters/*.jsonl {source, file, line, reason, detail, raw} (as build_samples)
  WriteSummary        summary.json: rows read = scored + dead-lettered + filtered, by reason

Batch retrieval (``--retrieve_top_k K``; docs/BEAM.md "Batch retrieval"): the same job runs the export's
``retrieve`` signature (``tfsr export --retrieval_model_dir``) on *contexts* instead, and writes the top-K
items of the whole catalogue for each::

  ReadRows | ReadUsers  the --input rows as above, or every user of <--users_from>/vocab/user_id.txt
                        (blank lines filtered), one context per user in --domain
  ParseContexts         a context's features (raw, not of the item: domain, user_id, query_id, query_text)
                        from a tf.Example / JSONL / CSV log row, validated; query_id = the normalised
                        query_text for log rows; rows of another domain than --domain -> filtered
  RunInference          KeyedModelHandler(RetrieveHandler): batches of contexts + k -> item_ids, scores
                        [B, K], K = min(k, catalogue); a failing batch goes row by row, a failing row ->
                        dead letter (``unknown_domain`` when the retrieval model does not know its domain)
  WriteRetrieved        retrieved-*.jsonl {key fields..., items: [ids], scores: [floats]}, best first (CSV:
                        '|'-joined lists)

One module on purpose (one job: model, reading, parsing, scoring, retrieval, summary, CLI); what it shares
with ``build_samples`` lives in :mod:`beam_jobs.core` and :mod:`beam_jobs.reading`.

Each row is validated *before* batching: one malformed example would otherwise fail ``tf.io.parse_example``
for its whole batch. Local run (Beam's in-process FnApiRunner, the DirectRunner's engine)::

  tfsr batch-score --saved_model saved_models/tfsr --input 'artifacts/samples/pretrain_eval/*' \\
      --output_dir artifacts/scores

Dataflow (see docs/RELIABILITY.md)::

  tfsr batch-score --saved_model gs://bucket/saved_models/tfsr --input 'gs://bucket/logs/*.jsonl.gz' \\
      --output_dir gs://bucket/scores --runner DataflowRunner --project P --region R \\
      --temp_location gs://bucket/tmp --setup_file ./setup.py

The top 100 items for every user of a domain::

  tfsr batch-score --saved_model saved_models/tfsr --retrieve_top_k 100 --domain rec_drama \\
      --users_from artifacts/samples --output_dir artifacts/top100_rec_drama
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from beam_jobs.core import WriteDeadLetters, lost_inputs, pipeline_options
from beam_jobs.reading import (
    DEAD,
    FILTERED,
    READ_ERRORS,
    TRUNCATED_INPUT,
    LineRef,
    dead_letter,
    numbered_lines,
    open_checked,
    snippet,
    truncated_input,
)
from beam_jobs.saved_model_handler import SIGNATURE, SavedModelSignatureHandler
from tfsr.cli import UsageError
from tfsr.contract import (
    ASPECTS,
    ENTITIES,
    RETRIEVAL_K_INPUT,
    RETRIEVE_SIGNATURE,
    RowError,
)
from tfsr.datasets import logs as logfmt
from tfsr.datasets.rows import MAX_TEXT_CHARS, decode_line, normalize_query
from tfsr.features import Feature, FeatureSpec
from tfsr.layout import DEAD_LETTERS_DIR, VOCAB_DIR

import apache_beam as beam
from apache_beam import typehints
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    PredictionResult,
    RunInference,
)

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "tfsr_batch_score"
INPUT_NAME = "examples"
OUTPUTS = ("ctr", "gate_weights")
EXPORT_INFO = "assets.extra/tfsr_export.json"
SUMMARY = "summary.json"
TFRECORD = "tfrecord"
INPUT_FORMATS = ("auto", TFRECORD, *logfmt.FORMATS)
OUTPUT_FORMATS = ("jsonl", "csv")
DEFAULT_KEY_FIELDS = ("domain", "user_id", "query_text", "item_id")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")
CORRUPT_TFRECORD = "corrupt_tfrecord"
# dead-letter reasons that mean rows were lost before they could be counted: the job fails (run() -> 1)
INPUT_ERROR_REASONS = frozenset({TRUNCATED_INPUT, CORRUPT_TFRECORD})
# batch retrieval (--retrieve_top_k)
SCORES = "scores"  # the output files of scoring: scores-*.jsonl / .csv
RETRIEVED = "retrieved"  # ... and of retrieval: retrieved-*.jsonl / .csv
RETRIEVE_OUTPUTS = ("item_ids", "scores")
USER_VOCAB = "user_vocab"  # the "format" of a --users_from row: one user id
USERS_SOURCE = "users"  # the dead letters' source of those rows
OTHER_DOMAIN = "other_domain"  # filtered: a context of another domain than --domain
UNKNOWN_DOMAIN = "unknown_domain"  # dead letter: a domain the feature spec has but the retrieval model not
INFERENCE_ERROR = "inference_error"


# ---------------------------------------------------------------------------------------- the model
def resolve_saved_model(path: str) -> tuple[str, int | None]:
    """(version directory, version) of ``path``: a version directory, or a model directory (highest version)."""
    path = path.rstrip("/")
    if FileSystems.exists(f"{path}/saved_model.pb"):
        last = path.rsplit("/", 1)[-1]
        return path, int(last) if last.isdigit() else None
    versions = []
    for result in FileSystems.match([f"{path}/*/saved_model.pb"]):
        for metadata in result.metadata_list:
            name = metadata.path.rstrip("/").rsplit("/", 2)[-2]
            if name.isdigit():
                versions.append(int(name))
    if not versions:
        raise FileNotFoundError(
            f"{path} is neither a SavedModel directory nor a model directory with integer versions"
        )
    return f"{path}/{max(versions)}", max(versions)


def read_export_info(version_dir: str) -> dict:
    """``assets.extra/tfsr_export.json`` of an export (feature spec, signatures, retrieval catalogue)."""
    with FileSystems.open(f"{version_dir}/{EXPORT_INFO}") as handle:
        return json.loads(handle.read().decode("utf-8"))


def read_export_spec(version_dir: str) -> FeatureSpec:
    """The FeatureSpec recorded by ``tfsr.export`` in ``assets.extra/tfsr_export.json``."""
    return FeatureSpec.from_json(read_export_info(version_dir)["feature_spec"])


class _RowByRowHandler(SavedModelSignatureHandler):
    """A signature handler whose failing batch is retried row by row (subclasses implement ``_call``).

    ``run_inference`` returns one ``PredictionResult`` per element. When the signature fails on a batch, the
    rows are retried one by one and a row that still fails gets ``inference=None`` and the error in
    ``model_id`` (a dead letter downstream), so one poisoned row cannot take its batch or the job down.
    """

    def _call(self, model: Any, batch: Sequence[Any]) -> list:
        raise NotImplementedError

    def run_inference(
        self, batch: Sequence[Any], model: Any, inference_args: Mapping[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        import tensorflow as tf

        errors = (tf.errors.OpError, ValueError, TypeError, KeyError)
        try:
            return [PredictionResult(x, y) for x, y in zip(batch, self._call(model, batch), strict=True)]
        except errors as err:
            logger.warning(
                "batch of %d failed (%s); running its rows one by one", len(batch), error_summary(err)
            )
        results = []
        for element in batch:
            try:
                results.append(PredictionResult(element, self._call(model, [element])[0]))
            except errors as err:
                results.append(PredictionResult(element, None, model_id=error_summary(err)))
        return results


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node")


def error_summary(err: BaseException, limit: int = 300) -> str:
    """``Type: the line that says why`` of a model error: a graph assertion's message ("assertion failed:
    [unknown domain name in the batch; ...]") rather than TensorFlow's "Graph execution error:" header."""
    lines = [line.strip() for line in str(getattr(err, "message", err)).splitlines() if line.strip()]
    lines = [line.replace("\\'", "'") for line in lines]
    asserted = [line for line in lines if line.startswith("assertion failed:")]
    useful = asserted or [line for line in lines if not line.startswith(_NOISE)] or lines or [""]
    return f"{type(err).__name__}: {useful[0][:limit]}"


class SavedModelHandler(_RowByRowHandler):
    """Runs an exported tfsr SavedModel's ``serving_default`` signature on batches of serialized examples.

    Args:
      saved_model_dir: a version directory (local path or a Beam/TF filesystem URL such as gs://).
      min_batch_size / max_batch_size: Beam's batching bounds for RunInference.

    ``run_inference`` returns one ``PredictionResult`` per example with ``inference`` = ``{"ctr": float,
    "gate_weights": float32 [3, 3]}``; a failing batch goes row by row (:class:`_RowByRowHandler`).
    """

    def __init__(self, saved_model_dir: str, min_batch_size: int = 16, max_batch_size: int = 256):
        super().__init__(saved_model_dir, min_batch_size, max_batch_size, METRICS_NAMESPACE)

    def _call(self, model: Any, batch: Sequence[bytes]) -> list[dict]:
        import tensorflow as tf

        outputs = model.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(list(batch), dtype=tf.string)})
        ctr = outputs["ctr"].numpy()
        gates = outputs["gate_weights"].numpy()
        return [{"ctr": float(c), "gate_weights": g} for c, g in zip(ctr, gates, strict=True)]


class RetrieveHandler(_RowByRowHandler):
    """Runs an export's ``retrieve`` signature on batches of contexts: the top-`k` items of the catalogue.

    Args:
      saved_model_dir: a version directory exported with a retrieval model (``tfsr export
        --retrieval_model_dir``).
      k: items per context (the signature answers ``K = min(k, catalogue size)``); must be positive.
      min_batch_size / max_batch_size: Beam's batching bounds for RunInference.

    Each element is a context: a dict holding every input of the signature but ``k`` (``domain``,
    ``user_id``, ``query_id``, ``query_text`` for the default spec). ``inference`` =
    ``{"items": [item ids], "scores": [floats]}``, best first. A batch the signature refuses (a context
    whose domain the retrieval model does not know fails its whole batch) goes row by row.
    """

    def __init__(self, saved_model_dir: str, k: int, min_batch_size: int = 16, max_batch_size: int = 256):
        super().__init__(
            saved_model_dir, min_batch_size, max_batch_size, METRICS_NAMESPACE, signature=RETRIEVE_SIGNATURE
        )
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k must be a positive number of items, got {k!r}")
        self.k = k

    def _call(self, model: Any, batch: Sequence[Mapping[str, Any]]) -> list[dict]:
        import tensorflow as tf

        signature = model.signatures[RETRIEVE_SIGNATURE]
        inputs = {
            name: tf.constant([context[name] for context in batch], dtype=spec.dtype)
            for name, spec in signature.structured_input_signature[1].items()
            if name != RETRIEVAL_K_INPUT
        }
        inputs[RETRIEVAL_K_INPUT] = tf.constant(self.k, tf.int32)
        outputs = signature(**inputs)
        ids, scores = (outputs[name].numpy() for name in RETRIEVE_OUTPUTS)
        return [
            {"items": [i.decode("utf-8", "replace") for i in row_ids], "scores": row_scores.tolist()}
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]


# ------------------------------------------------------------------------------------------ reading
def input_format(path: str, requested: str = "auto") -> str:
    """'tfrecord', 'jsonl' or 'csv' for a file: `requested`, or from the name when 'auto'."""
    if requested != "auto":
        return requested
    if path.lower().endswith(TFRECORD_SUFFIXES):
        return TFRECORD
    return logfmt.log_format(path)


class _ReadRowsFn(beam.DoFn):
    """One file -> (LineRef, (format, raw bytes)) per TFRecord record or log line.

    Rows keep their file and number for dead letters; bytes are read so invalid UTF-8 becomes a dead
    letter rather than a crash. Log lines are read as ``build_samples`` reads them
    (:func:`beam_jobs.reading.numbered_lines`): CSV headers and blank lines go to FILTERED, a compressed
    file that ends early is one ``truncated_input`` dead letter after its last good line. A TFRecord file
    ends at its first corrupt frame (``corrupt_tfrecord``: nothing after it can be framed) or at the cut
    of a truncated .gz (``truncated_input``). Either fails the job (:data:`INPUT_ERROR_REASONS`).
    """

    def __init__(self, requested_format: str):
        self.requested_format = requested_format
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")

    def process(self, path: str):
        fmt = input_format(path, self.requested_format)
        logger.info("reading %s (%s)", path, fmt)
        if fmt == TFRECORD:
            yield from self._records(path)
            return
        header = logfmt.CSV_HEADER if fmt == "csv" else None
        for out in numbered_lines(path, "logs", header, self.rows_read):
            yield out if isinstance(out, beam.pvalue.TaggedOutput) else (out[0], (fmt, out[1]))

    def _records(self, path: str):
        number = 0
        try:
            with open_checked(path) as handle:
                while True:
                    try:
                        record = _TFRecordUtil.read_record(handle)
                    except ValueError as err:  # a frame's length or CRC does not check out
                        self.rows_read.inc()
                        ref = LineRef("tfrecords", path, number + 1, "")
                        detail = f"{path}: record {number + 1}: {str(err)[:200]}"
                        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, CORRUPT_TFRECORD, detail))
                        return
                    if record is None:
                        return
                    number += 1
                    self.rows_read.inc()
                    yield LineRef("tfrecords", path, number, snippet(record)), (TFRECORD, record)
        except READ_ERRORS as err:
            self.rows_read.inc()
            yield beam.pvalue.TaggedOutput(DEAD, truncated_input("tfrecords", path, number, err, "record"))


# ------------------------------------------------------------------------------------------ parsing
def _validate(record: Mapping[str, Any], spec: FeatureSpec) -> dict:
    """FeatureSpec validation of raw features (required) and label / meta features (when present)."""
    roles = ["raw", "meta"] if record.get("label") is None else ["raw", "label", "meta"]
    return spec.validate(record, roles=roles)


def parse_log_row(raw: bytes | str, fmt: str, spec: FeatureSpec) -> dict:
    """One generic-format log line (docs/BEAM.md) -> validated record; the label is optional when scoring.

    The rules and dead-letter reasons are those of :func:`tfsr.datasets.logs.parse_log_line`.
    """
    return logfmt.parse_log_line(raw, fmt, spec, require_label=False)


def parse_example_row(serialized: bytes, spec: FeatureSpec) -> dict:
    """One serialized ``tf.train.Example`` (a sample, or a serving request) -> validated record.

    Derived features (text embeddings) are ignored: the SavedModel computes them in the graph.

    Raises:
      RowError: ``malformed_example`` (not an Example proto) or ``invalid_<feature>`` (missing, wrong kind,
        wrong number of values, not UTF-8, unknown domain...).
    """
    return _validate(_example_values(serialized, spec.select(["raw", "label", "meta"])), spec)


def _example_values(serialized: bytes, features: Iterable[Feature]) -> dict:
    """The values of `features` in one serialized ``tf.train.Example`` (unvalidated; absent ones left out)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(serialized)
    except DecodeError as err:
        raise RowError("malformed_example", f"not a serialized tf.train.Example ({err})") from None
    present = example.features.feature
    record: dict[str, Any] = {}
    for f in features:
        if f.name not in present:
            continue
        feature = present[f.name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if f.varlen or f.shape:
            record[f.name] = values
        elif len(values) == 1:
            record[f.name] = values[0]
        elif values:
            raise RowError(f"invalid_{f.name}", f"expected 1 value, got {len(values)}")
    return record


# ------------------------------------------------------------------------------ retrieval contexts
def context_inputs(spec: FeatureSpec) -> list[str]:
    """The raw features of a retrieval context (entity not ``item``): the ``retrieve`` signature's inputs
    besides ``k`` (``domain``, ``user_id``, ``query_id``, ``query_text`` for the default spec)."""
    return [f.name for f in spec.raw_features if f.entity != "item"]


def context_spec(spec: FeatureSpec) -> FeatureSpec:
    """The part of `spec` a context row is validated with: its raw, label and meta features that are not
    of the item (a context has no item; the label and meta features may ride along as key fields)."""
    features = [
        f
        for f in spec.features
        if f.role in ("raw", "label", "meta") and (f.entity != "item" or f.role == "label")
    ]
    return FeatureSpec(features, spec.domains, spec.text_dim)


def parse_context_row(raw: bytes, fmt: str, spec: FeatureSpec, domain: str | None = None) -> dict:
    """One input row -> a validated retrieval context (the features of :func:`context_spec`).

    Args:
      raw: a serialized ``tf.Example`` (a sample or a request: its item features are ignored), a generic
        log line (JSONL: the item columns may be left out; CSV: every column, item ones possibly empty),
        or, for `fmt` ``user_vocab``, one line of a user vocabulary.
      fmt: ``tfrecord``, ``jsonl``, ``csv`` or ``user_vocab``.
      spec: the context spec (:func:`context_spec` of the export's spec).
      domain: the domain of a ``user_vocab`` row.

    A log row's ``query_id`` is its normalised ``query_text`` (as :func:`tfsr.datasets.logs.parse_log_line`
    computes it); a tf.Example carries its own. The search / rec query rules of logs are not applied: a
    search domain without a query is a valid (recommendation-like) retrieval context, as for the
    ``retrieve`` signature itself.

    Raises:
      RowError: malformed row, text too long, or a FeatureSpec violation (``invalid_<field>``, such as
        ``invalid_domain`` for a domain the spec does not know).
    """
    if fmt == USER_VOCAB:
        record: dict[str, Any] = {"domain": domain, "user_id": decode_line(raw)}
    elif fmt == TFRECORD:
        record = _example_values(raw, spec.features)
    else:  # a generic log line, read as tfsr.datasets.logs reads it (unknown keys, int columns, lists)
        record = logfmt.read_log_fields(raw, fmt)
    for f in spec.select(["raw"], aspect="text"):
        value = record.get(f.name)
        if isinstance(value, str | bytes) and len(value) > MAX_TEXT_CHARS:
            raise RowError(
                f"{f.name}_too_long", f"{f.name} has {len(value)} characters (max {MAX_TEXT_CHARS})"
            )
    values = _validate(record, spec)
    if fmt in logfmt.FORMATS and "query_id" in spec and "query_text" in spec:
        values["query_id"] = normalize_query(values["query_text"])
    return values


class _ParseContextFn(beam.DoFn):
    """(LineRef, (format, raw)) -> ((LineRef, key fields), context inputs) or a dead letter; a context of
    another domain than `domain` (when filtering) -> FILTERED (``other_domain``)."""

    def __init__(self, spec: FeatureSpec, key_fields: Sequence[str], domain: str | None, keep_domain: bool):
        self.spec = context_spec(spec)
        self.inputs = tuple(context_inputs(spec))
        self.key_fields = tuple(key_fields)
        self.domain = domain
        self.keep_domain = keep_domain  # --input with --domain: keep only that domain's contexts
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.filtered = Metrics.counter(METRICS_NAMESPACE, "filtered_other_domain")

    def process(self, element):
        ref, (fmt, raw) = element
        try:
            record = parse_context_row(raw, fmt, self.spec, self.domain)
        except RowError as err:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, err.reason, err.detail))
            return
        if self.keep_domain and record["domain"] != self.domain:
            self.filtered.inc()
            yield beam.pvalue.TaggedOutput(FILTERED, (ref, OTHER_DOMAIN))
            return
        keys = tuple(record.get(name) for name in self.key_fields)
        yield (ref, keys), {name: record[name] for name in self.inputs}


class _ReadUsersFn(beam.DoFn):
    """A user vocabulary file -> (LineRef, ("user_vocab", user id bytes)) per line; blank lines filtered."""

    def __init__(self):
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")

    def process(self, path: str):
        logger.info("reading the users of %s", path)
        for out in numbered_lines(path, USERS_SOURCE, None, self.rows_read):
            yield out if isinstance(out, beam.pvalue.TaggedOutput) else (out[0], (USER_VOCAB, out[1]))


# An output row (scores-* / retrieved-*): the key fields and the model's outputs, by name. Declared on the
# ParDo: Beam infers a Union with the dead letters' TaggedOutput from the DoFn's code otherwise.
OutputRow = typehints.Dict[str, Any]


class _ToRowsFn(beam.DoFn):
    """RunInference results -> rows {key fields..., the model's outputs}; failed rows -> dead letters.

    Subclasses name their counter and give `outputs` (and `failure`, the dead letter's reason and detail)."""

    counter = "scored"

    def __init__(self, key_fields: Sequence[str]):
        self.key_fields = tuple(key_fields)
        self.written = Metrics.counter(METRICS_NAMESPACE, self.counter)
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def failure(self, result) -> tuple[str, str]:
        return INFERENCE_ERROR, str(result.model_id)

    def outputs(self, inference) -> dict:
        raise NotImplementedError

    def process(self, element):
        (ref, keys), result = element
        if result.inference is None:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, *self.failure(result)))
            return
        self.written.inc()
        yield {**dict(zip(self.key_fields, keys, strict=True)), **self.outputs(result.inference)}


class _ToRetrievedFn(_ToRowsFn):
    """Rows {key fields..., items, scores}. A context whose domain is not one of `retrieve_domains` (the
    export's record of what the retrieval model knows) is an ``unknown_domain`` dead letter naming the
    domain; any other failure ``inference_error``."""

    counter = "retrieved"

    def __init__(self, key_fields: Sequence[str], retrieve_domains: Sequence[str] | None):
        super().__init__(key_fields)
        self.retrieve_domains = list(retrieve_domains) if retrieve_domains is not None else None

    def failure(self, result) -> tuple[str, str]:
        domain = result.example.get("domain")
        if self.retrieve_domains is not None and domain not in self.retrieve_domains:
            return UNKNOWN_DOMAIN, (
                f"domain {domain!r} is unknown to the retrieval model (it knows {self.retrieve_domains}): "
                f"{result.model_id}"
            )
        return INFERENCE_ERROR, f"domain {domain!r}: {result.model_id}"

    def outputs(self, inference) -> dict:
        return {"items": inference["items"], "scores": inference["scores"]}


class _ParseFn(beam.DoFn):
    """(LineRef, (format, raw)) -> ((LineRef, key fields), serialized raw tf.Example) or a dead letter."""

    def __init__(self, spec: FeatureSpec, key_fields: Sequence[str]):
        self.spec = spec
        self.key_fields = tuple(key_fields)
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def process(self, element):
        ref, (fmt, raw) = element
        try:
            if fmt == TFRECORD:
                record = parse_example_row(raw, self.spec)
            else:
                record = parse_log_row(raw, fmt, self.spec)
            serialized = self.spec.to_example(record, roles=("raw",)).SerializeToString()
        except RowError as err:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, err.reason, err.detail))
            return
        keys = tuple(record.get(name) for name in self.key_fields)
        yield (ref, keys), serialized


class _ToScoreFn(_ToRowsFn):
    """Score rows {key fields..., ctr, gate_weights}."""

    def outputs(self, inference) -> dict:
        return {"ctr": inference["ctr"], "gate_weights": gate_dict(inference["gate_weights"])}


def gate_dict(gates) -> dict | list:
    """``[3, 3]`` gate weights -> {entity: {aspect: weight}} (a nested list for any other shape)."""
    if getattr(gates, "shape", None) == (len(ENTITIES), len(ASPECTS)):
        return {e: {a: float(gates[i][j]) for j, a in enumerate(ASPECTS)} for i, e in enumerate(ENTITIES)}
    return gates.tolist()


def retrieved_csv_columns(key_fields: Sequence[str]) -> list[str]:
    """The CSV header of retrieval rows: key fields, items, scores ('|'-joined lists)."""
    return [*key_fields, "items", "scores"]


def format_retrieved(row: Mapping[str, Any], fmt: str, key_fields: Sequence[str]) -> str:
    """One retrieval row as a JSONL or CSV line (no line ending); CSV lists are '|'-joined."""
    if fmt == "jsonl":
        return json.dumps(row, ensure_ascii=False)
    values = ["" if row[k] is None else row[k] for k in key_fields]
    lists = ["|".join(row["items"]), "|".join(map(repr, row["scores"]))]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([*values, *lists])
    return buffer.getvalue()


def csv_columns(key_fields: Sequence[str]) -> list[str]:
    """The CSV header of the scores: key fields, ctr, then gate_<entity>_<aspect>."""
    return [*key_fields, "ctr", *(f"gate_{e}_{a}" for e in ENTITIES for a in ASPECTS)]


def format_score(row: Mapping[str, Any], fmt: str, key_fields: Sequence[str]) -> str:
    """One score row as a JSONL or CSV line (no line ending)."""
    if fmt == "jsonl":
        return json.dumps(row, ensure_ascii=False)
    gates = row["gate_weights"]
    flat = [gates[e][a] for e in ENTITIES for a in ASPECTS] if isinstance(gates, dict) else []
    values = [
        "|".join(v) if isinstance(v, list) else ("" if v is None else v) for v in (row[k] for k in key_fields)
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([*values, repr(row["ctr"]), *map(repr, flat)])
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- the summary
def build_summary(stats: Mapping[tuple, int], info: Mapping[str, Any]) -> dict:
    """The run summary from the pipeline's counts (pure; unit-tested): rows read = scored + dead + filtered."""
    read = stats.get(("read",), 0)
    scored = stats.get(("scored",), 0)
    dead = {k[1]: v for k, v in sorted(stats.items()) if k[0] == "dead_lettered"}
    filtered = {k[1]: v for k, v in sorted(stats.items()) if k[0] == "filtered"}
    return {
        **info,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reconciliation": {
            "read": read,
            "scored": scored,
            "dead_lettered": dead,
            "filtered": filtered,
            "balanced": read == scored + sum(dead.values()) + sum(filtered.values()),
        },
    }


def _write_summary(stats: dict, output_dir: str, info: dict) -> None:
    summary = build_summary(stats, info)
    with FileSystems.create(f"{output_dir}/{SUMMARY}") as handle:
        handle.write((json.dumps(summary, indent=2) + "\n").encode("utf-8"))


def read_summary(output_dir: str) -> dict:
    with FileSystems.open(f"{output_dir.rstrip('/')}/{SUMMARY}") as handle:
        return json.loads(handle.read().decode("utf-8"))


# ------------------------------------------------------------------------------------ the pipeline
def _read_input(p: beam.Pipeline, pattern: str, requested_format: str):
    """ReadRows: every file of `pattern` -> numbered rows (main "rows"), FILTERED and DEAD outputs."""
    return (
        p
        | "MatchInput" >> fileio.MatchFiles(pattern)
        | "Paths" >> beam.Map(lambda metadata: metadata.path)
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadRows" >> beam.ParDo(_ReadRowsFn(requested_format)).with_outputs(FILTERED, DEAD, main="rows")
    )


def _ledger(read_parts, written, dead_parts, filtered_parts, out: str, info: dict) -> None:
    """Dead letters, and summary.json: rows read = written (scored / retrieved) + dead-lettered + filtered."""
    dead = tuple(dead_parts) | "AllDeadLetters" >> beam.Flatten()
    _ = dead | "DeadLetters" >> WriteDeadLetters(out)
    read = tuple(read_parts) | "AllRowsRead" >> beam.Flatten()
    filtered = tuple(filtered_parts) | "AllFiltered" >> beam.Flatten()
    ledger = [
        read | "CountRead" >> beam.Map(lambda _: (("read",), 1)),
        written | "CountScored" >> beam.Map(lambda _: (("scored",), 1)),
        dead | "CountDead" >> beam.Map(lambda d: (("dead_lettered", d["reason"]), 1)),
        filtered | "CountFiltered" >> beam.Map(lambda f: (("filtered", f[1]), 1)),
    ]
    _ = (
        ledger
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "CountTable" >> beam.combiners.ToDict()
        | "WriteSummary" >> beam.Map(_write_summary, out, info)
    )


def _write_rows(rows, out: str, prefix: str, fmt: str, formatter, key_fields: Sequence[str], header) -> None:
    _ = (
        rows
        | "Format" + prefix.title() >> beam.Map(formatter, fmt, list(key_fields))
        | "Write" + prefix.title()
        >> beam.io.WriteToText(
            f"{out}/{prefix}",
            file_name_suffix=f".{fmt}",
            header=",".join(header(key_fields)) if fmt == "csv" else None,
        )
    )


def build_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    spec: FeatureSpec,
    version_dir: str,
    key_fields: Sequence[str],
    info: dict,
) -> None:
    """Adds the batch-scoring graph to `p` (separate from run() so tests can drive it)."""
    out = args.output_dir.rstrip("/")
    rows = _read_input(p, args.input, args.input_format)
    parsed = rows.rows | "ParseAndValidate" >> beam.ParDo(_ParseFn(spec, key_fields)).with_outputs(
        DEAD, main="rows"
    )
    handler = SavedModelHandler(version_dir, args.min_batch_size, args.max_batch_size)
    scores = (
        parsed.rows
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "ToScoreRows"
        >> beam.ParDo(_ToScoreFn(key_fields)).with_output_types(OutputRow).with_outputs(DEAD, main="rows")
    )
    _write_rows(scores.rows, out, SCORES, args.output_format, format_score, key_fields, csv_columns)
    _ledger(
        (rows.rows, rows[FILTERED], rows[DEAD]),
        scores.rows,
        (rows[DEAD], parsed[DEAD], scores[DEAD]),
        (rows[FILTERED],),
        out,
        info,
    )


def users_vocab_path(samples_dir: str) -> str:
    """The user vocabulary of a samples directory (``<samples_dir>/vocab/user_id.txt``, any filesystem)."""
    return f"{samples_dir.rstrip('/')}/{VOCAB_DIR}/user_id.txt"


def build_retrieval_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    spec: FeatureSpec,
    version_dir: str,
    key_fields: Sequence[str],
    info: dict,
    retrieve_domains: Sequence[str] | None = None,
) -> None:
    """Adds the batch-retrieval graph to `p`: contexts (--input rows, or every user of --users_from in
    --domain) -> the ``retrieve`` signature -> retrieved-* rows, dead letters and summary.json."""
    out = args.output_dir.rstrip("/")
    if args.users_from:
        rows = (
            p
            | "MatchUsers" >> fileio.MatchFiles(users_vocab_path(args.users_from))
            | "UserPaths" >> beam.Map(lambda metadata: metadata.path)
            | "ReadUsers" >> beam.ParDo(_ReadUsersFn()).with_outputs(FILTERED, DEAD, main="rows")
        )
        contexts = rows.rows | "SpreadUsers" >> beam.Reshuffle()  # one file: spread its users over workers
    else:
        rows = _read_input(p, args.input, args.input_format)
        contexts = rows.rows
    keep_domain = bool(args.domain) and not args.users_from
    parsed = contexts | "ParseContexts" >> beam.ParDo(
        _ParseContextFn(spec, key_fields, args.domain, keep_domain)
    ).with_outputs(FILTERED, DEAD, main="rows")
    handler = RetrieveHandler(version_dir, args.retrieve_top_k, args.min_batch_size, args.max_batch_size)
    retrieved = (
        parsed.rows
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "ToRetrievedRows"
        >> beam.ParDo(_ToRetrievedFn(key_fields, retrieve_domains))
        .with_output_types(OutputRow)
        .with_outputs(DEAD, main="rows")
    )
    _write_rows(
        retrieved.rows,
        out,
        RETRIEVED,
        args.output_format,
        format_retrieved,
        key_fields,
        retrieved_csv_columns,
    )
    _ledger(
        (rows.rows, rows[FILTERED], rows[DEAD]),
        retrieved.rows,
        (rows[DEAD], parsed[DEAD], retrieved[DEAD]),
        (rows[FILTERED], parsed[FILTERED]),
        out,
        info,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfsr batch-score", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--saved_model",
        required=True,
        help="an exported model: a version directory, or the model directory (its highest version)",
    )
    parser.add_argument(
        "--input",
        help="glob of TFRecord samples (*.tfrecord[.gz]) or generic logs (*.jsonl/*.csv); with "
        "--retrieve_top_k, the contexts to retrieve for (required unless --users_from)",
    )
    parser.add_argument(
        "--input_format",
        choices=INPUT_FORMATS,
        default="auto",
        help="format of every input file; 'auto' (default) tells it from each file name",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        help="where scores-* (or retrieved-*), dead_letters/ and summary.json go",
    )
    parser.add_argument(
        "--output_format", choices=OUTPUT_FORMATS, default="jsonl", help="scores / retrieved file format"
    )
    parser.add_argument(
        "--key_fields",
        help="comma-separated input features copied into each output row (e.g. add label,timestamp); "
        f"default {','.join(DEFAULT_KEY_FIELDS)}, with --retrieve_top_k the context's domain,user_id"
        "[,query_text]",
    )
    parser.add_argument(
        "--feature_spec", help="feature_spec.json to validate with (default: the one recorded in the export)"
    )
    parser.add_argument("--min_batch_size", type=int, default=1, help="RunInference's smallest batch")
    parser.add_argument("--max_batch_size", type=int, default=256, help="RunInference's largest batch")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in --output_dir")
    retrieval = parser.add_argument_group("batch retrieval (an export with the retrieve signature)")
    retrieval.add_argument(
        "--retrieve_top_k",
        type=int,
        metavar="K",
        help="write the top-K items of the catalogue for each context (the export's `retrieve` signature; "
        "K larger than the catalogue: all of it) instead of scoring rows",
    )
    retrieval.add_argument(
        "--users_from",
        metavar="SAMPLES_DIR",
        help="retrieve for every user of SAMPLES_DIR/vocab/user_id.txt in --domain (instead of --input)",
    )
    retrieval.add_argument(
        "--domain",
        help="the domain of the --users_from contexts; with --input, only the contexts of this domain "
        "(the others are filtered: other_domain)",
    )
    return parser


def _key_fields(args: argparse.Namespace, spec: FeatureSpec) -> list[str]:
    if args.retrieve_top_k is None:
        allowed = [f.name for f in spec.features if f.role != "derived"]
        default = list(DEFAULT_KEY_FIELDS)
    else:  # a context has no item: its raw, label and meta features
        allowed = [f.name for f in context_spec(spec).features]
        default = ["domain", "user_id"] + ([] if args.users_from else ["query_text"])
        default = [k for k in default if k in allowed]
    if args.key_fields is None:
        return default
    key_fields = [k.strip() for k in args.key_fields.split(",") if k.strip()]
    unknown = [k for k in key_fields if k not in allowed]
    if not key_fields or unknown:
        what = "item, unknown or derived" if args.retrieve_top_k is not None else "unknown or derived"
        raise UsageError(f"--key_fields: {what} features {unknown or key_fields!r}")
    return key_fields


def _check_retrieval_args(args: argparse.Namespace, spec: FeatureSpec, export_info: Mapping) -> None:
    if args.retrieve_top_k is None:
        for flag in ("users_from", "domain"):
            if getattr(args, flag):
                raise UsageError(f"--{flag} is for batch retrieval: pass --retrieve_top_k K too")
        if not args.input:
            raise UsageError("--input is required (the rows to score)")
        return
    if args.retrieve_top_k <= 0:
        raise UsageError(f"--retrieve_top_k must be a positive number of items, got {args.retrieve_top_k}")
    if RETRIEVE_SIGNATURE not in export_info.get("signatures", {}):
        raise UsageError(
            f"--saved_model {args.saved_model} has no {RETRIEVE_SIGNATURE!r} signature: export the ranker "
            "with a retrieval model (`tfsr export --retrieval_model_dir ...`)"
        )
    if bool(args.input) == bool(args.users_from):
        raise UsageError("--retrieve_top_k needs exactly one of --input (contexts) and --users_from")
    if args.users_from and not args.domain:
        raise UsageError("--users_from needs --domain (the domain to retrieve in for every user)")
    if args.domain:
        if args.domain not in spec.domains:
            raise UsageError(f"--domain {args.domain!r} is not a domain of the export: {spec.domains.names}")
        known = export_info.get("retrieval", {}).get("retrieve_domains")
        if known is not None and args.domain not in known:
            raise UsageError(f"--domain {args.domain!r}: the retrieval model knows only {known}")
    inputs = export_info.get("retrieval", {}).get("context_inputs")
    missing = sorted(set(inputs or []) - {RETRIEVAL_K_INPUT} - set(context_inputs(spec)))
    if missing:
        raise UsageError(
            f"the {RETRIEVE_SIGNATURE!r} signature needs context features {missing} the spec lacks"
        )
    if args.users_from and not FileSystems.exists(users_vocab_path(args.users_from)):
        raise UsageError(
            f"--users_from {args.users_from}: no user vocabulary {users_vocab_path(args.users_from)}"
        )


def _check_args(args: argparse.Namespace, spec: FeatureSpec, export_info: Mapping | None = None) -> list[str]:
    _check_retrieval_args(args, spec, export_info or {})
    key_fields = _key_fields(args, spec)
    if not 0 < args.min_batch_size <= args.max_batch_size:
        raise UsageError("need 0 < --min_batch_size <= --max_batch_size")
    if args.input:
        paths = [m.path for r in FileSystems.match([args.input]) for m in r.metadata_list]
        if not paths:
            raise UsageError(f"--input {args.input!r} matches no file")
        for path in paths:
            try:
                input_format(path, args.input_format)
            except ValueError as err:
                raise UsageError(f"{err} (or pass --input_format)") from None
    out = args.output_dir.rstrip("/")
    written = [FileSystems.match([f"{out}/{prefix}-*"])[0].metadata_list for prefix in (SCORES, RETRIEVED)]
    if FileSystems.exists(f"{out}/{SUMMARY}") or any(written):
        if not args.overwrite:
            raise UsageError(f"{args.output_dir} already holds results; pass --overwrite to replace them")
        FileSystems.delete([out])
    return key_fields


def run(argv: list[str] | None = None, save_main_session: bool = True) -> int:
    """Runs batch scoring (or, with --retrieve_top_k, batch retrieval); returns 0 when rows read = written
    + dead-lettered + filtered and every input file was read to its end, else 1 (a truncated or corrupt
    file: the rows after the cut are lost)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, pipeline_args = _parser().parse_known_args(argv)
    retrieving = args.retrieve_top_k is not None
    try:
        version_dir, version = resolve_saved_model(args.saved_model)
        export_info = {}
        if not args.feature_spec or retrieving:
            export_info = read_export_info(version_dir)
            spec = FeatureSpec.from_json(export_info["feature_spec"])
    except FileNotFoundError as err:  # no SavedModel, or one `tfsr export` did not write
        raise UsageError(f"--saved_model {args.saved_model}: not a tfsr export ({err})") from None
    if args.feature_spec:
        with FileSystems.open(args.feature_spec) as handle:
            spec = FeatureSpec.loads(handle.read().decode("utf-8"))
    key_fields = _check_args(args, spec, export_info)
    options = pipeline_options(pipeline_args, save_main_session)
    info = {
        "command": "tfsr batch-score " + shlex.join(argv),
        "saved_model": version_dir,
        "model_version": version,
        "input": args.input,
        "output_format": args.output_format,
        "key_fields": key_fields,
    }
    retrieval = export_info.get("retrieval", {})
    if retrieving:
        catalogue = retrieval.get("catalogue_items")
        info["retrieval"] = {
            "signature": RETRIEVE_SIGNATURE,
            "k": args.retrieve_top_k,
            "items_per_row": min(args.retrieve_top_k, catalogue) if catalogue else None,
            "catalogue_items": catalogue,
            "domain": args.domain,
            "users_from": users_vocab_path(args.users_from) if args.users_from else None,
        }
        source = f"every user of {users_vocab_path(args.users_from)}" if args.users_from else args.input
        logger.info(
            "retrieving the top %d items (catalogue: %s) for %s%s with %s (version %s)",
            args.retrieve_top_k,
            catalogue,
            source,
            f" in domain {args.domain}" if args.domain else "",
            version_dir,
            version,
        )
    else:
        logger.info("scoring %s with %s (version %s)", args.input, version_dir, version)
    with beam.Pipeline(options=options) as p:
        if retrieving:
            domains = retrieval.get("retrieve_domains")
            build_retrieval_pipeline(p, args, spec, version_dir, key_fields, info, domains)
        else:
            build_pipeline(p, args, spec, version_dir, key_fields, info)
    summary = read_summary(args.output_dir)
    rec = summary["reconciliation"]
    logger.info(
        "read %d = %s %d + dead-lettered %d %s + filtered %d %s %s",
        rec["read"],
        "retrieved" if retrieving else "scored",
        rec["scored"],
        sum(rec["dead_lettered"].values()),
        rec["dead_lettered"],
        sum(rec["filtered"].values()),
        rec["filtered"],
        "(balanced)" if rec["balanced"] else "(DOES NOT BALANCE)",
    )
    lost = lost_inputs(rec["dead_lettered"], INPUT_ERROR_REASONS)
    if lost:
        logger.error(
            "input files could not be read to their end %s: the results in %s are INCOMPLETE (see %s/)",
            lost,
            args.output_dir,
            DEAD_LETTERS_DIR,
        )
    return 0 if rec["balanced"] and not lost else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(run())
