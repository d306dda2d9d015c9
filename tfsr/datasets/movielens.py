"""MovieLens (ml-latest-small layout) reader and its mapping to unified search + recommendation samples.

The mapping (the data card is ``docs/DATA.md``):

* **search** domain ``search_tags``: each tag application is a search; the tag as typed is the query,
  the tagged movie the clicked item (label 1). Non-clicked impressions are *constructed*: by default
  the results a search engine would have shown for the query at the tag's time, built only from what
  was known before it; optionally other movies that match the query as well as the click
  (:mod:`tfsr.datasets.search_impressions`). Never the clicked movie.
* **recommendation** domains from ratings, by the movie's primary genre (:func:`rec_domain`), label
  ``rating >= 4`` (:func:`label_from_rating`).
* **cold start**: movies with Animation or Children among their genres form ``rec_children``, held out
  of pretraining (``cold_start=True`` in :data:`MOVIELENS_DOMAINS`, the registry MovieLens specs use).
* **splits** by time: the policy of every source, :mod:`tfsr.datasets.splits`.

Every function here is pure and row-level so that the in-memory reader (:func:`read_movielens`) and
the Beam job (``beam_jobs/build_samples.py``) share exactly the same rules. A row that cannot be used
raises :class:`tfsr.contract.RowError` with a short machine-readable ``reason`` and a human ``detail``; callers count
it (dead letters), they never drop it silently. Line decoding and CSV splitting are the generic row
primitives of :mod:`tfsr.datasets.rows`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import os
import pathlib
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence

from tfsr.contract import RowError
from tfsr.datasets.rows import (
    MAX_TEXT_CHARS,
    decode_line,
    iter_lines,
    normalize_query,
    split_csv_line,
)
from tfsr.features import Domain, DomainRegistry

logger = logging.getLogger(__name__)

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
# GroupLens publishes an MD5 beside each archive; we fetch and check it at download time.
MOVIELENS_MD5_URL = MOVIELENS_URL + ".md5"
# SHA-256 of the extracted CSVs of the release we test against (ml-latest-small, generated
# 2018-09-26; 100,836 ratings). Checked after extraction, so a different release is noticed.
MOVIELENS_FILE_SHA256 = {
    "movies.csv": "c47b783f23eb304413307e1bb05335e427737da20ec8d3c0e96335567dd5f3dc",
    "ratings.csv": "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
    "tags.csv": "68eec00a0820c2faa8863a6df7032f13d5899a4462bce9a97213905297ff3d34",
    "links.csv": "028a4a1d17751ca9276e0e0718cfc22356350f224a996e1ec348c23274b9209d",
}
REQUIRED_FILES = ("movies.csv", "ratings.csv", "tags.csv")

# Source name -> header line. The Beam job reads the same names.
HEADERS = {
    "movies": "movieId,title,genres",
    "ratings": "userId,movieId,rating,timestamp",
    "tags": "userId,movieId,tag,timestamp",
}

RATING_MIN, RATING_MAX = 0.5, 5.0
POSITIVE_RATING = 4.0
NO_GENRES = "(no genres listed)"
COLD_START_GENRES = frozenset({"Animation", "Children"})
# Primary genre -> rec domain, first match wins (MovieLens lists genres alphabetically, so "first
# listed" would always favour Action; an explicit priority says what we mean).
GENRE_DOMAINS = (("Action", "rec_action"), ("Comedy", "rec_comedy"), ("Drama", "rec_drama"))
OTHER_DOMAIN = "rec_other"
COLD_DOMAIN = "rec_children"
SEARCH_DOMAIN = "search_tags"
_YEAR_RE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?\s*)?\)\s*$")

# The MovieLens domains: the registry a MovieLens FeatureSpec is built with (FeatureSpec.default(MOVIELENS_DOMAINS)).
MOVIELENS_DOMAINS = DomainRegistry(
    [
        Domain("search_tags", "search", 0),
        Domain("rec_action", "rec", 1),
        Domain("rec_comedy", "rec", 2),
        Domain("rec_drama", "rec", 3),
        Domain("rec_other", "rec", 4),
        Domain("rec_children", "rec", 5, cold_start=True),
    ]
)

_UNREGISTERED = {SEARCH_DOMAIN, OTHER_DOMAIN, COLD_DOMAIN, *(d for _, d in GENRE_DOMAINS)} - set(
    MOVIELENS_DOMAINS.names
)
if _UNREGISTERED:  # the registry is the source of truth for domain names
    raise ImportError(
        f"MovieLens mapping uses domains missing from MOVIELENS_DOMAINS: {sorted(_UNREGISTERED)}"
    )


@dataclasses.dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    genres: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rating:
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


@dataclasses.dataclass(frozen=True)
class Tag:
    user_id: int
    movie_id: int
    tag: str
    timestamp: int


# --------------------------------------------------------------------------------------------- rows
def is_header(source: str, raw: bytes | str) -> bool:
    """True when `raw` is the header line of a MovieLens file."""
    try:
        return decode_line(raw).strip() == HEADERS[source]
    except RowError:
        return False


def _int(field: str, name: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise RowError(f"non_numeric_{name}", f"{name} {field[:40]!r} is not an integer") from None


def _text(field: str, name: str) -> str:
    text = field.strip()
    if not text:
        raise RowError(f"empty_{name}", f"{name} is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise RowError(f"{name}_too_long", f"{name} has {len(text)} characters (max {MAX_TEXT_CHARS})")
    return text


def _movie_ref(field: str, movies: Mapping[int, Movie]) -> int:
    movie_id = _int(field, "movie_id")
    if movie_id not in movies:
        raise RowError("unknown_movie_id", f"movie id {movie_id} is not in movies.csv")
    return movie_id


def parse_movie(raw: bytes | str) -> Movie:
    """A movies.csv line (``movieId,title,genres``) as a :class:`Movie`."""
    movie_id, title, genres = split_csv_line(raw, 3)
    genre_list = tuple(g for g in genres.strip().split("|") if g and g != NO_GENRES)
    return Movie(_int(movie_id, "movie_id"), _text(title, "title"), genre_list)


def parse_rating(raw: bytes | str, movies: Mapping[int, Movie]) -> Rating:
    """A ratings.csv line (``userId,movieId,rating,timestamp``) as a :class:`Rating`."""
    user_id, movie_id, rating, timestamp = split_csv_line(raw, 4)
    try:
        value = float(rating)
    except ValueError:
        raise RowError("non_numeric_rating", f"rating {rating[:40]!r} is not a number") from None
    if not (math.isfinite(value) and RATING_MIN <= value <= RATING_MAX):
        raise RowError("rating_out_of_range", f"rating {value} is outside [{RATING_MIN}, {RATING_MAX}]")
    return Rating(_int(user_id, "user_id"), _movie_ref(movie_id, movies), value, _int(timestamp, "timestamp"))


def parse_tag(raw: bytes | str, movies: Mapping[int, Movie]) -> Tag:
    """A tags.csv line (``userId,movieId,tag,timestamp``) as a :class:`Tag`."""
    user_id, movie_id, tag, timestamp = split_csv_line(raw, 4)
    text = _text(tag, "tag")
    if not normalize_query(text):
        raise RowError("empty_tag", f"tag {text!r} is empty after normalisation")
    return Tag(_int(user_id, "user_id"), _movie_ref(movie_id, movies), text, _int(timestamp, "timestamp"))


# ------------------------------------------------------------------------------------ mapping rules
def rec_domain(genres: Sequence[str]) -> str:
    """The recommendation domain of a movie: cold-start children/animation first, else primary genre."""
    if COLD_START_GENRES.intersection(genres):
        return COLD_DOMAIN
    for genre, domain in GENRE_DOMAINS:
        if genre in genres:
            return domain
    return OTHER_DOMAIN


def label_from_rating(rating: float) -> int:
    """Explicit rating -> click label: 1 when ``rating >= 4``."""
    return int(rating >= POSITIVE_RATING)


def decade_of(title: str) -> str:
    """Release decade from a title's trailing ``(YYYY)`` (or ``(YYYY-YYYY)``), e.g. ``'1990s'``; '' if none."""
    match = _YEAR_RE.search(title)
    return f"{int(match.group(1)) // 10 * 10}s" if match else ""


def item_features(movie: Movie) -> dict:
    """The item features of a movie, named as in the FeatureSpec."""
    return {
        "item_id": str(movie.movie_id),
        "item_title": movie.title,
        "item_genres": list(movie.genres),
        "item_decade": decade_of(movie.title),
    }


def rating_record(rating: Rating, movie: Movie) -> dict:
    """A rating as one recommendation sample (raw, label and meta features)."""
    return {
        "domain": rec_domain(movie.genres),
        "user_id": str(rating.user_id),
        **item_features(movie),
        "label": label_from_rating(rating.rating),
        "timestamp": rating.timestamp,
    }


def release_year(title: str) -> int | None:
    """The release year from a title's trailing ``(YYYY)``; None when the title has none."""
    match = _YEAR_RE.search(title)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------- file reading
@dataclasses.dataclass
class Rejection:
    """A counted rejection of one input row (what the Beam job writes as a dead letter)."""

    source: str
    line: int
    reason: str
    detail: str


@dataclasses.dataclass
class MovieLensData:
    """Parsed ml-latest-small: the usable rows and the counted rejections."""

    movies: dict[int, Movie]
    ratings: list[Rating]
    tags: list[Tag]
    rejections: list[Rejection]


def read_movielens(directory: str | os.PathLike | None = None) -> MovieLensData:
    """Reads an ml-latest-small directory into memory, rejecting bad rows with counted reasons.

    Args:
      directory: folder with movies.csv, ratings.csv and tags.csv; default: the download cache
        (:func:`ensure_movielens`).
    """
    folder = ensure_movielens(directory)
    rejections: list[Rejection] = []

    def rows(source: str, parse):
        for number, raw in iter_lines(folder / f"{source}.csv"):
            if number == 1 and is_header(source, raw):
                continue
            try:
                yield parse(raw)
            except RowError as err:
                rejections.append(Rejection(source, number, err.reason, err.detail))

    movies: dict[int, Movie] = {}

    def parse_new_movie(raw: bytes) -> Movie:
        movie = parse_movie(raw)
        if movie.movie_id in movies:
            raise RowError("duplicate_movie_id", f"movie id {movie.movie_id} appears earlier in movies.csv")
        return movie

    for movie in rows("movies", parse_new_movie):
        movies[movie.movie_id] = movie
    ratings = list(rows("ratings", lambda raw: parse_rating(raw, movies)))
    tags = list(rows("tags", lambda raw: parse_tag(raw, movies)))
    if rejections:
        logger.warning("%s: rejected %d rows (first: %s)", folder, len(rejections), rejections[0])
    return MovieLensData(movies, ratings, tags, rejections)


def write_slice(
    source: str | os.PathLike, destination: str | os.PathLike, max_user: int = 40, max_tags: int = 400
) -> pathlib.Path:
    """Writes a small ml-latest-small directory: the ratings of users <= `max_user`, the first `max_tags`
    tag applications, the movies they reference plus every tenth other movie (search candidates no one
    rated). Rows are copied as they are, so the slice reads like the real files (smoke runs, tests)."""
    src, dst = pathlib.Path(source), pathlib.Path(destination)
    dst.mkdir(parents=True)
    used: set[str] = set()

    def copy(name: str, keep) -> None:
        with open(src / name, newline="") as fin, open(dst / name, "w", newline="") as fout:
            reader, writer = csv.reader(fin), csv.writer(fout)
            writer.writerow(next(reader))
            writer.writerows(row for i, row in enumerate(reader) if keep(i, row))

    def rated(_, row) -> bool:
        if int(row[0]) <= max_user:
            used.add(row[1])
            return True
        return False

    def tagged(i, row) -> bool:
        if i < max_tags:
            used.add(row[1])
            return True
        return False

    copy("ratings.csv", rated)
    copy("tags.csv", tagged)
    copy("movies.csv", lambda i, row: row[0] in used or i % 10 == 0)
    return dst


# ----------------------------------------------------------------------------------------- download
def default_cache_dir() -> pathlib.Path:
    """Where the downloaded archive is extracted: ``$TFSR_DATA_HOME`` or ``~/.cache/tfsr``."""
    return pathlib.Path(os.environ.get("TFSR_DATA_HOME", pathlib.Path.home() / ".cache" / "tfsr"))


def _sha256(handle) -> str:
    """SHA-256 of a binary stream, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _how_to_get(folder: pathlib.Path) -> str:
    """What a user does when no MovieLens data can be had: the end of every "not found" message."""
    return (
        f"put movies.csv, ratings.csv and tags.csv of ml-latest-small in {folder} (with TFSR_DATA_HOME=DIR: "
        "in DIR/ml-latest-small), or pass their directory (make demo DATA=DIR; tfsr preprocess "
        "--movielens_dir DIR)"
    )


def ensure_movielens(
    directory: str | os.PathLike | None = None, download: bool = True, url: str = MOVIELENS_URL
) -> pathlib.Path:
    """An ml-latest-small directory: the one given, else the cache, else the official archive downloaded there.

    Args:
      directory: an existing folder to use as is (its files must be present); never replaced by another.
      download: when no directory is given and the cache (:func:`default_cache_dir`) lacks the files,
        fetch the archive from `url`, check it against the MD5 published beside it (``url + ".md5"``)
        and its CSVs against :data:`MOVIELENS_FILE_SHA256`. Only checked files enter the cache.
      url: the archive (the official :data:`MOVIELENS_URL`; tests pass a ``file://`` copy).

    Raises:
      FileNotFoundError: the directory does not exist or lacks a required file, or nothing is cached and
        download=False.
      RuntimeError: the download failed (offline?) or a checksum does not match.
      When no directory was given, the message ends with what to do (:func:`_how_to_get`).
    """
    if directory is not None:
        folder = pathlib.Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: no such directory (ml-latest-small: movies.csv, ratings.csv, tags.csv)"
            )
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not an ml-latest-small directory: missing {missing}")
        return folder
    folder = default_cache_dir() / "ml-latest-small"
    if all((folder / name).is_file() for name in REQUIRED_FILES):
        return folder
    if not download:
        raise FileNotFoundError(f"MovieLens is not cached at {folder}; {_how_to_get(folder)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    archive = folder.parent / "ml-latest-small.zip"
    logger.info("downloading %s to %s", url, archive)
    try:
        urllib.request.urlretrieve(url, archive)
        with urllib.request.urlopen(url + ".md5", timeout=30) as response:
            expected_md5 = response.read().decode("ascii").split()[0].lower()
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(
            f"could not download {url} ({err}); if this machine is offline, {_how_to_get(folder)}"
        ) from err
    actual_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if actual_md5 != expected_md5:
        raise RuntimeError(
            f"{archive}: MD5 {actual_md5} does not match the published {expected_md5}; {_how_to_get(folder)}"
        )
    members = {name: f"ml-latest-small/{name}" for name in MOVIELENS_FILE_SHA256}
    with zipfile.ZipFile(archive) as zipped:
        absent = sorted(set(members.values()) - set(zipped.namelist()))
        if absent:
            raise RuntimeError(f"{archive} lacks {absent}; {_how_to_get(folder)}")
        for name, expected in MOVIELENS_FILE_SHA256.items():  # check every file before extracting any
            with zipped.open(members[name]) as handle:
                actual = _sha256(handle)
            if actual != expected:
                raise RuntimeError(
                    f"{url}: {name} has SHA-256 {actual}, not that of the release tfsr was tested with "
                    f"({expected}); GroupLens may have published a new version. {_how_to_get(folder)}"
                )
        for member in members.values():
            zipped.extract(member, folder.parent)
    return folder
