"""The inputs of ``build_samples``: MovieLens files or generic logs read as samples, with their ledger.

Each source is a :class:`Branch`: the lines read, its usable rows as (LineRef, [sample records]), its dead
letters and its filtered lines, so the manifest can reconcile rows read = used + dead-lettered + filtered
per source. The row rules are those of :mod:`tfsr.datasets` (MovieLens mapping, search impressions,
generic log format); this module applies them to PCollections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from beam_jobs.core import row_step
from beam_jobs.reading import DEAD, FILTERED, dead_letter, numbered_lines
from tfsr.datasets import logs as logfmt
from tfsr.datasets import movielens as ml
from tfsr.datasets import search_impressions as si
from tfsr.features import RECORD_ROLES, FeatureSpec

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "tfsr_build_samples"


def _step(fn: Callable[..., Any], name: str, *args) -> beam.ParDo:
    return row_step(fn, name, *args, namespace=METRICS_NAMESPACE)


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


class Branch(NamedTuple):
    """What a source contributes: the rows read, its usable rows (LineRef, [records]) and its ledger outputs."""

    source: str
    read: Any
    used: Any
    dead: list
    filtered: Any


def branch(source: str, lines, used, dead: list) -> Branch:
    read = [lines.rows, lines[FILTERED], lines[DEAD]]
    return Branch(source, read, used, [lines[DEAD], *dead], lines[FILTERED])


def _validate_records(records: list[dict], spec: FeatureSpec) -> list[dict]:
    """FeatureSpec validation of a row's samples (raw, label and meta features), completed with defaults."""
    return [spec.validate(r, roles=RECORD_ROLES) for r in records]


def read_movielens(
    p: beam.Pipeline,
    directory: str,
    spec: FeatureSpec,
    num_negatives: int,
    seed: int,
    search_impressions: str = si.SEARCH_CONSTRUCTIONS[0],
) -> list[Branch]:
    """The MovieLens sources as samples: ratings -> rec samples, tags -> search impressions.

    `search_impressions` picks the construction of the non-clicked search impressions
    (:data:`tfsr.datasets.search_impressions.SEARCH_CONSTRUCTIONS`): ``engine`` (what a search engine showed at the
    tag's time) or ``same_tag``. Its index is one small side input built from the movies, the tags and
    each movie's sorted rating timestamps (about 100k integers on MovieLens), never from the samples.
    """

    def header_of(source: str) -> Callable[[str], str]:
        return lambda _path: ml.HEADERS[source]

    lines = {
        s: p | f"Read_{s}" >> ReadNumberedLines(f"{directory}/{s}.csv", s, header_of(s)) for s in ml.HEADERS
    }

    parsed_movies = lines["movies"].rows | "ParseMovies" >> _step(ml.parse_movie, "movies")
    unique_movies = (
        parsed_movies.rows
        | "KeyMovies" >> beam.Map(lambda row: (row[1].movie_id, row))
        | "GroupMovieIds" >> beam.GroupByKey()
        | "DropDuplicateMovies" >> beam.FlatMap(_keep_first_movie).with_outputs(DEAD, main="rows")
    )
    movies = unique_movies.rows | "Movies" >> beam.Map(lambda row: (row[1].movie_id, row[1]))
    movie_table = beam.pvalue.AsDict(movies)

    ratings = lines["ratings"].rows | "ParseRatings" >> _step(ml.parse_rating, "ratings", movie_table)
    rating_samples = ratings.rows | "JoinItemMetadataAndAssignDomains" >> beam.Map(
        lambda row, table: (row[0], [ml.rating_record(row[1], table[row[1].movie_id])]), movie_table
    )

    tags = lines["tags"].rows | "ParseTags" >> _step(ml.parse_tag, "tags", movie_table)
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
            lambda _, table, tag_rows, times: si.build_search_index(
                search_impressions, table.values(), (t for _, t in tag_rows), times
            ),
            movie_table,
            beam.pvalue.AsIter(tags.rows),
            beam.pvalue.AsDict(rating_times),
        )
    )
    search_samples = tags.rows | "ConstructSearchImpressions" >> beam.Map(
        lambda row, table, index: (row[0], si.search_records(row[1], table, index, num_negatives, seed)),
        movie_table,
        beam.pvalue.AsSingleton(search_index),
    )

    valid_ratings = rating_samples | "ValidateRatingSamples" >> _step(_validate_records, "ratings", spec)
    valid_search = search_samples | "ValidateSearchSamples" >> _step(_validate_records, "tags", spec)
    return [
        branch("movies", lines["movies"], unique_movies.rows, [parsed_movies[DEAD], unique_movies[DEAD]]),
        branch("ratings", lines["ratings"], valid_ratings.rows, [ratings[DEAD], valid_ratings[DEAD]]),
        branch("tags", lines["tags"], valid_search.rows, [tags[DEAD], valid_search[DEAD]]),
    ]


def _log_header(path: str) -> str | None:
    return logfmt.CSV_HEADER if logfmt.log_format(path) == "csv" else None


def _parse_log(raw_and_path: tuple[bytes, str], spec: FeatureSpec) -> list[dict]:
    raw, path = raw_and_path
    return [logfmt.parse_log_line(raw, logfmt.log_format(path), spec)]


def read_logs(p: beam.Pipeline, pattern: str, spec: FeatureSpec) -> list[Branch]:
    """Generic-format logs (JSONL / CSV, one impression per row) as samples."""
    lines = p | "ReadLogs" >> ReadNumberedLines(pattern, "logs", _log_header)
    parsed = (
        lines.rows
        | "AttachPath" >> beam.Map(lambda row: (row[0], (row[1], row[0].path)))
        | "ParseAndValidateLogs" >> _step(_parse_log, "logs", spec)
    )
    return [branch("logs", lines, parsed.rows, [parsed[DEAD]])]
