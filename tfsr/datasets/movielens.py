"""MovieLens (ml-latest-small layout) reader and its mapping to unified search + recommendation samples.

The mapping (DESIGN.md §5; the data card is ``docs/DATA.md``):

* **search** domain ``search_tags``: each tag application is a search; the tag as typed is the query,
  the tagged movie the clicked item (label 1). Non-clicked impressions are *constructed*: by default
  the results a search engine would have shown for the query at the tag's time, built only from what
  was known before it (:class:`SearchEngine`); optionally other movies that match the query as well as
  the click (:class:`SameTagIndex`). Never the clicked movie.
* **recommendation** domains from ratings, by the movie's primary genre (:func:`rec_domain`), label
  ``rating >= 4`` (:func:`label_from_rating`).
* **cold start**: movies with Animation or Children among their genres form ``rec_children``, held out
  of pretraining (``cold_start=True`` in :data:`tfsr.features.MOVIELENS_DOMAINS`).
* **splits** by time (:func:`user_eval_cutoff`, :func:`split_of`): per-user chronological by default.

Every function here is pure and row-level so that the in-memory reader (:func:`read_movielens`) and
the Beam job (``beam_jobs/build_samples.py``) share exactly the same rules. A row that cannot be used
raises :class:`RowError` with a short machine-readable ``reason`` and a human ``detail``; callers count
it (dead letters), they never drop it silently.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import datetime
import hashlib
import logging
import math
import os
import pathlib
import random
import re
import unicodedata
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence

from tfsr.features import MOVIELENS_DOMAINS

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
MAX_TEXT_CHARS = 1000  # titles and tags longer than this are rejected, not truncated
NO_GENRES = "(no genres listed)"
COLD_START_GENRES = frozenset({"Animation", "Children"})
# Primary genre -> rec domain, first match wins (MovieLens lists genres alphabetically, so "first
# listed" would always favour Action; an explicit priority says what we mean).
GENRE_DOMAINS = (("Action", "rec_action"), ("Comedy", "rec_comedy"), ("Drama", "rec_drama"))
OTHER_DOMAIN = "rec_other"
COLD_DOMAIN = "rec_children"
SEARCH_DOMAIN = "search_tags"
_STOPWORDS = frozenset({"the", "and", "for", "with", "from", "that", "this", "not", "but", "les", "der"})
_YEAR_RE = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?\s*)?\)\s*$")
_TOKEN_RE = re.compile(r"[^\W_]+")

_UNREGISTERED = {SEARCH_DOMAIN, OTHER_DOMAIN, COLD_DOMAIN, *(d for _, d in GENRE_DOMAINS)} - set(
    MOVIELENS_DOMAINS.names
)
if _UNREGISTERED:  # the registry in tfsr.features is the source of truth for domain names
    raise ImportError(
        f"MovieLens mapping uses domains missing from MOVIELENS_DOMAINS: {sorted(_UNREGISTERED)}"
    )


class RowError(ValueError):
    """An input row that cannot be used.

    Attributes:
      reason: short machine-readable cause, e.g. ``"rating_out_of_range"``; dead letters and the
        manifest's reconciliation are counted by it.
      detail: a human explanation naming the offending value.
    """

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


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
def decode_line(raw: bytes | str) -> str:
    """One input line as text without its line ending; invalid UTF-8 is a RowError."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RowError(
                "invalid_utf8", f"bytes are not valid UTF-8 ({err.reason} at byte {err.start})"
            ) from None
    return raw.rstrip("\r\n")


def split_csv_line(raw: bytes | str, num_columns: int) -> list[str]:
    """Splits one CSV line (quoted fields allowed, as in MovieLens titles) into exactly `num_columns`."""
    line = decode_line(raw)
    if not line.strip():
        raise RowError("blank_line", "empty line")
    try:
        fields = next(csv.reader([line], strict=True))
    except csv.Error as err:
        reason = "field_too_long" if "field larger than field limit" in str(err) else "malformed_csv"
        raise RowError(reason, f"{err} in line {line[:80]!r}") from None
    if len(fields) != num_columns:
        raise RowError("wrong_column_count", f"expected {num_columns} columns, got {len(fields)}")
    return fields


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


def normalize_query(text: str) -> str:
    """Query id from query text: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_tokens(text: str) -> list[str]:
    """Content tokens for text matching: normalised word tokens of 3+ characters, stopwords removed."""
    return [t for t in _TOKEN_RE.findall(normalize_query(text)) if len(t) >= 3 and t not in _STOPWORDS]


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


SEARCH_CONSTRUCTIONS = ("engine", "same_tag")  # --search_impressions choices; the first is the default


def release_year(title: str) -> int | None:
    """The release year from a title's trailing ``(YYYY)``; None when the title has none."""
    match = _YEAR_RE.search(title)
    return int(match.group(1)) if match else None


def _utc_year(timestamp: int) -> int:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).year


@dataclasses.dataclass
class SearchEngine:
    """A search engine as of each search's time: the source of the default (``engine``) impressions.

    MovieLens has no search log, so the impressions of a tag application (the query) are what this
    engine would have shown for the query *at the tag's timestamp* t, built only from what was known
    strictly before t:

    * **catalog**: movies whose release year (from the title) is at most t's calendar year (no year:
      always in), so a 2008 search cannot show a 2015 film;
    * **indexed text** per movie, three fields: title tokens, genre tokens and the tokens of the tags
      applied to the movie before t (by anyone; each application counts once per token);
    * **text score**: BM25F without length normalisation (titles are short): per query token,
      ``idf * tf (k1 + 1) / (tf + k1)`` with ``tf`` the field-weighted count (:attr:`FIELD_WEIGHTS`) and
      ``idf = log(1 + (N - df + 0.5) / (df + 0.5))`` over the catalog at t;
    * **popularity** at t: the number of ratings of the movie strictly before t, blended as a
      saturating prior (:meth:`popularity_prior`). Candidates are the text matches plus the most-rated
      movies of the latest quarterly snapshot taken at or before t (:attr:`POPULAR_CANDIDATES`), so
      queries without a text match still get a page of established movies.

    The page is the top :attr:`DEPTH` results; equal scores are ordered by a per-query hash. A search's
    impressions sample positions of that page without replacement with weight ``1 / (rank + 1)`` (a
    position-bias-like decay), so a page holds strong and weak matches. The sampler is seeded per
    search and everything else is sorted, so output is deterministic under the seed and independent of
    the input order.

    Attributes:
      title_postings / genre_postings: content token -> movies with it in the title / genres.
      tag_postings: content token -> (timestamp, movie id) of each tag application containing it,
        time-sorted (a bisect keeps the ones before t).
      release_years: movie id -> release year (movies without a year are absent: always in the catalog).
      catalog_years: the sorted release years (0 for none), to count the catalog at a year.
      rating_times: movie id -> sorted rating timestamps (popularity at t by bisect).
      snapshot_origin: start of the first popularity snapshot (seconds).
      popular_snapshots: snapshot i = the most-rated movies by ratings before
        ``snapshot_origin + i * SNAPSHOT_SECONDS``.
      user_query_movies: (user id, normalised query) -> movies that user tagged with it (any time):
        those are the user's clicks for the query, never shown as skips.
    """

    title_postings: dict[str, tuple[int, ...]]
    genre_postings: dict[str, tuple[int, ...]]
    tag_postings: dict[str, tuple[tuple[int, int], ...]]
    release_years: dict[int, int]
    catalog_years: tuple[int, ...]
    rating_times: dict[int, tuple[int, ...]]
    snapshot_origin: int
    popular_snapshots: tuple[tuple[int, ...], ...]
    user_query_movies: dict[tuple[int, str], frozenset[int]]

    DEPTH = 100  # results per page
    POSITION_DECAY = 1.0  # impression weight of page position r (0-based): (r + 1) ** -POSITION_DECAY
    K1 = 1.2  # BM25 term-frequency saturation
    FIELD_WEIGHTS = {"title": 1.0, "genres": 0.5, "tags": 1.0}
    POP_WEIGHT = 1.0  # score of an established movie (>= POP_SATURATION ratings before t)
    POP_SATURATION = 10
    POPULAR_CANDIDATES = 1000  # most-rated movies per snapshot, the candidates without a text match
    SNAPSHOT_SECONDS = 91 * 24 * 3600  # quarterly popularity snapshots

    @classmethod
    def build(
        cls, movies: Iterable[Movie], tags: Iterable[Tag], rating_times: Mapping[int, Iterable[int]]
    ) -> SearchEngine:
        """Builds the engine from the movies, the tag applications and each movie's rating timestamps."""
        title_postings, genre_postings, tag_postings = defaultdict(set), defaultdict(set), defaultdict(list)
        user_query_movies = defaultdict(set)
        release_years, catalog_years = {}, []
        for movie in movies:
            for token in text_tokens(movie.title):
                title_postings[token].add(movie.movie_id)
            for token in text_tokens(" ".join(movie.genres)):
                genre_postings[token].add(movie.movie_id)
            year = release_year(movie.title)
            if year is not None:
                release_years[movie.movie_id] = year
            catalog_years.append(year or 0)
        for tag in tags:
            query = normalize_query(tag.tag)
            user_query_movies[(tag.user_id, query)].add(tag.movie_id)
            for token in set(text_tokens(query)):
                tag_postings[token].append((tag.timestamp, tag.movie_id))
        times = {m: tuple(sorted(ts)) for m, ts in rating_times.items()}
        origin, snapshots = cls._popular_snapshots(times)
        return cls(
            title_postings={t: tuple(sorted(ms)) for t, ms in title_postings.items()},
            genre_postings={t: tuple(sorted(ms)) for t, ms in genre_postings.items()},
            tag_postings={t: tuple(sorted(ps)) for t, ps in tag_postings.items()},
            release_years=release_years,
            catalog_years=tuple(sorted(catalog_years)),
            rating_times=times,
            snapshot_origin=origin,
            popular_snapshots=snapshots,
            user_query_movies={k: frozenset(v) for k, v in user_query_movies.items()},
        )

    @classmethod
    def _popular_snapshots(
        cls, times: Mapping[int, Sequence[int]]
    ) -> tuple[int, tuple[tuple[int, ...], ...]]:
        """(origin, snapshots): the most-rated movies by ratings strictly before each monthly boundary."""
        events = sorted((t, m) for m, ts in times.items() for t in ts)
        if not events:
            return 0, ()
        origin = events[0][0] - events[0][0] % cls.SNAPSHOT_SECONDS
        counts: dict[int, int] = defaultdict(int)
        snapshots, i, boundary = [], 0, origin
        while i < len(events) or boundary <= events[-1][0] + cls.SNAPSHOT_SECONDS:
            while i < len(events) and events[i][0] < boundary:
                counts[events[i][1]] += 1
                i += 1
            top = sorted(counts, key=lambda m: (-counts[m], m))[: cls.POPULAR_CANDIDATES]
            snapshots.append(tuple(top))
            boundary += cls.SNAPSHOT_SECONDS
        return origin, tuple(snapshots)

    def popularity(self, movie_id: int, timestamp: int) -> int:
        """Ratings of the movie strictly before `timestamp`."""
        return bisect.bisect_left(self.rating_times.get(movie_id, ()), timestamp)

    def in_catalog(self, movie_id: int, year: int) -> bool:
        """Whether the movie was released by `year` (movies without a year always are)."""
        return self.release_years.get(movie_id, 0) <= year

    def _popular_at(self, timestamp: int) -> tuple[int, ...]:
        index = (timestamp - self.snapshot_origin) // self.SNAPSHOT_SECONDS
        if index < 0 or not self.popular_snapshots:
            return ()
        return self.popular_snapshots[min(index, len(self.popular_snapshots) - 1)]

    def scores(self, query: str, timestamp: int) -> dict[int, float]:
        """Movie id -> blended score (BM25F text + popularity) of every candidate for `query` at `timestamp`."""
        year = _utc_year(timestamp)
        catalog_size = bisect.bisect_right(self.catalog_years, year)
        text: dict[int, float] = defaultdict(float)
        weights = self.FIELD_WEIGHTS
        for token in dict.fromkeys(text_tokens(query)):
            tf: dict[int, float] = defaultdict(float)
            for field, postings in (("title", self.title_postings), ("genres", self.genre_postings)):
                for m in postings.get(token, ()):
                    tf[m] += weights[field]
            tagged = self.tag_postings.get(token, ())
            for _, m in tagged[: bisect.bisect_left(tagged, (timestamp,))]:
                tf[m] += weights["tags"]
            matched = [m for m in tf if self.in_catalog(m, year)]
            idf = math.log(1.0 + (catalog_size - len(matched) + 0.5) / (len(matched) + 0.5))
            for m in matched:
                text[m] += idf * tf[m] * (self.K1 + 1.0) / (tf[m] + self.K1)
        candidates = dict.fromkeys(
            [*text, *(m for m in self._popular_at(timestamp) if self.in_catalog(m, year))]
        )
        return {m: text.get(m, 0.0) + self.popularity_prior(m, timestamp) for m in candidates}

    def popularity_prior(self, movie_id: int, timestamp: int) -> float:
        """``POP_WEIGHT * min(1, log1p(ratings before t) / log1p(POP_SATURATION))``.

        Saturating on purpose: it separates established movies from unknown ones but does not rank
        blockbusters above the rest. (An unsaturated ``log1p`` prior filled every page with the most-rated
        movies, and the clicked movies, which taggers pick from the long tail, were then told apart by
        popularity alone: popularity-at-t AUC 0.25.)
        """
        ratings = self.popularity(movie_id, timestamp)
        return self.POP_WEIGHT * min(1.0, math.log1p(ratings) / math.log1p(self.POP_SATURATION))

    def ranked(self, query: str, timestamp: int, exclude: Iterable[int] = ()) -> list[int]:
        """The engine's result page for `query` at `timestamp`: the top :attr:`DEPTH` movie ids, best first."""
        excluded = set(exclude)
        scores = self.scores(query, timestamp)
        # equal scores (e.g. many one-word title matches) in an order fixed per query, not by id or popularity
        ordered = sorted(
            (m for m in scores if m not in excluded),
            key=lambda m: (-scores[m], zlib.crc32(f"{query}|{m}".encode()), m),
        )
        return ordered[: self.DEPTH]

    def negatives(self, tag: Tag, num_negatives: int, seed: int) -> list[int]:
        """Up to `num_negatives` results shown for the tag's query at its time but not clicked, page order.

        Positions are sampled without replacement with weight ``1 / (rank + 1)`` (Efraimidis-Spirakis
        keys), from an RNG seeded with (seed, user, movie, query, timestamp).
        """
        query = normalize_query(tag.tag)
        rng = random.Random(f"{seed}|{tag.user_id}|{tag.movie_id}|{query}|{tag.timestamp}")
        excluded = {tag.movie_id} | self.user_query_movies.get((tag.user_id, query), frozenset())
        page = self.ranked(query, tag.timestamp, excluded)
        # Efraimidis-Spirakis: key u ** (1 / w) with w = (rank + 1) ** -POSITION_DECAY; the k largest keys
        keys = [rng.random() ** ((rank + 1.0) ** self.POSITION_DECAY) for rank in range(len(page))]
        chosen = sorted(range(len(page)), key=lambda r: (-keys[r], r))[:num_negatives]
        return [page[r] for r in sorted(chosen)]


@dataclasses.dataclass
class SameTagIndex:
    """The ``same_tag`` construction: negatives that match the query as well as the click does.

    The hardest construction, kept as an option (``--search_impressions same_tag``). It is built from
    *all* tags and ratings, including those after the search (a real engine would not know them), and
    measured to leave nothing to learn (every model about 0.50 AUC). Tiers, in order, each excluding the
    clicked movie and any movie the same user tagged with the same query (those are clicks, not skips):

    1. movies tagged with the same normalised query by anyone;
    2. movies tagged with a query sharing a content token with it ("similar tags");
    3. movies whose title or genres contain a query token (text match), most popular first;
    4. the most popular movies.

    Within a tier candidates are shuffled by a per-impression seeded RNG, so output is reproducible.

    Attributes:
      query_movies: normalised query -> movies tagged with it.
      token_queries: content token -> normalised queries containing it.
      token_movies: content token -> movies matching it in title/genres, most popular first (capped).
      user_query_movies: (user id, normalised query) -> movies that user tagged with it.
      popular: most-rated movie ids, most popular first.
    """

    query_movies: dict[str, tuple[int, ...]]
    token_queries: dict[str, tuple[str, ...]]
    token_movies: dict[str, tuple[int, ...]]
    user_query_movies: dict[tuple[int, str], frozenset[int]]
    popular: tuple[int, ...]

    MAX_TOKEN_MOVIES = 200

    @classmethod
    def build(
        cls,
        movies: Iterable[Movie],
        tags: Iterable[Tag],
        popularity: Mapping[int, int],
        num_popular: int = 200,
    ) -> SameTagIndex:
        """Builds the index from the movies, the tag applications and per-movie rating counts."""
        query_movies, token_queries = defaultdict(set), defaultdict(set)
        user_query_movies = defaultdict(set)
        for tag in tags:
            query = normalize_query(tag.tag)
            query_movies[query].add(tag.movie_id)
            user_query_movies[(tag.user_id, query)].add(tag.movie_id)
            for token in text_tokens(query):
                token_queries[token].add(query)
        token_movies = defaultdict(set)
        for movie in movies:
            for token in set(text_tokens(movie.title + " " + " ".join(movie.genres))):
                token_movies[token].add(movie.movie_id)

        def by_popularity(ids: Iterable[int]) -> tuple[int, ...]:
            return tuple(sorted(ids, key=lambda m: (-popularity.get(m, 0), m)))

        return cls(
            query_movies={q: tuple(sorted(ms)) for q, ms in query_movies.items()},
            token_queries={t: tuple(sorted(qs)) for t, qs in token_queries.items()},
            token_movies={t: by_popularity(ms)[: cls.MAX_TOKEN_MOVIES] for t, ms in token_movies.items()},
            user_query_movies={k: frozenset(v) for k, v in user_query_movies.items()},
            popular=by_popularity(popularity)[:num_popular],
        )

    def negatives(self, tag: Tag, num_negatives: int, seed: int) -> list[int]:
        """Up to `num_negatives` movie ids retrieved for the tag's query but not clicked."""
        query = normalize_query(tag.tag)
        rng = random.Random(f"{seed}|{tag.user_id}|{tag.movie_id}|{query}|{tag.timestamp}")
        excluded = {tag.movie_id} | self.user_query_movies.get((tag.user_id, query), frozenset())
        tokens = text_tokens(query)
        similar = {
            m
            for t in tokens
            for q in self.token_queries.get(t, ())
            if q != query
            for m in self.query_movies.get(q, ())
        }
        text_match = [m for t in tokens for m in self.token_movies.get(t, ())]
        tiers = (self.query_movies.get(query, ()), sorted(similar), text_match, self.popular)
        chosen: list[int] = []
        for tier in tiers:
            candidates = [m for m in dict.fromkeys(tier) if m not in excluded]
            rng.shuffle(candidates)
            for movie_id in candidates[: num_negatives - len(chosen)]:
                chosen.append(movie_id)
                excluded.add(movie_id)
            if len(chosen) == num_negatives:
                break
        return chosen


def build_search_index(
    construction: str,
    movies: Iterable[Movie],
    tags: Iterable[Tag],
    rating_times: Mapping[int, Sequence[int]],
) -> SearchEngine | SameTagIndex:
    """The negative source of a search construction (:data:`SEARCH_CONSTRUCTIONS`).

    Args:
      construction: ``"engine"`` (:class:`SearchEngine`, the default) or ``"same_tag"``
        (:class:`SameTagIndex`).
      movies, tags: all parsed movies and tag applications.
      rating_times: movie id -> its rating timestamps (any order); ``same_tag`` uses only their count.
    """
    if construction == "engine":
        return SearchEngine.build(movies, tags, rating_times)
    if construction == "same_tag":
        return SameTagIndex.build(movies, tags, {m: len(ts) for m, ts in rating_times.items()})
    raise ValueError(f"unknown search construction {construction!r}; choose from {SEARCH_CONSTRUCTIONS}")


def search_records(
    tag: Tag,
    movies: Mapping[int, Movie],
    index: SearchEngine | SameTagIndex,
    num_negatives: int,
    seed: int,
) -> list[dict]:
    """A tag application as one search impression list: the clicked movie plus constructed negatives.

    The clicked movie is always an impression, even when the engine would not have ranked it on its
    page (the user found it). All impressions share the tag's user, query and timestamp, so a time split
    keeps them together.
    """
    query = {
        "domain": SEARCH_DOMAIN,
        "user_id": str(tag.user_id),
        "query_text": tag.tag,
        "query_id": normalize_query(tag.tag),
        "timestamp": tag.timestamp,
    }
    items = [(tag.movie_id, 1)] + [(m, 0) for m in index.negatives(tag, num_negatives, seed)]
    return [{**query, **item_features(movies[m]), "label": label} for m, label in items]


# ------------------------------------------------------------------------------------------ splits
def user_eval_cutoff(timestamps: Iterable[int], eval_fraction: float) -> int:
    """The per-user chronological split point: rows with ``timestamp > cutoff`` go to evaluation.

    The latest ~`eval_fraction` of a user's rows are evaluation rows; rows sharing the boundary
    timestamp all stay in training, so no evaluation row is older than (or as old as) a training row
    of the same user. A user whose rows all share one timestamp is training-only.
    """
    ordered = sorted(timestamps)
    if not ordered:
        raise ValueError("user_eval_cutoff needs at least one timestamp, got none")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    # rounded first so that, e.g., 10 rows * (1 - (0.2 + 0.1)) is 7 rows, not ceil(7.000000000000001)
    num_train = max(1, math.ceil(round(len(ordered) * (1.0 - eval_fraction), 9)))
    return ordered[num_train - 1]


def split_of(timestamp: int, cutoff: int, eval_split: str, train_split: str) -> str:
    """`eval_split` when the row is strictly after the cutoff, else `train_split`."""
    return eval_split if timestamp > cutoff else train_split


def is_cold_item(train_count: int, max_train_count: int) -> int:
    """Item cold-start marker: 1 when the item appears in at most `max_train_count` training samples."""
    return int(train_count <= max_train_count)


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


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without line ending) for each line of a file, streaming."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw.rstrip(b"\r\n")


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
