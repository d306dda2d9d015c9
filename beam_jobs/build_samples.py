"""build_samples: raw search / recommendation logs -> multi-domain TFRecord samples (Apache Beam).

Inputs: the MovieLens ml-latest-small layout (``--movielens_dir``) or generic-format logs
(``--logs GLOB``, :mod:`tfsr.datasets.logs`; the synthetic generator writes that format). Output: the
samples directory of :mod:`tfsr.layout`. Steps, each a labelled transform:

  read (numbered lines) -> parse -> join item metadata -> assign domains / construct search
  impressions -> validate (FeatureSpec) -> splits by time (per-user or global exact quantiles: train /
  valid / eval; cold-start fine-tune / valid / eval) -> item-cold-start markers -> vocabularies ->
  text features (unique texts -> RunInference -> join back) -> gzip TFRecords shuffled across many
  shards by a seeded key + manifest.json (with the split cutoffs) + feature_spec.json

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
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from beam_jobs.reading import (
    DEAD,
    FILTERED,
    RAW_SNIPPET_CHARS,
    TRUNCATED_INPUT,
    LineRef,  # noqa: F401  (re-exported: bs.LineRef)
    dead_letter,
    numbered_lines,
)
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

METRICS_NAMESPACE = "tfsr_build_samples"
VOCAB_FEATURES = ("user_id", "item_id", "query_id", "item_genres", "item_decade")
TEXT_FEATURES = {"query_text": "query_text_embedding", "item_title": "item_title_embedding"}
HELD_OUT_SPLITS = (layout.PRETRAIN_VALID, layout.PRETRAIN_EVAL, layout.COLDSTART_VALID, layout.COLDSTART_EVAL)
COLDSTART_HELD_OUT = (layout.COLDSTART_VALID, layout.COLDSTART_EVAL)
COLDSTART_FILTER_REASON = "coldstart_before_finetune_window"
LOCAL_RUNNER = "FnApiRunner"
ROW_EXCEPTION = "row_exception"
# dead-letter reasons that mean rows were lost before they could be counted: the job fails (run() -> 1)
INPUT_ERROR_REASONS = frozenset({TRUNCATED_INPUT})


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
        logger.info("reading %s (%s)", path, self.source)
        yield from numbered_lines(path, self.source, self.header_of(path), self.rows_read)


class ReadNumberedLines(beam.PTransform):
    """Files matching a pattern -> (LineRef, raw bytes), with a FILTERED output for headers / blank lines
    and a DEAD output for files that end early (truncated compressed input)."""

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
            >> beam.ParDo(_NumberedLinesFn(self.source, self.header_of)).with_outputs(
                FILTERED, DEAD, main="rows"
            )
        )


class RowStep(beam.DoFn):
    """Applies a row-level function to (LineRef, value); a RowError becomes a dead letter with its reason.

    Any other exception of the function is a bug for that row, not for the job: it becomes a dead letter
    with reason ``row_exception`` (type and message in its detail, logged), so no line can crash the job.
    """

    def __init__(self, fn: Callable[..., Any], name: str):
        self.fn = fn
        self.name = name
        self.dead = Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{name}")

    def process(self, element, *args, **kwargs):
        ref, value = element
        try:
            result = self.fn(value, *args, **kwargs)
        except ml.RowError as err:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, err.reason, err.detail))
        except Exception as err:  # noqa: BLE001  (one row's unexpected error must not fail the job)
            self.dead.inc()
            detail = f"{type(err).__name__}: {str(err)[:RAW_SNIPPET_CHARS]}"
            logger.warning("%s: %s line %d: unexpected %s", self.name, ref.path, ref.line, detail)
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, ROW_EXCEPTION, detail))
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
    read = [lines.rows, lines[FILTERED], lines[DEAD]]
    return _Branch(source, read, used, [lines[DEAD], *dead], lines[FILTERED])


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
def sample_key(record: dict, seed: int) -> int:
    """A seeded 63-bit pseudo-random key of a sample that depends only on its content.

    The same rows get the same keys in any input order, so what is decided by key (the shard of a row,
    the order of rows in a shard, the tie-break between rows sharing a boundary timestamp) does not
    depend on log order. Identical rows share a key.
    """
    payload = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.blake2b(payload.encode("utf-8"), digest_size=8, key=str(seed).encode("ascii"))
    return int.from_bytes(digest.digest(), "little") >> 1  # 63 bits: Beam's VarIntCoder is signed


def _quantile(timestamp_counts: Iterable[tuple[int, int]], fraction: float) -> int | None:
    """The exact `fraction` quantile of the rows' timestamps from (timestamp, row count) pairs.

    The smallest timestamp t with at least ``max(1, ceil(fraction * N))`` of the N rows at or before
    it: the global counterpart of :func:`tfsr.datasets.movielens.user_eval_cutoff`, so rows with
    ``timestamp > _quantile(c, 1 - eval_fraction)`` are the latest ~eval_fraction. Computed from the
    sorted counts per distinct timestamp, it is the same for the same rows in any order (Beam's
    ApproximateQuantiles is not). None when there are no rows.
    """
    ordered = sorted(timestamp_counts)
    total = sum(count for _, count in ordered)
    if not total:
        return None
    rank = max(1, math.ceil(round(total * fraction, 9)))
    seen = 0
    for timestamp, count in ordered:
        seen += count
        if seen >= rank:
            return timestamp
    return ordered[-1][0]


def _warm_split_of(timestamp: int, eval_cutoff: int, valid_cutoff: int) -> str:
    """pretrain_eval after the eval cutoff, pretrain_valid in (valid cutoff, eval cutoff], else train."""
    train_or_valid = ml.split_of(timestamp, valid_cutoff, layout.PRETRAIN_VALID, layout.PRETRAIN_TRAIN)
    return ml.split_of(timestamp, eval_cutoff, layout.PRETRAIN_EVAL, train_or_valid)


def _per_user_split(element, eval_fraction: float, valid_fraction: float) -> Iterator[tuple[str, dict]]:
    _, records = element
    records = list(records)
    timestamps = [r["timestamp"] for r in records]
    eval_cutoff = ml.user_eval_cutoff(timestamps, eval_fraction)
    valid_cutoff = ml.user_eval_cutoff(timestamps, eval_fraction + valid_fraction)
    for record in records:
        yield _warm_split_of(record["timestamp"], eval_cutoff, valid_cutoff), record


class _CountTimestamps(beam.PTransform):
    """Records -> one list of (timestamp, row count) pairs: the input of the exact `_quantile`."""

    def expand(self, records):
        return (
            records
            | "Timestamps" >> beam.Map(lambda r: (r["timestamp"], 1))
            | "CountPerTimestamp" >> beam.CombinePerKey(sum)
            | "AllTimestampCounts" >> beam.combiners.ToList()
        )


def _cutoff_stats(cutoffs: dict, group: str) -> Iterator[tuple[tuple[str, ...], int]]:
    """Ledger rows ("cutoff", group, name) -> timestamp, for the manifest (boundary keys are dropped)."""
    for name, value in cutoffs.items():
        if value is not None:
            yield ("cutoff", group, name), value[0] if isinstance(value, tuple) else value


def _check_fraction(name: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:
        raise ValueError(f"{name} must be in [{low}, {high}), got {value}")


class SplitWarm(beam.PTransform):
    """Pretraining splits by time: train, then validation (the end of the training period), then eval.

    per_user (default): each user's latest `eval_fraction` of rows is pretrain_eval and the
    `valid_fraction` just before it pretrain_valid. global: one exact time quantile cutoff for eval
    (1 - eval_fraction) and one for validation (1 - eval_fraction - valid_fraction). Rows sharing a
    boundary timestamp stay in the earlier split. The result is the same for the same rows in any
    order. Returns {"rows": (split, record), "cutoffs": ledger rows of the global cutoffs}.
    """

    def __init__(self, mode: str, eval_fraction: float, valid_fraction: float = 0.0):
        super().__init__()
        _check_fraction("eval_fraction", eval_fraction, 0.0, 1.0)
        _check_fraction("valid_fraction", valid_fraction, 0.0, 1.0 - eval_fraction)
        self.mode = mode
        self.eval_fraction = eval_fraction
        self.valid_fraction = valid_fraction

    def expand(self, records):
        if self.mode == "per_user":
            rows = (
                records
                | "KeyByUser"
                >> beam.Map(lambda r: (r["user_id"], r)).with_output_types(typehints.Tuple[str, SampleRecord])
                | "GroupByUser" >> beam.GroupByKey()
                | "SplitEachUserByTime"
                >> beam.FlatMap(_per_user_split, self.eval_fraction, self.valid_fraction).with_output_types(
                    SplitRecord
                )
            )
            return {"rows": rows, "cutoffs": records.pipeline | "NoGlobalCutoffs" >> beam.Create([])}
        eval_at, valid_at = 1.0 - self.eval_fraction, 1.0 - self.eval_fraction - self.valid_fraction
        cutoffs = (
            records
            | "WarmTimestampCounts" >> _CountTimestamps()
            | "GlobalCutoffs"
            >> beam.Map(
                lambda c: {"eval_cutoff": _quantile(c, eval_at), "valid_cutoff": _quantile(c, valid_at)}
            )
        )
        rows = records | "SplitByGlobalTime" >> beam.Map(
            lambda r, c: (_warm_split_of(r["timestamp"], c["eval_cutoff"], c["valid_cutoff"]), r),
            beam.pvalue.AsSingleton(cutoffs),
        ).with_output_types(SplitRecord)
        return {
            "rows": rows,
            "cutoffs": cutoffs | "WarmCutoffStats" >> beam.FlatMap(_cutoff_stats, "pretrain"),
        }


def _cold_bounds(latest: list[tuple[int, int]], valid_rows: int, finetune_rows: int) -> dict:
    """First (timestamp, key) of the validation and of the fine-tune slice from the latest rows before the
    eval cutoff (largest first). With fewer rows than both slices want, they share them pro rata."""
    wanted = valid_rows + finetune_rows
    n_valid = valid_rows if len(latest) >= wanted else len(latest) * valid_rows // wanted
    valid, finetune = latest[:n_valid], latest[n_valid:wanted]
    return {"valid_start": valid[-1] if valid else None, "finetune_start": finetune[-1] if finetune else None}


def _cold_split(record: dict, seed: int, cutoff: dict, bounds: dict):
    timestamp = record["timestamp"]
    order = (timestamp, sample_key(record, seed))
    eval_cutoff, valid_start, finetune_start = (
        cutoff["eval_cutoff"],
        bounds["valid_start"],
        bounds["finetune_start"],
    )
    if eval_cutoff is not None and timestamp > eval_cutoff:
        yield layout.COLDSTART_EVAL, record
    elif valid_start is not None and order >= valid_start:
        yield layout.COLDSTART_VALID, record
    elif finetune_start is not None and order >= finetune_start:
        yield layout.COLDSTART_FINETUNE, record
    else:
        yield beam.pvalue.TaggedOutput(FILTERED, COLDSTART_FILTER_REASON)


class SplitCold(beam.PTransform):
    """Cold-start domains: the latest `eval_fraction` by time (exact quantile) is coldstart_eval; the
    `valid_rows` rows just before it coldstart_valid, the `finetune_rows` rows before those
    coldstart_finetune (a new domain has little data); older rows are filtered, counted.

    Rows are ordered by (timestamp, `sample_key`), so ties at a slice boundary are broken by content,
    never by input order. Returns {"rows", FILTERED, "cutoffs"}.
    """

    def __init__(self, eval_fraction: float, finetune_rows: int, valid_rows: int = 0, seed: int = 0):
        super().__init__()
        _check_fraction("eval_fraction", eval_fraction, 0.0, 1.0)
        if finetune_rows < 1 or valid_rows < 0:
            raise ValueError(
                f"need finetune_rows >= 1 and valid_rows >= 0, got {finetune_rows}, {valid_rows}"
            )
        self.eval_fraction = eval_fraction
        self.finetune_rows = finetune_rows
        self.valid_rows = valid_rows
        self.seed = seed

    def expand(self, records):
        eval_cutoff = (
            records
            | "ColdTimestampCounts" >> _CountTimestamps()
            | "ColdEvalCutoff"
            >> beam.Map(lambda c, f: {"eval_cutoff": _quantile(c, f)}, 1.0 - self.eval_fraction)
        )
        # keys first, then the filter: a side-input Filter straight on `records` would be fused with
        # SplitColdByTime, whose side input it feeds, and the FnApiRunner never runs the stage
        bounds = (
            records
            | "OrderKeys" >> beam.Map(lambda r, s: (r["timestamp"], sample_key(r, s)), self.seed)
            | "BeforeCutoff"
            >> beam.Filter(
                lambda order, c: c["eval_cutoff"] is not None and order[0] <= c["eval_cutoff"],
                beam.pvalue.AsSingleton(eval_cutoff),
            )
            | "LatestBeforeCutoff" >> beam.combiners.Top.Largest(self.valid_rows + self.finetune_rows)
            | "ValidAndFinetuneStart" >> beam.Map(_cold_bounds, self.valid_rows, self.finetune_rows)
        )
        split = records | "SplitColdByTime" >> beam.FlatMap(
            _cold_split, self.seed, beam.pvalue.AsSingleton(eval_cutoff), beam.pvalue.AsSingleton(bounds)
        ).with_output_types(SplitRecord).with_outputs(FILTERED, main="rows")
        cutoffs = (eval_cutoff, bounds) | "ColdCutoffs" >> beam.Flatten()
        return {
            "rows": split.rows,
            FILTERED: split[FILTERED],
            "cutoffs": cutoffs | "ColdCutoffStats" >> beam.FlatMap(_cutoff_stats, "coldstart"),
        }


def _mark_cold_items(element, max_train_count: int) -> Iterator[tuple[str, dict]]:
    _, grouped = element
    pretrain = sum(grouped["pretrain"])
    finetune = sum(grouped["finetune"])
    for split, record in grouped["held_out"]:
        seen = pretrain + (finetune if split in COLDSTART_HELD_OUT else 0)
        yield split, {**record, "is_cold_item": ml.is_cold_item(seen, max_train_count)}


class MarkColdItems(beam.PTransform):
    """Sets is_cold_item on validation and evaluation rows whose item has few training samples (a
    per-item join).

    Training samples seen by the model: pretrain_train for pretrain_valid / pretrain_eval;
    pretrain_train plus coldstart_finetune for coldstart_valid / coldstart_eval.
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

        held_out = split_records | "HeldOutRowsByItem" >> beam.FlatMap(
            lambda sr: [(sr[1]["item_id"], sr)] if sr[0] in HELD_OUT_SPLITS else []
        ).with_output_types(typehints.Tuple[str, SplitRecord])
        train_rows = split_records | "TrainRows" >> beam.Filter(lambda sr: sr[0] not in HELD_OUT_SPLITS)
        marked = (
            {
                "held_out": held_out,
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
ROWS_PER_SHARD = 25_000
MIN_SHARDS = 8
MIN_ROWS_PER_SHARD = 1_000
MAX_SHARDS = 1_024


def num_shards(rows: int) -> int:
    """Shards of a split of `rows` rows: about ROWS_PER_SHARD rows each, at least MIN_SHARDS when there
    are MIN_ROWS_PER_SHARD rows for each, at most MAX_SHARDS (beyond that the shards grow)."""
    wanted = max(math.ceil(rows / ROWS_PER_SHARD), min(MIN_SHARDS, math.ceil(rows / MIN_ROWS_PER_SHARD)))
    return max(1, min(MAX_SHARDS, wanted))


def shard_of(key: int, shards: int) -> int:
    """The shard of a 63-bit sample key: contiguous key ranges, so the shards in turn hold the rows in
    key order."""
    return (key * shards) >> 63


def shard_path(output_dir: str, split: str, shard: int, shards: int) -> str:
    return f"{output_dir}/{split}/part-{shard:05d}-of-{shards:05d}{layout.TFRECORD_SUFFIX}"


def _shard_keyed(split_record, seed: int, shards: dict):
    split, record = split_record
    key = sample_key(record, seed)
    return (split, shard_of(key, shards[split])), (key, record)


class _WriteShardFn(beam.DoFn):
    """((split, shard), [(key, record)]) -> one gzip TFRecord file of tf.train.Examples in key order.

    Raw, label and meta features go through ``spec.to_example`` (validated); the derived embedding
    features are appended from the unique-text tables (their width was checked once per text). One
    shard (about ROWS_PER_SHARD rows) is held while it is written. The file name is fixed by (split,
    shard) and its bytes by its rows, so a retried bundle rewrites the same file. Emits the ledger row
    ("shards", split) -> 1.
    """

    def __init__(self, spec: FeatureSpec, output_dir: str):
        self.spec = spec
        self.output_dir = output_dir
        self.zeros = _float_feature([0.0] * spec.text_dim)  # the embedding of an empty text

    def _example(self, record: dict, tables: dict) -> bytes:
        example = self.spec.to_example(record, roles=RECORD_ROLES)
        for source, derived in TEXT_FEATURES.items():
            text = record[source]
            example.features.feature[derived].MergeFromString(tables[source][text] if text else self.zeros)
        return example.SerializeToString()

    def process(self, element, shards: dict, **tables):
        (split, shard), keyed = element
        path = shard_path(self.output_dir, split, shard, shards[split])
        with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as handle:
            for _, record in sorted(keyed, key=lambda key_record: key_record[0]):
                _TFRecordUtil.write_record(handle, self._example(record, tables))
        yield ("shards", split), 1


class WriteShuffledSplits(beam.PTransform):
    """(split, record) -> <output_dir>/<split>/part-SSSSS-of-NNNNN.tfrecord.gz, shuffled across shards.

    Every row gets a seeded key (`sample_key`, its content only); a split of n rows gets
    `num_shards(n)` shards, each a contiguous key range written in key order. So every shard, and any
    interleaving of shards, mixes domains and users however the logs were ordered (domain-sorted logs
    would otherwise train the domains one after another), and the same rows give the same files.
    Returns the ledger rows ("shards", split) -> 1 per file written.
    """

    def __init__(self, spec: FeatureSpec, output_dir: str, seed: int, tables: dict):
        super().__init__()
        self.spec = spec
        self.output_dir = output_dir
        self.seed = seed
        self.tables = tables

    def expand(self, split_records):
        shards = beam.pvalue.AsDict(
            split_records
            | "RowsPerSplit" >> beam.combiners.Count.PerKey()
            | "ShardsPerSplit" >> beam.MapTuple(lambda split, rows: (split, num_shards(rows)))
        )
        return (
            split_records
            | "ShardKeys"
            >> beam.Map(_shard_keyed, self.seed, shards).with_output_types(
                typehints.Tuple[typehints.Tuple[str, int], typehints.Tuple[int, SampleRecord]]
            )
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards"
            >> beam.ParDo(
                _WriteShardFn(self.spec, self.output_dir),
                shards,
                **{f: beam.pvalue.AsDict(t) for f, t in self.tables.items()},
            )
        )


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
    vocab_sizes, texts, cutoffs = {}, {}, defaultdict(dict)
    shards = dict.fromkeys(layout.SPLITS, 0)
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
        elif kind == "cutoff":
            cutoffs[rest[0]][rest[1]] = value
        elif kind == "shards":
            shards[rest[0]] = value
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
        "split_cutoffs": _split_cutoffs(cutoffs, options),
        "shards": shards,
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


def _split_cutoffs(cutoffs: dict, options: dict) -> dict:
    """What decided each split: the options and the cutoff timestamps the pipeline computed.

    pretrain: per_user mode has one cutoff per user (the options say how); global mode records the
    eval cutoff (rows after it: pretrain_eval) and the valid cutoff (rows after it, up to the eval
    cutoff: pretrain_valid). coldstart: rows after eval_cutoff are coldstart_eval; valid_start and
    finetune_start are the first timestamps of coldstart_valid and coldstart_finetune (ties at those
    timestamps are split by sample key). None: no rows to cut.
    """
    pretrain = {
        "mode": options.get("split_mode"),
        "eval_fraction": options.get("eval_fraction"),
        "valid_fraction": options.get("valid_fraction"),
    }
    if options.get("split_mode") == "global":
        pretrain |= {name: cutoffs["pretrain"].get(name) for name in ("eval_cutoff", "valid_cutoff")}
    coldstart = {
        "eval_fraction": options.get("coldstart_eval_fraction"),
        "valid_rows": options.get("coldstart_valid_rows"),
        "finetune_rows": options.get("coldstart_finetune_rows"),
    } | {name: cutoffs["coldstart"].get(name) for name in ("eval_cutoff", "valid_start", "finetune_start")}
    return {"pretrain": pretrain, "coldstart": coldstart, "shuffle_seed": options.get("shuffle_seed")}


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
            FileSystems.create(shard_path(output_dir, split, 0, 1)).close()


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
    warm_split = warm | "PretrainSplits" >> SplitWarm(
        args.split_mode, args.eval_fraction, args.valid_fraction
    )
    cold_split = cold | "ColdStartSplits" >> SplitCold(
        args.coldstart_eval_fraction,
        args.coldstart_finetune_rows,
        args.coldstart_valid_rows,
        args.shuffle_seed,
    )
    ledger += [
        _count(cold_split[FILTERED], "CountSamplesFiltered", lambda reason: ("samples_filtered", reason)),
        warm_split["cutoffs"],
        cold_split["cutoffs"],
    ]
    split_records = (
        (warm_split["rows"], cold_split["rows"])
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
    # the shard files join the ledger, so the manifest (and any empty-split file) comes after them
    ledger.append(split_records | "WriteSplits" >> WriteShuffledSplits(spec, out, args.shuffle_seed, tables))
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
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--movielens_dir",
        help="an ml-latest-small directory (movies.csv, ratings.csv, tags.csv); with neither this nor --logs, "
        "MovieLens from $TFSR_DATA_HOME / the cache, else the checked download (tfsr.datasets.locate)",
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
        help="size of the fine-tune slice just before the cold-start validation slice",
    )
    parser.add_argument(
        "--valid_fraction",
        type=float,
        default=0.1,
        help="share of rows (per user, or of time with --split_mode global) just before pretrain_eval "
        "in pretrain_valid (eval_fraction + valid_fraction < 1)",
    )
    parser.add_argument(
        "--coldstart_valid_rows",
        type=int,
        default=200,
        help="size of coldstart_valid: the latest cold-start rows before the cold-start eval cutoff",
    )
    parser.add_argument(
        "--shuffle_seed",
        type=int,
        default=0,
        help="seed of the sample keys that spread each split's rows over shards in random order",
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
    if not args.logs and not args.movielens_dir:
        from tfsr.datasets.locate import find_movielens

        args.movielens_dir = str(find_movielens(None))
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
    # Written next to the output and moved into place only when the job succeeds: a crash or a failed
    # reconciliation never leaves a half-written samples directory where readers look for one.
    staging = f"{args.output_dir.rstrip('/')}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        encoder_dir, identity = _prepare_encoder(args, workdir)
        spec = FeatureSpec.default(domains, text_dim=saved_model_dim(encoder_dir))
        command = "tfsr preprocess " + shlex.join(argv)
        logger.info(
            "building samples into %s via %s (text encoder %s, dim %d)",
            args.output_dir,
            staging,
            identity.get("name", encoder_dir),
            spec.text_dim,
        )
        with beam.Pipeline(options=options) as p:
            build_pipeline(
                p,
                argparse.Namespace(**{**vars(args), "output_dir": staging}),
                spec,
                encoder_dir,
                identity,
                command,
            )
    except BaseException:
        if FileSystems.exists(staging):
            FileSystems.delete([staging])
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    manifest = layout.read_manifest(staging)
    _log_summary(manifest)
    failure = _failure(manifest)
    if failure:
        logger.error(
            "%s: %s is NOT written; the incomplete output is kept at %s", failure, args.output_dir, staging
        )
        return 1
    _move_into_place(staging, args.output_dir.rstrip("/"))
    return 0


def _failure(manifest: dict) -> str | None:
    """Why a finished job failed (its ledger does not balance, or input was lost), or None."""
    rec = manifest["reconciliation"]
    if not rec["balanced"]:
        return "the reconciliation does not balance"
    lost = {
        reason: n
        for ledger in rec["rows"].values()
        for reason, n in ledger["dead_lettered"].items()
        if reason in INPUT_ERROR_REASONS
    }
    return f"input files could not be read to their end {lost} (see the dead letters)" if lost else None


def _move_into_place(staging: str, out: str) -> None:
    """Moves the finished output from `staging` to `out` (renames; into `out` when it is a directory)."""
    if FileSystems.get_scheme(out) in (None, "file"):  # local: rename the directory
        if not os.path.isdir(out):
            os.rename(staging, out)
            return
        for name in os.listdir(staging):  # _check_args has refused (or deleted) earlier samples
            os.rename(os.path.join(staging, name), os.path.join(out, name))
        os.rmdir(staging)
        return
    sources = [m.path for r in FileSystems.match([f"{staging}/**"]) for m in r.metadata_list]
    FileSystems.rename(sources, [out + path[len(staging) :] for path in sources])
    FileSystems.delete([staging])


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
