"""A seeded, streaming generator of synthetic search + recommendation logs in the generic log format.

It serves unit tests and scale runs (millions of rows) that no real data here reaches. The samples
follow the MovieLens schema and domain registry, with structure a model can learn:

* **latent factors**: each item belongs to a topic and has a factor vector near that topic's centre;
  each user prefers a few topics. A click is Bernoulli(sigmoid(score)) with
  ``score = <u, v> + <u, s_d> + b_d``, where ``s_d`` and ``b_d`` are the per-domain shift and bias;
* **text that carries signal**: titles are built from their topic's words and search queries from
  the words of the topic the user is looking for, so query-title overlap predicts clicks
  (search scores add a bonus when the shown item's topic is the query's topic);
* **power-law popularity**: items are drawn by Zipf rank, so most of the catalogue is cold;
* **domains**: rec rows take the item's domain by the MovieLens rule
  (:func:`tfsr.datasets.movielens.rec_domain` on its genres: the 'magic' topic is Children, the
  cold-start domain); search rows are ``search_tags`` impression lists of `impressions_per_search`.

Memory is constant in the number of rows: users and items are fixed-size tables and rows are
produced chunk by chunk by a generator, never held in a list.

CLI: ``tfsr synth --rows 1000000 --out DIR --seed 0``
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import logging
import math
import pathlib
from collections.abc import Iterator

from tfsr.datasets.logs import CSV_HEADER, FORMATS, format_log_line
from tfsr.datasets.movielens import SEARCH_DOMAIN, rec_domain

import numpy as np

logger = logging.getLogger(__name__)

# topic -> (words used in titles and queries, MovieLens genres of its items)
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "space": (
        ("galaxy", "star", "alien", "orbit", "rocket", "planet", "nebula", "astronaut"),
        ("Sci-Fi", "Action"),
    ),
    "crime": (
        ("heist", "detective", "gangster", "murder", "police", "mob", "robbery", "alibi"),
        ("Crime", "Drama"),
    ),
    "love": (
        ("love", "wedding", "romance", "kiss", "heart", "date", "honeymoon", "valentine"),
        ("Romance", "Comedy"),
    ),
    "war": (("battle", "soldier", "army", "war", "trench", "general", "front", "siege"), ("War", "Drama")),
    "music": (
        ("song", "band", "guitar", "concert", "rhythm", "melody", "dance", "opera"),
        ("Musical", "Comedy"),
    ),
    "sport": (("champion", "boxing", "coach", "team", "goal", "race", "match", "stadium"), ("Drama",)),
    "magic": (
        ("wizard", "dragon", "fairy", "castle", "spell", "princess", "unicorn", "toy"),
        ("Fantasy", "Children"),
    ),
    "horror": (
        ("ghost", "zombie", "haunted", "vampire", "curse", "scream", "shadow", "demon"),
        ("Horror", "Thriller"),
    ),
}
FILLER_WORDS = (
    "the",
    "last",
    "return",
    "night",
    "city",
    "secret",
    "big",
    "little",
    "day",
    "lost",
    "dark",
    "golden",
)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and strengths of the synthetic world.

    Args:
      num_users / num_items: table sizes (memory is O(num_users + num_items), not O(rows)).
      factor_dim: width of the latent factors.
      search_fraction: share of events that are searches (each gives `impressions_per_search` rows).
      impressions_per_search: items shown per search.
      popularity_exponent: Zipf exponent of item popularity (>1: a few hits, a long cold tail; 0: uniform,
        so that most of a large catalogue's titles appear in the rows).
      query_tail: 0, or the size of a long tail of query tokens: each search query gets one drawn from
        it (``"wizard castle q123456"``), so a run of n searches holds about n distinct queries (the
        text-feature scale of a real search engine; the topic words still carry the signal).
      text_signal: score bonus of a shown item whose topic is the query's.
      start_time / seconds_per_event: event timestamps increase by about this much per event.
      chunk_size: events generated per vectorised chunk.
    """

    num_users: int = 5_000
    num_items: int = 50_000
    factor_dim: int = 8
    search_fraction: float = 0.2
    impressions_per_search: int = 5
    popularity_exponent: float = 1.1
    text_signal: float = 1.5
    start_time: int = 1_500_000_000
    seconds_per_event: int = 60
    chunk_size: int = 4096
    query_tail: int = 0

    def __post_init__(self):
        for name in ("num_users", "num_items", "factor_dim", "impressions_per_search", "chunk_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.query_tail < 0 or self.popularity_exponent < 0:
            raise ValueError(
                f"query_tail and popularity_exponent must be >= 0, got {self.query_tail}, {self.popularity_exponent}"
            )
        if not 0.0 <= self.search_fraction <= 1.0:
            raise ValueError(f"search_fraction must be in [0, 1], got {self.search_fraction}")


class _World:
    """The fixed tables: topics, items (factors, titles, genres, domains, popularity), users, domain shifts."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator):
        names = list(TOPICS)
        dim = config.factor_dim
        self.topic_words = [TOPICS[t][0] for t in names]
        centres = rng.normal(0.0, 1.0, (len(names), dim))
        self.item_topic = rng.integers(0, len(names), config.num_items)
        self.item_factors = 0.6 * centres[self.item_topic] + rng.normal(0.0, 0.5, (config.num_items, dim))
        years = rng.integers(1950, 2020, config.num_items)
        self.item_titles, self.item_genres, self.item_domains = [], [], []
        for i in range(config.num_items):
            words = rng.choice(self.topic_words[self.item_topic[i]], size=2, replace=False)
            filler = FILLER_WORDS[rng.integers(len(FILLER_WORDS))]
            self.item_titles.append(
                f"{filler.title()} {words[0].title()} {words[1].title()} {i} ({years[i]})"
            )
            genres = list(TOPICS[names[self.item_topic[i]]][1])
            self.item_genres.append(genres)
            self.item_domains.append(rec_domain(genres))
        self.item_decades = [f"{y // 10 * 10}s" for y in years]
        # Zipf popularity over a random permutation of items: rank r has weight (r + 1) ** -a.
        weights = np.arange(1, config.num_items + 1, dtype=np.float64) ** -config.popularity_exponent
        self.popular_order = rng.permutation(config.num_items)
        self.uniform_popularity = config.popularity_exponent == 0
        self.popularity_cdf = np.cumsum(weights) / weights.sum()
        self.topic_items = [
            np.flatnonzero(self.item_topic[self.popular_order] == t) for t in range(len(names))
        ]
        self.user_factors = 0.6 * centres[rng.integers(0, len(names), config.num_users)] + rng.normal(
            0.0, 0.5, (config.num_users, dim)
        )
        self.user_topic_affinity = self.user_factors @ centres.T
        domains = sorted({*self.item_domains, SEARCH_DOMAIN})
        self.domain_index = {d: k for k, d in enumerate(domains)}
        self.domain_shift = rng.normal(0.0, 0.3, (len(domains), dim))
        self.domain_bias = rng.normal(0.0, 0.5, len(domains))
        self.item_domain_index = np.array([self.domain_index[d] for d in self.item_domains])

    def popular_items(self, rng: np.random.Generator, size) -> np.ndarray:
        ranks = np.minimum(
            np.searchsorted(self.popularity_cdf, rng.random(size)), len(self.popularity_cdf) - 1
        )
        return self.popular_order[ranks]

    def topic_item(self, rng: np.random.Generator, topic: int) -> int:
        ranks = self.topic_items[topic]
        if self.uniform_popularity:
            return int(self.popular_order[ranks[rng.integers(len(ranks))]])
        # within a topic, popularity rank still matters: a geometric draw over its popularity order
        position = min(int(rng.geometric(min(1.0, 20.0 / len(ranks)))) - 1, len(ranks) - 1)
        return int(self.popular_order[ranks[position]])

    def clicks(
        self,
        rng: np.random.Generator,
        users: np.ndarray,
        items: np.ndarray,
        domains: np.ndarray,
        bonus: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        """Bernoulli(sigmoid(<u, v> + <u, s_d> + b_d + bonus)) click labels, one per (user, item, domain)."""
        u = self.user_factors[users]
        score = (
            np.einsum("ij,ij->i", self.item_factors[items], u)
            + np.einsum("ij,ij->i", u, self.domain_shift[domains])
            + self.domain_bias[domains]
            + bonus
        )
        return (rng.random(len(items)) < 1.0 / (1.0 + np.exp(-score))).astype(np.int64)

    def rec_clicks(self, rng: np.random.Generator, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.clicks(rng, users, items, self.item_domain_index[items])


def generate(rows: int, seed: int = 0, config: SyntheticConfig | None = None) -> Iterator[dict]:
    """Yields exactly `rows` generic-format records (one impression each), deterministic under `seed`."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    config = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    world = _World(config, rng)
    emitted, event = 0, 0
    while emitted < rows:
        n = config.chunk_size
        users = rng.integers(0, config.num_users, n)
        is_search = rng.random(n) < config.search_fraction
        rec_items = world.popular_items(rng, n)
        rec_labels = world.rec_clicks(rng, users, rec_items)
        jitter = rng.integers(0, config.seconds_per_event, n)
        for k in range(n):
            user, timestamp = (
                int(users[k]),
                config.start_time + (event + k) * config.seconds_per_event + int(jitter[k]),
            )
            if is_search[k]:
                records = _search_event(world, rng, config, user, timestamp)
            else:
                item = int(rec_items[k])
                records = [
                    _record(world, world.item_domains[item], user, "", item, int(rec_labels[k]), timestamp)
                ]
            yield from records[: rows - emitted]
            emitted += len(records)
            if emitted >= rows:
                return
        event += n


def _search_event(
    world: _World, rng: np.random.Generator, config: SyntheticConfig, user: int, timestamp: int
) -> list[dict]:
    affinity = world.user_topic_affinity[user]
    topic = int(np.argmax(affinity + rng.gumbel(size=len(affinity))))
    words = world.topic_words[topic]
    query = " ".join(rng.choice(words, size=int(rng.integers(1, 3)), replace=False))
    if config.query_tail:  # drawn only then: the default world's records stay as they were
        query = f"{query} q{int(rng.integers(config.query_tail))}"
    shown = [
        world.topic_item(rng, topic) if rng.random() < 0.6 else int(world.popular_items(rng, 1)[0])
        for _ in range(config.impressions_per_search)
    ]
    shown = np.array(shown)
    # centred so that a topic match is a gain and a mismatch a loss; overall CTR stays moderate
    bonus = config.text_signal * ((world.item_topic[shown] == topic) - 1.0)
    search = np.full(len(shown), world.domain_index[SEARCH_DOMAIN])
    labels = world.clicks(rng, np.full(len(shown), user), shown, search, bonus)
    return [
        _record(world, SEARCH_DOMAIN, user, query, int(i), int(y), timestamp)
        for i, y in zip(shown, labels, strict=True)
    ]


def _record(world: _World, domain: str, user: int, query: str, item: int, label: int, timestamp: int) -> dict:
    return {
        "domain": domain,
        "user_id": f"u{user}",
        "query_text": query,
        "item_id": f"i{item}",
        "item_title": world.item_titles[item],
        "item_genres": world.item_genres[item],
        "item_decade": world.item_decades[item],
        "label": label,
        "timestamp": timestamp,
    }


def write_logs(
    rows: int,
    out_dir: str | pathlib.Path,
    seed: int = 0,
    fmt: str = "jsonl",
    rows_per_shard: int = 250_000,
    compress: bool = True,
    config: SyntheticConfig | None = None,
) -> list[pathlib.Path]:
    """Streams `rows` synthetic records into shards ``synthetic-SSSSS-of-NNNNN.<fmt>[.gz]`` under `out_dir`."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if rows_per_shard <= 0:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(rows / rows_per_shard))
    suffix = f".{fmt}" + (".gz" if compress else "")
    paths = [out / f"synthetic-{s:05d}-of-{num_shards:05d}{suffix}" for s in range(num_shards)]
    records = generate(rows, seed, config)
    for shard, path in enumerate(paths):
        with _open_text(path, compress) as handle:
            if fmt == "csv":
                handle.write(CSV_HEADER + "\n")
            for record in itertools.islice(records, rows_per_shard):
                handle.write(format_log_line(record, fmt) + "\n")
        logger.info("wrote %s (%d/%d shards)", path, shard + 1, num_shards)
    return paths


def _open_text(path: pathlib.Path, compress: bool):
    # compresslevel 1: the generator, not the disk, should bound throughput
    return (
        gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
        if compress
        else open(path, "w", encoding="utf-8")
    )


def main(argv: list[str] | None = None) -> int:
    """``tfsr synth``: write synthetic logs in the generic format."""
    parser = argparse.ArgumentParser(
        prog="tfsr synth",
        description="write synthetic search + rec logs (generic log format) for tfsr preprocess",
    )
    parser.add_argument("--rows", type=int, required=True, help="number of rows (impressions) to write")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default="jsonl")
    parser.add_argument("--rows_per_shard", type=int, default=250_000)
    parser.add_argument("--no_compress", action="store_true", help="write plain text instead of gzip")
    parser.add_argument("--num_users", type=int, default=SyntheticConfig.num_users)
    parser.add_argument(
        "--num_items", type=int, default=SyntheticConfig.num_items, help="distinct item titles"
    )
    parser.add_argument("--search_fraction", type=float, default=SyntheticConfig.search_fraction)
    parser.add_argument("--impressions_per_search", type=int, default=SyntheticConfig.impressions_per_search)
    parser.add_argument(
        "--popularity_exponent",
        type=float,
        default=SyntheticConfig.popularity_exponent,
        help="Zipf exponent of item popularity (0: uniform, every title about as likely)",
    )
    parser.add_argument(
        "--query_tail",
        type=int,
        default=SyntheticConfig.query_tail,
        help="0, or the size of a long tail of query tokens (about one distinct query per search)",
    )
    args = parser.parse_args(argv)
    config = SyntheticConfig(
        num_users=args.num_users,
        num_items=args.num_items,
        search_fraction=args.search_fraction,
        impressions_per_search=args.impressions_per_search,
        popularity_exponent=args.popularity_exponent,
        query_tail=args.query_tail,
    )
    paths = write_logs(
        args.rows, args.out, args.seed, args.format, args.rows_per_shard, not args.no_compress, config
    )
    logger.info("wrote %d rows in %d files under %s", args.rows, len(paths), args.out)
    return 0
