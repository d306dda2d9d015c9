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

One module on purpose (its ~550 lines are one job: model, reading, parsing, scoring, summary, CLI); what
it shares with ``build_samples`` lives in :mod:`beam_jobs.core` and :mod:`beam_jobs.reading`.

Each row is validated *before* batching: one malformed example would otherwise fail ``tf.io.parse_example``
for its whole batch. Local run (Beam's in-process FnApiRunner, the DirectRunner's engine)::

  tfsr batch-score --saved_model saved_models/tfsr --input 'artifacts/samples/pretrain_eval/*' \\
      --output_dir artifacts/scores

Dataflow (see docs/RELIABILITY.md)::

  tfsr batch-score --saved_model gs://bucket/saved_models/tfsr --input 'gs://bucket/logs/*.jsonl.gz' \\
      --output_dir gs://bucket/scores --runner DataflowRunner --project P --region R \\
      --temp_location gs://bucket/tmp --setup_file ./setup.py
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
from tfsr.contract import ASPECTS, ENTITIES, RowError
from tfsr.datasets import logs as logfmt
from tfsr.features import FeatureSpec
from tfsr.layout import DEAD_LETTERS_DIR

import apache_beam as beam
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


def read_export_spec(version_dir: str) -> FeatureSpec:
    """The FeatureSpec recorded by ``tfsr.export`` in ``assets.extra/tfsr_export.json``."""
    with FileSystems.open(f"{version_dir}/{EXPORT_INFO}") as handle:
        info = json.loads(handle.read().decode("utf-8"))
    return FeatureSpec.from_json(info["feature_spec"])


class SavedModelHandler(SavedModelSignatureHandler):
    """Runs an exported tfsr SavedModel's ``serving_default`` signature on batches of serialized examples.

    Args:
      saved_model_dir: a version directory (local path or a Beam/TF filesystem URL such as gs://).
      min_batch_size / max_batch_size: Beam's batching bounds for RunInference.

    ``run_inference`` returns one ``PredictionResult`` per example with ``inference`` = ``{"ctr": float,
    "gate_weights": float32 [3, 3]}``. When the signature fails on a batch, the rows are retried one by one
    and a row that still fails gets ``inference=None`` and the error in ``model_id`` (a dead letter
    downstream), so one poisoned row cannot take its batch or the job down.
    """

    def __init__(self, saved_model_dir: str, min_batch_size: int = 16, max_batch_size: int = 256):
        super().__init__(saved_model_dir, min_batch_size, max_batch_size, METRICS_NAMESPACE)

    def _call(self, model: Any, batch: Sequence[bytes]) -> list[dict]:
        import tensorflow as tf

        outputs = model.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(list(batch), dtype=tf.string)})
        ctr = outputs["ctr"].numpy()
        gates = outputs["gate_weights"].numpy()
        return [{"ctr": float(c), "gate_weights": g} for c, g in zip(ctr, gates, strict=True)]

    def run_inference(
        self, batch: Sequence[bytes], model: Any, inference_args: Mapping[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        import tensorflow as tf

        try:
            return [PredictionResult(x, y) for x, y in zip(batch, self._call(model, batch), strict=True)]
        except (tf.errors.OpError, ValueError, TypeError) as err:
            logger.warning("batch of %d failed (%s); scoring its rows one by one", len(batch), err)
        results = []
        for example in batch:
            try:
                results.append(PredictionResult(example, self._call(model, [example])[0]))
            except (tf.errors.OpError, ValueError, TypeError) as err:
                message = str(getattr(err, "message", err)).strip().splitlines()[0][:300]
                results.append(PredictionResult(example, None, model_id=f"{type(err).__name__}: {message}"))
        return results


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
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(serialized)
    except DecodeError as err:
        raise RowError("malformed_example", f"not a serialized tf.train.Example ({err})") from None
    features = example.features.feature
    record: dict[str, Any] = {}
    for f in spec.select(["raw", "label", "meta"]):
        if f.name not in features:
            continue
        feature = features[f.name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if f.varlen or f.shape:
            record[f.name] = values
        elif len(values) == 1:
            record[f.name] = values[0]
        elif values:
            raise RowError(f"invalid_{f.name}", f"expected 1 value, got {len(values)}")
    return _validate(record, spec)


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


class _ToScoreFn(beam.DoFn):
    """RunInference results -> score rows {key fields..., ctr, gate_weights}; failed rows -> dead letters."""

    def __init__(self, key_fields: Sequence[str]):
        self.key_fields = tuple(key_fields)
        self.scored = Metrics.counter(METRICS_NAMESPACE, "scored")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def process(self, element):
        (ref, keys), result = element
        if result.inference is None:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, "inference_error", str(result.model_id)))
            return
        self.scored.inc()
        row = dict(zip(self.key_fields, keys, strict=True))
        row["ctr"] = result.inference["ctr"]
        row["gate_weights"] = gate_dict(result.inference["gate_weights"])
        yield row


def gate_dict(gates) -> dict | list:
    """``[3, 3]`` gate weights -> {entity: {aspect: weight}} (a nested list for any other shape)."""
    if getattr(gates, "shape", None) == (len(ENTITIES), len(ASPECTS)):
        return {e: {a: float(gates[i][j]) for j, a in enumerate(ASPECTS)} for i, e in enumerate(ENTITIES)}
    return gates.tolist()


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
    rows = (
        p
        | "MatchInput" >> fileio.MatchFiles(args.input)
        | "Paths" >> beam.Map(lambda metadata: metadata.path)
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadRows" >> beam.ParDo(_ReadRowsFn(args.input_format)).with_outputs(FILTERED, DEAD, main="rows")
    )
    parsed = rows.rows | "ParseAndValidate" >> beam.ParDo(_ParseFn(spec, key_fields)).with_outputs(
        DEAD, main="rows"
    )
    handler = SavedModelHandler(version_dir, args.min_batch_size, args.max_batch_size)
    scores = (
        parsed.rows
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "ToScoreRows" >> beam.ParDo(_ToScoreFn(key_fields)).with_outputs(DEAD, main="rows")
    )
    fmt = args.output_format
    _ = (
        scores.rows
        | "FormatScores" >> beam.Map(format_score, fmt, list(key_fields))
        | "WriteScores"
        >> beam.io.WriteToText(
            f"{out}/scores",
            file_name_suffix=f".{fmt}",
            header=",".join(csv_columns(key_fields)) if fmt == "csv" else None,
        )
    )
    dead = (rows[DEAD], parsed[DEAD], scores[DEAD]) | "AllDeadLetters" >> beam.Flatten()
    _ = dead | "DeadLetters" >> WriteDeadLetters(out)
    read = (rows.rows, rows[FILTERED], rows[DEAD]) | "AllRowsRead" >> beam.Flatten()
    ledger = [
        read | "CountRead" >> beam.Map(lambda _: (("read",), 1)),
        scores.rows | "CountScored" >> beam.Map(lambda _: (("scored",), 1)),
        dead | "CountDead" >> beam.Map(lambda d: (("dead_lettered", d["reason"]), 1)),
        rows[FILTERED] | "CountFiltered" >> beam.Map(lambda f: (("filtered", f[1]), 1)),
    ]
    _ = (
        ledger
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "CountTable" >> beam.combiners.ToDict()
        | "WriteSummary" >> beam.Map(_write_summary, out, info)
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
        required=True,
        help="glob of TFRecord samples (*.tfrecord[.gz]) or generic logs (*.jsonl/*.csv)",
    )
    parser.add_argument(
        "--input_format",
        choices=INPUT_FORMATS,
        default="auto",
        help="format of every input file; 'auto' (default) tells it from each file name",
    )
    parser.add_argument(
        "--output_dir", required=True, help="where scores-*, dead_letters/ and summary.json go"
    )
    parser.add_argument("--output_format", choices=OUTPUT_FORMATS, default="jsonl", help="scores file format")
    parser.add_argument(
        "--key_fields",
        default=",".join(DEFAULT_KEY_FIELDS),
        help="comma-separated input features copied into each score row (e.g. add label,timestamp)",
    )
    parser.add_argument(
        "--feature_spec", help="feature_spec.json to validate with (default: the one recorded in the export)"
    )
    parser.add_argument("--min_batch_size", type=int, default=1, help="RunInference's smallest batch")
    parser.add_argument("--max_batch_size", type=int, default=256, help="RunInference's largest batch")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in --output_dir")
    return parser


def _check_args(args: argparse.Namespace, spec: FeatureSpec) -> list[str]:
    key_fields = [k.strip() for k in args.key_fields.split(",") if k.strip()]
    unknown = [k for k in key_fields if k not in spec or spec[k].role == "derived"]
    if not key_fields or unknown:
        raise UsageError(f"--key_fields: unknown or derived features {unknown or key_fields!r}")
    if not 0 < args.min_batch_size <= args.max_batch_size:
        raise UsageError("need 0 < --min_batch_size <= --max_batch_size")
    paths = [m.path for r in FileSystems.match([args.input]) for m in r.metadata_list]
    if not paths:
        raise UsageError(f"--input {args.input!r} matches no file")
    for path in paths:
        try:
            input_format(path, args.input_format)
        except ValueError as err:
            raise UsageError(f"{err} (or pass --input_format)") from None
    out = args.output_dir.rstrip("/")
    if FileSystems.exists(f"{out}/{SUMMARY}") or FileSystems.match([f"{out}/scores-*"])[0].metadata_list:
        if not args.overwrite:
            raise UsageError(f"{args.output_dir} already holds scores; pass --overwrite to replace them")
        FileSystems.delete([out])
    return key_fields


def run(argv: list[str] | None = None, save_main_session: bool = True) -> int:
    """Runs batch scoring; returns 0 when rows read = scored + dead-lettered + filtered and every input file
    was read to its end, else 1 (a truncated or corrupt file: the rows after the cut are lost)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, pipeline_args = _parser().parse_known_args(argv)
    try:
        version_dir, version = resolve_saved_model(args.saved_model)
        if not args.feature_spec:
            spec = read_export_spec(version_dir)
    except FileNotFoundError as err:  # no SavedModel, or one `tfsr export` did not write
        raise UsageError(f"--saved_model {args.saved_model}: not a tfsr export ({err})") from None
    if args.feature_spec:
        with FileSystems.open(args.feature_spec) as handle:
            spec = FeatureSpec.loads(handle.read().decode("utf-8"))
    key_fields = _check_args(args, spec)
    options = pipeline_options(pipeline_args, save_main_session)
    info = {
        "command": "tfsr batch-score " + shlex.join(argv),
        "saved_model": version_dir,
        "model_version": version,
        "input": args.input,
        "output_format": args.output_format,
        "key_fields": key_fields,
    }
    logger.info("scoring %s with %s (version %s)", args.input, version_dir, version)
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, args, spec, version_dir, key_fields, info)
    summary = read_summary(args.output_dir)
    rec = summary["reconciliation"]
    logger.info(
        "read %d = scored %d + dead-lettered %d %s + filtered %d %s %s",
        rec["read"],
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
            "input files could not be read to their end %s: the scores in %s are INCOMPLETE (see %s/)",
            lost,
            args.output_dir,
            DEAD_LETTERS_DIR,
        )
    return 0 if rec["balanced"] and not lost else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(run())
