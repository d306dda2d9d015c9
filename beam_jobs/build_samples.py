"""build_samples: raw search / recommendation logs -> multi-domain TFRecord samples (Apache Beam).

Inputs: the MovieLens ml-latest-small layout (``--movielens_dir``) or generic-format logs
(``--logs GLOB``, :mod:`tfsr.datasets.logs`; the synthetic generator writes that format). Output: the
samples directory of :mod:`tfsr.layout`. Steps, each a labelled transform:

  read (numbered lines) -> parse -> join item metadata -> assign domains / construct search
  impressions -> validate (FeatureSpec) -> splits (per-user chronological or global time; cold-start
  fine-tune/eval) -> item-cold-start markers -> vocabularies -> text features (unique texts ->
  RunInference -> join back) -> gzip TFRecords + manifest.json + feature_spec.json

Every unusable input row becomes a dead letter (``dead_letters/*.jsonl``) with its reason and is
counted (Beam metrics and the manifest's reconciliation: rows read = used + dead-lettered + filtered).
Nothing collects the samples into one element or side input: only per-user groups, per-item joins
and small reference tables (movies, the tag search index, vocabularies, unique-text embeddings).

Local run::

  tfsr preprocess --movielens_dir ../shared/data/ml-latest-small --output_dir artifacts/samples

Dataflow (see docs/BEAM.md)::

  tfsr preprocess --logs 'gs://bucket/logs/*.jsonl.gz' --output_dir gs://bucket/samples \\
      --text_encoder_dir gs://bucket/text_encoder --runner DataflowRunner --project P --region R \\
      --temp_location gs://bucket/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from beam_jobs.sample_coder import SampleRecord, SplitRecord
from beam_jobs.text_inference import TextEncoderModelHandler, saved_model_dim
from tfsr import layout
from tfsr.cli import UsageError
from tfsr.datasets import logs as logfmt
from tfsr.datasets import movielens as ml
from tfsr.features import (
    MOVIELENS_DOMAINS,
    RECORD_ROLES,
    SCHEMA_VERSION,
    DomainRegistry,
    FeatureSpec,
    FeatureValidationError,
)

import apache_beam as beam
from apache_beam import typehints
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

logger = logging.getLogger(__name__)

DEAD = "dead"
FILTERED = "filtered"
METRICS_NAMESPACE = "tfsr_build_samples"
RAW_SNIPPET_CHARS = 200
VOCAB_FEATURES = ("user_id", "item_id", "query_id", "item_genres", "item_decade")
TEXT_FEATURES = {"query_text": "query_text_embedding", "item_title": "item_title_embedding"}
EVAL_SPLITS = (layout.PRETRAIN_EVAL, layout.COLDSTART_EVAL)
COLDSTART_FILTER_REASON = "coldstart_before_finetune_window"
PROGRESS_EVERY = 100_000
LOCAL_RUNNER = "FnApiRunner"


class LineRef(NamedTuple):
    """Where an input row came from, carried with it until it becomes samples (for dead letters)."""

    source: str
    path: str
    line: int
    raw: str


def _snippet(raw: bytes) -> str:
    return raw[:RAW_SNIPPET_CHARS].decode("utf-8", errors="backslashreplace")


def dead_letter(ref: LineRef, reason: str, detail: str) -> dict:
    """The dead-letter record of one unusable input row."""
    return {
        "source": ref.source,
        "file": ref.path,
        "line": ref.line,
        "reason": reason,
        "detail": detail,
        "raw": ref.raw,
    }


# ------------------------------------------------------------------------------------------ reading
class _NumberedLinesFn(beam.DoFn):
    """Streams one file's lines as (LineRef, raw bytes); headers and blank lines are filtered, counted.

    Reading a file in one DoFn (instead of ReadFromText) keeps line numbers for dead letters and reads
    bytes, so invalid UTF-8 becomes a dead letter rather than a crash. Parallelism is per file: give
    large inputs as many shards.
    """

    def __init__(self, source: str, header_of: Callable[[str], str | None]):
        self.source = source
        self.header_of = header_of
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, f"rows_read_{source}")

    def process(self, path):
        header = self.header_of(path)
        logger.info("reading %s (%s)", path, self.source)
        with FileSystems.open(path) as handle:
            for number, raw in enumerate(iter(handle.readline, b""), start=1):
                raw = raw.rstrip(b"\r\n")
                ref = LineRef(self.source, path, number, _snippet(raw))
                self.rows_read.inc()
                if number % PROGRESS_EVERY == 0:
                    logger.info("%s: %d lines read", path, number)
                if number == 1 and header is not None and raw.strip() == header.encode("utf-8"):
                    yield beam.pvalue.TaggedOutput(FILTERED, (ref, "header"))
                elif not raw.strip():
                    yield beam.pvalue.TaggedOutput(FILTERED, (ref, "blank_line"))
                else:
                    yield ref, raw


class ReadNumberedLines(beam.PTransform):
    """Files matching a pattern -> (LineRef, raw bytes) with a FILTERED output for headers/blank lines."""

    def __init__(self, pattern: str, source: str, header_of: Callable[[str], str | None]):
        super().__init__()
        self.pattern = pattern
        self.source = source
        self.header_of = header_of

    def expand(self, pbegin):
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Lines"
            >> beam.ParDo(_NumberedLinesFn(self.source, self.header_of)).with_outputs(FILTERED, main="rows")
        )


class RowStep(beam.DoFn):
    """Applies a row-level function to (LineRef, value); a RowError becomes a dead letter with its reason."""

    def __init__(self, fn: Callable[..., Any], name: str):
        self.fn = fn
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{name}")

    def process(self, element, *args, **kwargs):
        ref, value = element
        try:
            result = self.fn(value, *args, **kwargs)
        except ml.RowError as err:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, err.reason, err.detail))
        else:
            yield ref, result


def _row_step(fn: Callable[..., Any], name: str, *args, **kwargs) -> beam.ParDo:
    return beam.ParDo(RowStep(fn, name), *args, **kwargs).with_outputs(DEAD, main="rows")


def _keep_first_movie(element) -> Iterator[Any]:
    """Duplicate movie ids: the first line wins, later ones are dead letters."""
    _, rows = element
    (first_ref, movie), *duplicates = sorted(rows, key=lambda row: (row[0].path, row[0].line))
    yield first_ref, movie
    for ref, _ in duplicates:
        yield beam.pvalue.TaggedOutput(
            DEAD,
            dead_letter(
                ref, "duplicate_movie_id", f"movie id {movie.movie_id} appears earlier, line {first_ref.line}"
            ),
        )


class _Branch(NamedTuple):
    """What a source contributes: the rows read, its usable rows (LineRef, [records]) and its ledger outputs."""

    source: str
    read: Any
    used: Any
    dead: list
    filtered: Any


def _branch(source: str, lines, used, dead: list) -> _Branch:
    return _Branch(source, [lines.rows, lines[FILTERED]], used, dead, lines[FILTERED])


def _validate_records(records: list[dict], spec: FeatureSpec) -> list[dict]:
    """FeatureSpec validation of a row's samples (raw, label and meta features), completed with defaults."""
    try:
        return [spec.validate(r, roles=RECORD_ROLES) for r in records]
    except FeatureValidationError as err:
        raise ml.RowError(f"invalid_{err.field}", err.problem) from None


def read_movielens(
    p: beam.Pipeline,
    directory: str,
    spec: FeatureSpec,
    num_negatives: int,
    seed: int,
    search_impressions: str = ml.SEARCH_CONSTRUCTIONS[0],
) -> list[_Branch]:
    """The MovieLens sources as samples: ratings -> rec samples, tags -> search impressions.

    `search_impressions` picks the construction of the non-clicked search impressions
    (:data:`tfsr.datasets.movielens.SEARCH_CONSTRUCTIONS`): ``engine`` (what a search engine showed at the
    tag's time) or ``same_tag``. Its index is one small side input built from the movies, the tags and
    each movie's sorted rating timestamps (about 100k integers on MovieLens), never from the samples.
    """

    def header_of(source: str) -> Callable[[str], str]:
        return lambda _path: ml.HEADERS[source]

    lines = {
        s: p | f"Read_{s}" >> ReadNumberedLines(f"{directory}/{s}.csv", s, header_of(s)) for s in ml.HEADERS
    }

    parsed_movies = lines["movies"].rows | "ParseMovies" >> _row_step(ml.parse_movie, "movies")
    unique_movies = (
        parsed_movies.rows
        | "KeyMovies" >> beam.Map(lambda row: (row[1].movie_id, row))
        | "GroupMovieIds" >> beam.GroupByKey()
        | "DropDuplicateMovies" >> beam.FlatMap(_keep_first_movie).with_outputs(DEAD, main="rows")
    )
    movies = unique_movies.rows | "Movies" >> beam.Map(lambda row: (row[1].movie_id, row[1]))
    movie_table = beam.pvalue.AsDict(movies)

    ratings = lines["ratings"].rows | "ParseRatings" >> _row_step(ml.parse_rating, "ratings", movie_table)
    rating_samples = ratings.rows | "JoinItemMetadataAndAssignDomains" >> beam.Map(
        lambda row, table: (row[0], [ml.rating_record(row[1], table[row[1].movie_id])]), movie_table
    )

    tags = lines["tags"].rows | "ParseTags" >> _row_step(ml.parse_tag, "tags", movie_table)
    rating_times = (
        ratings.rows
        | "RatingTimes" >> beam.Map(lambda row: (row[1].movie_id, row[1].timestamp))
        | "GroupRatingTimesPerMovie" >> beam.GroupByKey()
        | "SortRatingTimes" >> beam.MapTuple(lambda movie_id, times: (movie_id, tuple(sorted(times))))
    )
    search_index = (
        p
        | "IndexSeed" >> beam.Create([None])
        | "BuildSearchIndex"
        >> beam.Map(
            lambda _, table, tag_rows, times: ml.build_search_index(
                search_impressions, table.values(), (t for _, t in tag_rows), times
            ),
            movie_table,
            beam.pvalue.AsIter(tags.rows),
            beam.pvalue.AsDict(rating_times),
        )
    )
    search_samples = tags.rows | "ConstructSearchImpressions" >> beam.Map(
        lambda row, table, index: (row[0], ml.search_records(row[1], table, index, num_negatives, seed)),
        movie_table,
        beam.pvalue.AsSingleton(search_index),
    )

    valid_ratings = rating_samples | "ValidateRatingSamples" >> _row_step(_validate_records, "ratings", spec)
    valid_search = search_samples | "ValidateSearchSamples" >> _row_step(_validate_records, "tags", spec)
    return [
        _branch("movies", lines["movies"], unique_movies.rows, [parsed_movies[DEAD], unique_movies[DEAD]]),
        _branch("ratings", lines["ratings"], valid_ratings.rows, [ratings[DEAD], valid_ratings[DEAD]]),
        _branch("tags", lines["tags"], valid_search.rows, [tags[DEAD], valid_search[DEAD]]),
    ]


def _log_header(path: str) -> str | None:
    return logfmt.CSV_HEADER if logfmt.log_format(path) == "csv" else None


def _parse_log(raw_and_path: tuple[bytes, str], spec: FeatureSpec) -> list[dict]:
    raw, path = raw_and_path
    return [logfmt.parse_log_line(raw, logfmt.log_format(path), spec)]


def read_logs(p: beam.Pipeline, pattern: str, spec: FeatureSpec) -> list[_Branch]:
    """Generic-format logs (JSONL / CSV, one impression per row) as samples."""
    lines = p | "ReadLogs" >> ReadNumberedLines(pattern, "logs", _log_header)
    parsed = (
        lines.rows
        | "AttachPath" >> beam.Map(lambda row: (row[0], (row[1], row[0].path)))
        | "ParseAndValidateLogs" >> _row_step(_parse_log, "logs", spec)
    )
    return [_branch("logs", lines, parsed.rows, [parsed[DEAD]])]


# ------------------------------------------------------------------------------------------- splits
def _per_user_split(element, eval_fraction: float) -> Iterator[tuple[str, dict]]:
    _, records = element
    records = list(records)
    cutoff = ml.user_eval_cutoff((r["timestamp"] for r in records), eval_fraction)
    for record in records:
        yield ml.split_of(record["timestamp"], cutoff, layout.PRETRAIN_EVAL, layout.PRETRAIN_TRAIN), record


def _quantile(quantiles: Sequence[int], fraction: float) -> int | None:
    """The `fraction` quantile from ApproximateQuantiles' evenly spaced list (None when there was no data)."""
    if not quantiles:
        return None
    return quantiles[round(fraction * (len(quantiles) - 1))]


class SplitWarm(beam.PTransform):
    """Pretraining splits: per-user chronological (default) or one global time cutoff."""

    def __init__(self, mode: str, eval_fraction: float):
        super().__init__()
        self.mode = mode
        self.eval_fraction = eval_fraction

    def expand(self, records):
        if self.mode == "per_user":
            return (
                records
                | "KeyByUser"
                >> beam.Map(lambda r: (r["user_id"], r)).with_output_types(typehints.Tuple[str, SampleRecord])
                | "GroupByUser" >> beam.GroupByKey()
                | "SplitEachUserByTime"
                >> beam.FlatMap(_per_user_split, self.eval_fraction).with_output_types(SplitRecord)
            )
        cutoff = (
            records
            | "WarmTimestamps" >> beam.Map(lambda r: r["timestamp"])
            | "WarmQuantiles" >> beam.ApproximateQuantiles.Globally(101)
            | "GlobalCutoff" >> beam.Map(_quantile, 1.0 - self.eval_fraction)
        )
        return records | "SplitByGlobalTime" >> beam.Map(
            lambda r, c: (ml.split_of(r["timestamp"], c, layout.PRETRAIN_EVAL, layout.PRETRAIN_TRAIN), r),
            beam.pvalue.AsSingleton(cutoff),
        ).with_output_types(SplitRecord)


def _cold_split(record: dict, eval_cutoff: int | None, window_start: int | None):
    timestamp = record["timestamp"]
    if eval_cutoff is not None and timestamp > eval_cutoff:
        yield layout.COLDSTART_EVAL, record
    elif window_start is not None and timestamp >= window_start:
        yield layout.COLDSTART_FINETUNE, record
    else:
        yield beam.pvalue.TaggedOutput(FILTERED, COLDSTART_FILTER_REASON)


class SplitCold(beam.PTransform):
    """Cold-start domains: the latest `eval_fraction` by time is evaluation; the `finetune_rows` rows just
    before it are the fine-tune slice (a new domain has little data); older rows are filtered, counted."""

    def __init__(self, eval_fraction: float, finetune_rows: int):
        super().__init__()
        self.eval_fraction = eval_fraction
        self.finetune_rows = finetune_rows

    def expand(self, records):
        timestamps = records | "ColdTimestamps" >> beam.Map(lambda r: r["timestamp"])
        cutoff = (
            timestamps
            | "ColdQuantiles" >> beam.ApproximateQuantiles.Globally(101)
            | "ColdEvalCutoff" >> beam.Map(_quantile, 1.0 - self.eval_fraction)
        )
        window_start = (
            timestamps
            | "BeforeCutoff"
            >> beam.Filter(lambda t, c: c is not None and t <= c, beam.pvalue.AsSingleton(cutoff))
            | "LatestBeforeCutoff" >> beam.combiners.Top.Largest(self.finetune_rows)
            | "FinetuneWindowStart" >> beam.Map(lambda top: min(top) if top else None)
        )
        return records | "SplitColdByTime" >> beam.FlatMap(
            _cold_split, beam.pvalue.AsSingleton(cutoff), beam.pvalue.AsSingleton(window_start)
        ).with_output_types(SplitRecord).with_outputs(FILTERED, main="rows")


def _mark_cold_items(element, max_train_count: int) -> Iterator[tuple[str, dict]]:
    _, grouped = element
    pretrain = sum(grouped["pretrain"])
    finetune = sum(grouped["finetune"])
    for split, record in grouped["eval"]:
        seen = pretrain + (finetune if split == layout.COLDSTART_EVAL else 0)
        yield split, {**record, "is_cold_item": ml.is_cold_item(seen, max_train_count)}


class MarkColdItems(beam.PTransform):
    """Sets is_cold_item on evaluation rows whose item has few training samples (a per-item join).

    Training samples seen by the model: pretrain_train for pretrain_eval; pretrain_train plus
    coldstart_finetune for coldstart_eval.
    """

    def __init__(self, max_train_count: int):
        super().__init__()
        self.max_train_count = max_train_count

    def expand(self, split_records):
        def item_counts(split: str, label: str):
            return (
                split_records
                | f"Items_{label}"
                >> beam.FlatMap(lambda sr: [(sr[1]["item_id"], 1)] if sr[0] == split else [])
                | f"Count_{label}" >> beam.CombinePerKey(sum)
            )

        eval_rows = split_records | "EvalRowsByItem" >> beam.FlatMap(
            lambda sr: [(sr[1]["item_id"], sr)] if sr[0] in EVAL_SPLITS else []
        ).with_output_types(typehints.Tuple[str, SplitRecord])
        train_rows = split_records | "TrainRows" >> beam.Filter(lambda sr: sr[0] not in EVAL_SPLITS)
        marked = (
            {
                "eval": eval_rows,
                "pretrain": item_counts(layout.PRETRAIN_TRAIN, "pretrain"),
                "finetune": item_counts(layout.COLDSTART_FINETUNE, "finetune"),
            }
            | "JoinTrainCounts" >> beam.CoGroupByKey()
            | "SetIsColdItem"
            >> beam.FlatMap(_mark_cold_items, self.max_train_count).with_output_types(SplitRecord)
        )
        return (train_rows, marked) | "AllSplitRows" >> beam.Flatten()


# ------------------------------------------------------------------------------------- vocabularies
def _vocab_values(record: dict) -> Iterator[tuple[str, str]]:
    for feature in VOCAB_FEATURES:
        value = record[feature]
        for item in value if isinstance(value, list) else [value]:
            if item:
                yield feature, item


class _WriteVocabFn(beam.DoFn):
    """Writes vocab/<feature>.txt, most frequent first (ties by value); emits the size for the manifest."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element):
        feature, entries = element
        ordered = sorted((e for e in entries if e is not None), key=lambda e: (-e[0], e[1]))
        path = str(layout.vocab_path(self.output_dir, feature))
        with FileSystems.create(path) as handle:
            handle.write("".join(f"{value}\n" for _, value in ordered).encode("utf-8"))
        logger.info("vocabulary %s: %d values", feature, len(ordered))
        yield ("vocab_size", feature), len(ordered)


class WriteVocabularies(beam.PTransform):
    """Vocabularies of the id and sparse features over pretrain_train samples, frequency-thresholded."""

    def __init__(self, output_dir: str, min_frequency: int):
        super().__init__()
        self.output_dir = output_dir
        self.min_frequency = min_frequency

    def expand(self, train_records):
        every_feature = train_records.pipeline | "VocabFeatures" >> beam.Create(
            [(f, None) for f in VOCAB_FEATURES]
        )
        counted = (
            train_records
            | "VocabValues" >> beam.FlatMap(_vocab_values)
            | "CountValues" >> beam.combiners.Count.PerElement()
            | "MinFrequency" >> beam.Filter(lambda fc, m: fc[1] >= m, self.min_frequency)
            | "ByFeature" >> beam.Map(lambda fc: (fc[0][0], (fc[1], fc[0][1])))
        )
        return (
            (counted, every_feature)
            | "WithEveryFeature" >> beam.Flatten()
            | "GroupVocab" >> beam.GroupByKey()
            | "WriteVocabFiles" >> beam.ParDo(_WriteVocabFn(self.output_dir))
        )


# ------------------------------------------------------------------------------------------ writing
class _GzipTFRecordSink(fileio.FileSink):
    """gzip TFRecord files for `fileio.WriteToFiles`, with the framing of Beam's WriteToTFRecord.

    WriteToFiles writes each bundle's samples as they arrive; WriteToTFRecord first needs a side
    input (or a shuffle, with fixed shards), so on the DirectRunner every serialized sample would be
    held in memory before writing. One shard per bundle; the runner decides how many.
    """

    def create_metadata(self, destination: str, full_file_name: str) -> fileio.FileMetadata:
        return fileio.FileMetadata(
            mime_type="application/octet-stream", compression_type=CompressionTypes.GZIP
        )

    def open(self, fh) -> None:
        self._fh = fh

    def write(self, record: bytes) -> None:
        _TFRecordUtil.write_record(self._fh, record)

    def flush(self) -> None:
        # Records go straight to the handle; flushing a gzip handle here would end its stream before
        # WriteToFiles closes it.
        return None


# ------------------------------------------------------------------------------------ text features
def _embedding_example(text: str, vector) -> bytes:
    from tfsr.text.cache import EMBEDDING_KEY, TEXT_KEY

    import tensorflow as tf

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                TEXT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])),
                EMBEDDING_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=vector.tolist())),
            }
        )
    ).SerializeToString()


def _float_feature(vector) -> bytes:
    """A vector as a serialized `tf.train.Feature` (float_list): what each sample carries for its text."""
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=vector)).SerializeToString()


class EmbedTexts(beam.PTransform):
    """Unique texts of each text feature -> RunInference (batched) -> text_embeddings/<feature>.tfrecord.gz,
    and per feature a small table PCollection[(text, serialized float Feature)] to join into samples."""

    def __init__(self, encoder_dir: str, output_dir: str, text_dim: int):
        super().__init__()
        self.encoder_dir = encoder_dir
        self.output_dir = output_dir
        self.text_dim = text_dim

    def expand(self, records):
        unique = (
            records
            | "TextValues" >> beam.FlatMap(lambda r: [(f, r[f]) for f in TEXT_FEATURES if r[f]])
            | "UniqueTexts" >> beam.Distinct()
        )
        embedded = (
            unique
            | "RunTextEncoder" >> RunInference(KeyedModelHandler(TextEncoderModelHandler(self.encoder_dir)))
            | "CheckWidth" >> beam.Map(self._checked)
        )
        out = {}
        for feature in TEXT_FEATURES:
            table = embedded | f"Select_{feature}" >> beam.FlatMap(
                lambda kv, f: [kv[1]] if kv[0] == f else [], feature
            )
            prefix = str(layout.text_embeddings_path(self.output_dir, feature)).removesuffix(
                layout.TFRECORD_SUFFIX
            )
            _ = (
                table
                | f"Serialize_{feature}" >> beam.MapTuple(_embedding_example)
                | f"Write_{feature}"
                >> beam.io.WriteToTFRecord(
                    prefix, file_name_suffix=layout.TFRECORD_SUFFIX, num_shards=1, shard_name_template=""
                )
            )
            out[feature] = table | f"AsFeature_{feature}" >> beam.MapTuple(
                lambda text, vector: (text, _float_feature(vector))
            )
        return out

    def _checked(self, keyed):
        feature, result = keyed
        if result.inference.shape != (self.text_dim,):
            raise ValueError(
                f"text encoder returned shape {result.inference.shape}, the FeatureSpec expects "
                f"({self.text_dim},): pass a FeatureSpec text_dim equal to the encoder's dim"
            )
        return feature, (result.example, result.inference)


class _ToExampleFn(beam.DoFn):
    """(split, record) -> (split, serialized tf.train.Example) with the text embeddings joined in.

    Raw, label and meta features go through ``spec.to_example`` (validated); the derived embedding
    features are appended from the unique-text table (their width was checked once per text).
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.zeros = _float_feature([0.0] * spec.text_dim)  # the embedding of an empty text

    def process(self, element, **tables):
        split, record = element
        example = self.spec.to_example(record, roles=RECORD_ROLES)
        for source, derived in TEXT_FEATURES.items():
            text = record[source]
            example.features.feature[derived].MergeFromString(tables[source][text] if text else self.zeros)
        yield split, example.SerializeToString()


# --------------------------------------------------------------------------------------- the ledger
def _sample_stats(split_record):
    split, record = split_record
    return (split, record["domain"]), (1, record["label"], record["is_cold_item"])


def _sum_columns(rows):
    return tuple(map(sum, zip(*rows, strict=True))) if rows else (0, 0, 0)


def _flatten_sample_stats(element):
    (split, domain), (samples, positives, cold_items) = element
    yield ("samples", split, domain), samples
    yield ("positives", split, domain), positives
    yield ("cold_items", split, domain), cold_items


def build_manifest(
    stats: dict, spec: FeatureSpec, encoder_identity: dict, command: str, options: dict
) -> dict:
    """The manifest of a samples directory from the pipeline's aggregated counters (pure; unit-tested)."""
    counts: dict = defaultdict(dict)
    rows: dict = defaultdict(lambda: {"read": 0, "used": 0, "dead_lettered": {}, "filtered": {}})
    samples = {"built": 0, "written": 0, "filtered": {}}
    vocab_sizes, texts = {}, {}
    for key, value in stats.items():
        kind, *rest = key
        if kind == "samples":
            split, domain = rest
            counts[split].setdefault(domain, {})["samples"] = value
            samples["written"] += value
        elif kind in ("positives", "cold_items"):
            split, domain = rest
            counts[split].setdefault(domain, {})[kind] = value
        elif kind in ("read", "used"):
            rows[rest[0]][kind] = value
        elif kind in ("dead_lettered", "filtered"):
            rows[rest[0]][kind][rest[1]] = value
        elif kind == "samples_built":
            samples["built"] = value
        elif kind == "samples_filtered":
            samples["filtered"][rest[0]] = value
        elif kind == "vocab_size":
            vocab_sizes[rest[0]] = value
        elif kind == "unique_texts":
            texts[rest[0]] = value
    for per_domain in counts.values():
        for entry in per_domain.values():
            entry["label_rate"] = (
                round(entry["positives"] / entry["samples"], 4) if entry["samples"] else None
            )
    for ledger in rows.values():
        ledger["balanced"] = ledger["read"] == (
            ledger["used"] + sum(ledger["dead_lettered"].values()) + sum(ledger["filtered"].values())
        )
    samples["balanced"] = samples["built"] == samples["written"] + sum(samples["filtered"].values())
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "options": options,
        "splits": list(layout.SPLITS),
        "domains": spec.domains.to_json(),
        "counts": {split: dict(sorted(counts[split].items())) for split in layout.SPLITS},
        "vocab_sizes": dict(sorted(vocab_sizes.items())),
        "text_embeddings": dict(sorted(texts.items())),
        "text_encoder": encoder_identity,
        "reconciliation": {
            "rows": dict(sorted(rows.items())),
            "samples": samples,
            "balanced": samples["balanced"] and all(ledger["balanced"] for ledger in rows.values()),
        },
        "feature_spec": spec.to_json(),
    }


def _write_manifest(
    stats: dict, output_dir: str, spec: FeatureSpec, identity: dict, command: str, options: dict
) -> None:
    manifest = build_manifest(stats, spec, identity, command, options)
    for name, text in (
        (layout.MANIFEST, json.dumps(manifest, indent=2, sort_keys=False)),
        (layout.FEATURE_SPEC, spec.dumps()),
    ):
        with FileSystems.create(f"{output_dir}/{name}") as handle:
            handle.write((text + "\n").encode("utf-8"))


def _write_empty_splits(stats: dict, output_dir: str) -> None:
    """An empty split still gets one empty shard, so readers see an empty dataset, not a missing one."""
    written = {key[1] for key, n in stats.items() if key[0] == "samples" and n}
    for split in layout.SPLITS:
        if split not in written:
            FileSystems.create(f"{output_dir}/{split}/part-00000-of-00001{layout.TFRECORD_SUFFIX}").close()


def _count(pcolls, label: str, key_fn: Callable[[Any], tuple[str, ...]]):
    """(ledger key, count) pairs of one or more PCollections.

    Counting happens before the ledger's Flatten so the combine is lifted into the producing stage: only
    per-key partial sums cross stage boundaries, never one element per row (the local runner buffers
    whatever crosses a boundary in memory).
    """
    pcolls = pcolls if isinstance(pcolls, list) else [pcolls]
    counts = [
        pc | f"{label}_Key{i}" >> beam.Map(key_fn) | f"{label}_{i}" >> beam.combiners.Count.PerElement()
        for i, pc in enumerate(pcolls)
    ]
    return counts | label >> beam.Flatten()


# ------------------------------------------------------------------------------------ the pipeline
def build_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    spec: FeatureSpec,
    encoder_dir: str,
    identity: dict,
    command: str,
) -> None:
    """Adds the whole build_samples graph to `p` (separate from run() so tests can drive it)."""
    out = args.output_dir.rstrip("/")
    if args.movielens_dir:
        branches = read_movielens(
            p, args.movielens_dir.rstrip("/"), spec, args.num_negatives, args.seed, args.search_impressions
        )
    else:
        branches = read_logs(p, args.logs, spec)

    ledger, dead_letters, samples = [], [], []
    for b in branches:
        if b.source != "movies":  # movies are reference data: used as item metadata, not samples
            samples.append(
                b.used
                | f"Samples_{b.source}" >> beam.FlatMap(lambda row: row[1]).with_output_types(SampleRecord)
            )
        dead = b.dead | f"Dead_{b.source}" >> beam.Flatten()
        dead_letters.append(dead)
        ledger += [
            _count(dead, f"CountDead_{b.source}", lambda d: ("dead_lettered", d["source"], d["reason"])),
            _count(b.filtered, f"CountFiltered_{b.source}", lambda f: ("filtered", f[0].source, f[1])),
            _count(b.used, f"CountUsed_{b.source}", lambda row, s=b.source: ("used", s)),
        ]
        ledger.append(_count(b.read, f"CountRead_{b.source}", lambda _, s=b.source: ("read", s)))

    records = samples | "AllSamples" >> beam.Flatten()
    ledger.append(_count(records, "CountSamplesBuilt", lambda _: ("samples_built",)))
    cold_names = {d.name for d in spec.domains.cold()}
    # two Filters rather than a Partition: Partition's outputs lose the SampleRecord type (and its coder)
    warm = records | "WarmDomains" >> beam.Filter(lambda r: r["domain"] not in cold_names)
    cold = records | "ColdStartDomains" >> beam.Filter(lambda r: r["domain"] in cold_names)
    warm_split = warm | "PretrainSplits" >> SplitWarm(args.split_mode, args.eval_fraction)
    cold_split = cold | "ColdStartSplits" >> SplitCold(
        args.coldstart_eval_fraction, args.coldstart_finetune_rows
    )
    ledger.append(
        _count(cold_split[FILTERED], "CountSamplesFiltered", lambda reason: ("samples_filtered", reason))
    )
    split_records = (
        (warm_split, cold_split.rows)
        | "AllSplits" >> beam.Flatten()
        | "ItemColdStart" >> MarkColdItems(args.cold_item_max_train)
    )

    vocab_sizes = (
        split_records
        | "PretrainTrainRows" >> beam.FlatMap(lambda sr: [sr[1]] if sr[0] == layout.PRETRAIN_TRAIN else [])
        | "Vocabularies" >> WriteVocabularies(out, args.min_frequency)
    )
    tables = records | "TextFeatures" >> EmbedTexts(encoder_dir, out, spec.text_dim)
    for feature, table in tables.items():
        ledger.append(_count(table, f"CountTexts_{feature}", lambda _, f=feature: ("unique_texts", f)))
    examples = split_records | "ToExamples" >> beam.ParDo(
        _ToExampleFn(spec), **{f: beam.pvalue.AsDict(t) for f, t in tables.items()}
    )
    by_split = examples | "BySplit" >> beam.Partition(
        lambda se, n: layout.SPLITS.index(se[0]), len(layout.SPLITS)
    )
    for split, pcoll in zip(layout.SPLITS, by_split, strict=True):
        _ = (
            pcoll
            | f"Payload_{split}" >> beam.Map(lambda se: se[1])
            | f"Write_{split}"
            >> fileio.WriteToFiles(
                f"{out}/{split}",
                file_naming=fileio.default_file_naming("part", layout.TFRECORD_SUFFIX),
                sink=lambda _destination: _GzipTFRecordSink(),
            )
        )
    _ = (
        dead_letters
        | "AllDeadLetters" >> beam.Flatten()
        | "DeadLetterJson" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False))
        | "WriteDeadLetters"
        >> beam.io.WriteToText(
            f"{out}/{layout.DEAD_LETTERS_DIR}/dead_letters", file_name_suffix=".jsonl", num_shards=1
        )
    )
    sample_stats = (
        split_records
        | "SampleStats" >> beam.Map(_sample_stats)
        | "SumSampleStats" >> beam.CombinePerKey(_sum_columns)
        | "SampleStatRows" >> beam.FlatMap(_flatten_sample_stats)
    )
    options = {k: v for k, v in vars(args).items() if k not in ("output_dir",)}
    stats = (
        (*ledger, sample_stats, vocab_sizes)
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(sum)
        | "StatsTable" >> beam.combiners.ToDict()
    )
    _ = stats | "WriteEmptySplits" >> beam.Map(_write_empty_splits, out)
    _ = stats | "WriteManifest" >> beam.Map(_write_manifest, out, spec, identity, command, options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfsr preprocess", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--movielens_dir", help="an ml-latest-small directory (movies.csv, ratings.csv, tags.csv)"
    )
    source.add_argument("--logs", help="glob of generic-format logs (*.jsonl / *.csv, optionally .gz)")
    parser.add_argument("--output_dir", required=True, help="the samples directory to write (tfsr.layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing samples directory")
    encoder = parser.add_mutually_exclusive_group()
    encoder.add_argument(
        "--text_encoder",
        choices=("minilm", "tiny"),
        default="minilm",
        help="build the frozen text encoder here (local runs)",
    )
    encoder.add_argument(
        "--text_encoder_dir",
        help="an exported encoder SavedModel (tfsr.text.export_text_encoder); "
        "needed on Dataflow, where workers must read it",
    )
    parser.add_argument("--domains", help="JSON file of the domain registry (default: the MovieLens domains)")
    parser.add_argument(
        "--split_mode",
        choices=("per_user", "global"),
        default="per_user",
        help="pretraining split: each user's latest rows (default) or one global time cutoff",
    )
    parser.add_argument(
        "--eval_fraction", type=float, default=0.2, help="share of rows (per user) in pretrain_eval"
    )
    parser.add_argument(
        "--coldstart_eval_fraction",
        type=float,
        default=0.3,
        help="latest share (by time) of each cold-start domain in coldstart_eval",
    )
    parser.add_argument(
        "--coldstart_finetune_rows",
        type=int,
        default=1000,
        help="size of the fine-tune slice just before the cold-start eval cutoff",
    )
    parser.add_argument(
        "--cold_item_max_train",
        type=int,
        default=2,
        help="eval rows whose item has at most this many training samples get is_cold_item=1",
    )
    parser.add_argument(
        "--num_negatives", type=int, default=4, help="constructed negatives per MovieLens tag"
    )
    parser.add_argument(
        "--search_impressions",
        choices=ml.SEARCH_CONSTRUCTIONS,
        default=ml.SEARCH_CONSTRUCTIONS[0],
        help="MovieLens search negatives: what a search engine showed at the tag's time (engine) or "
        "other movies tagged like the click (same_tag, the hardest); see docs/DATA.md",
    )
    parser.add_argument("--min_frequency", type=int, default=1, help="vocabulary frequency threshold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the constructed negatives")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not 0.0 < args.eval_fraction < 1.0 or not 0.0 < args.coldstart_eval_fraction < 1.0:
        raise UsageError("--eval_fraction and --coldstart_eval_fraction must be in (0, 1)")
    for name in ("coldstart_finetune_rows", "min_frequency"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.logs:
        paths = [m.path for r in FileSystems.match([args.logs]) for m in r.metadata_list]
        if not paths:
            raise UsageError(f"--logs {args.logs!r} matches no file")
        for path in paths:
            try:
                logfmt.log_format(path)
            except ValueError as err:
                raise UsageError(str(err)) from None
    out = args.output_dir.rstrip("/")
    # Stale shards of an earlier (possibly failed) run would be globbed with the new ones. Only a
    # directory that looks like samples is ever deleted.
    if any(FileSystems.exists(f"{out}/{name}") for name in (layout.MANIFEST, *layout.SPLITS)):
        if not args.overwrite:
            raise UsageError(f"{args.output_dir} already holds samples; pass --overwrite to replace them")
        FileSystems.delete([out])


def _prepare_encoder(args: argparse.Namespace, workdir: str) -> tuple[str, dict]:
    """(SavedModel dir, identity) of the text encoder the pipeline will run."""
    from tfsr import text

    if args.text_encoder_dir:
        try:
            identity = text.read_identity(args.text_encoder_dir)
        except FileNotFoundError:
            identity = {"saved_model": args.text_encoder_dir}
        return args.text_encoder_dir, identity
    encoder = text.load_text_encoder() if args.text_encoder == "minilm" else text.tiny_text_encoder()
    return text.export_text_encoder(encoder, f"{workdir}/text_encoder"), encoder.identity


def run(argv: list[str] | None = None, save_main_session: bool = True) -> int:
    """Runs build_samples; returns 0 when the manifest's reconciliation balances, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, pipeline_args = _parser().parse_known_args(argv)
    _check_args(args)
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        # The DirectRunner's local engine, named explicitly: Beam's DirectRunner first tries to download
        # and start the Prism runner binary, which must not happen on offline or locked-down machines.
        standard.runner = LOCAL_RUNNER
    domains = MOVIELENS_DOMAINS
    if args.domains:
        with FileSystems.open(args.domains) as handle:
            domains = DomainRegistry.from_json(json.load(handle))
    workdir = tempfile.mkdtemp(prefix="tfsr_preprocess_")
    try:
        encoder_dir, identity = _prepare_encoder(args, workdir)
        spec = FeatureSpec.default(domains, text_dim=saved_model_dim(encoder_dir))
        command = "tfsr preprocess " + shlex.join(argv)
        logger.info(
            "building samples into %s (text encoder %s, dim %d)",
            args.output_dir,
            identity.get("name", encoder_dir),
            spec.text_dim,
        )
        with beam.Pipeline(options=options) as p:
            build_pipeline(p, args, spec, encoder_dir, identity, command)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    manifest = layout.read_manifest(args.output_dir)
    _log_summary(manifest)
    return 0 if manifest["reconciliation"]["balanced"] else 1


def _log_summary(manifest: dict) -> None:
    for split, per_domain in manifest["counts"].items():
        total = sum(e["samples"] for e in per_domain.values())
        logger.info("%-20s %8d samples in %d domains", split, total, len(per_domain))
    rec = manifest["reconciliation"]
    for source, ledger in rec["rows"].items():
        logger.info(
            "%-8s read %d = used %d + dead-lettered %d + filtered %d %s",
            source,
            ledger["read"],
            ledger["used"],
            sum(ledger["dead_lettered"].values()),
            sum(ledger["filtered"].values()),
            "(balanced)" if ledger["balanced"] else "(DOES NOT BALANCE)",
        )
    if not rec["balanced"]:
        logger.error("reconciliation does not balance: %s", json.dumps(rec))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(run())
