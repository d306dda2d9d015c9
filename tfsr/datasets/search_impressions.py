"""Constructed search impressions for MovieLens: what a search engine showed for a tag's query.

MovieLens has no search log: a tag application is a search whose click is the tagged movie
(:mod:`tfsr.datasets.movielens`). Its non-clicked impressions are constructed here (docs/DATA.md):
by default (``engine``, :class:`SearchEngine`) the page a search engine would have shown for the query
at the tag's time, built only from what was known before it; optionally (``same_tag``,
:class:`SameTagIndex`) other movies that match the query as well as the click. Never the clicked movie.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import math
import random
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from tfsr.datasets.movielens import SEARCH_DOMAIN, Movie, Tag, item_features, release_year
from tfsr.datasets.rows import normalize_query

_STOPWORDS = frozenset({"the", "and", "for", "with", "from", "that", "this", "not", "but", "les", "der"})
_TOKEN_RE = re.compile(r"[^\W_]+")


def text_tokens(text: str) -> list[str]:
    """Content tokens for text matching: normalised word tokens of 3+ characters, stopwords removed."""
    return [t for t in _TOKEN_RE.findall(normalize_query(text)) if len(t) >= 3 and t not in _STOPWORDS]


SEARCH_CONSTRUCTIONS = ("engine", "same_tag")  # --search_impressions choices; the first is the default


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
