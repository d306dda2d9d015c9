"""MovieLens reader, row parsers (bad input) and the pure mapping rules of tfsr.datasets.movielens."""

import collections
import datetime
import math
import pathlib
import urllib.error

import tfsr  # noqa: F401  (Keras 2 before TensorFlow)
from beam_jobs import build_samples as bs
from beam_jobs import core, sources
from tfsr.contract import RowError
from tfsr.datasets import movielens as ml
from tfsr.datasets import search_impressions as si
from tfsr.datasets import splits
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

DATA = pathlib.Path(__file__).parent / "data"
MOVIES = {
    1: ml.Movie(1, "Toy Story (1995)", ("Animation", "Children")),
    3: ml.Movie(3, "Heat (1995)", ("Action",)),
}


# ------------------------------------------------------------------------------------- row parsers
def test_parse_movie_with_quoted_title_and_no_genres():
    movie = ml.parse_movie(b'2,"American President, The (1995)",Comedy|Drama')
    assert movie == ml.Movie(2, "American President, The (1995)", ("Comedy", "Drama"))
    assert ml.parse_movie("9,Untitled,(no genres listed)").genres == ()


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'7,"Unterminated (1995),Drama', "malformed_csv"),
        (b"8,Extra (1995),Drama,oops", "wrong_column_count"),
        (b"nine,Bad Id (1995),Drama", "non_numeric_movie_id"),
        (b"10,,Drama", "empty_title"),
        (b"11,Caf\xe9 (1995),Drama", "invalid_utf8"),
        (b"12," + b"x" * 2000 + b",Drama", "title_too_long"),
        (b"   ", "blank_line"),
    ],
)
def test_parse_movie_rejects_with_reason(line, reason):
    with pytest.raises(RowError) as err:
        ml.parse_movie(line)
    assert err.value.reason == reason
    assert err.value.detail  # a human explanation, never empty


def test_parse_rating_and_tag():
    assert ml.parse_rating(b"5,3,4.5,964982703\r\n", MOVIES) == ml.Rating(5, 3, 4.5, 964982703)
    assert ml.parse_tag(b'5,1,"funny, pixar",964982703', MOVIES) == ml.Tag(5, 1, "funny, pixar", 964982703)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1,3,abc,964983200", "non_numeric_rating"),
        (b"1,3,7.0,964983300", "rating_out_of_range"),
        (b"1,3,0.0,964983300", "rating_out_of_range"),
        (b"1,3,nan,964983300", "rating_out_of_range"),
        (b"1,999,4.0,964983400", "unknown_movie_id"),
        (b"1,3", "wrong_column_count"),
        (b"1,\xff\xfe,4.0,964983500", "invalid_utf8"),
        (b"x1,3,4.0,964983700", "non_numeric_user_id"),
        (b"1,3,4.0,soon", "non_numeric_timestamp"),
        (b"1,3,4.0," + b"9" * (1 << 20), "field_too_long"),  # a 1 MB field exceeds the CSV field limit
    ],
)
def test_parse_rating_rejects_with_reason(line, reason):
    with pytest.raises(RowError) as err:
        ml.parse_rating(line, MOVIES)
    assert err.value.reason == reason
    assert reason in str(err.value)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1,1,   ,1", "empty_tag"),
        (b"1,999,fun,1", "unknown_movie_id"),
        (b"1,1,caf\xe9,1", "invalid_utf8"),
        (b"1,1,t" + b"x" * 5000 + b",1", "tag_too_long"),
    ],
)
def test_parse_tag_rejects_with_reason(line, reason):
    with pytest.raises(RowError) as err:
        ml.parse_tag(line, MOVIES)
    assert err.value.reason == reason


# ----------------------------------------------------------------------------------- mapping rules
@pytest.mark.parametrize(
    "genres, domain",
    [
        (("Adventure", "Animation", "Children", "Comedy"), "rec_children"),
        (("Action", "Children"), "rec_children"),
        (("Action", "Comedy", "Drama"), "rec_action"),
        (("Comedy", "Drama", "Romance"), "rec_comedy"),
        (("Crime", "Drama"), "rec_drama"),
        (("Horror", "Thriller"), "rec_other"),
        ((), "rec_other"),
    ],
)
def test_rec_domain(genres, domain):
    assert ml.rec_domain(genres) == domain
    assert domain in MOVIELENS_DOMAINS


def test_cold_start_domain_is_the_registry_cold_domain():
    assert [d.name for d in MOVIELENS_DOMAINS.cold()] == [ml.COLD_DOMAIN]


def test_label_decade_and_query_rules():
    assert [ml.label_from_rating(r) for r in (0.5, 3.5, 4.0, 5.0)] == [0, 0, 1, 1]
    assert ml.decade_of("Toy Story (1995)") == "1990s"
    assert ml.decade_of("Babylon 5") == ""
    assert ml.decade_of("Cosmos (1980\u20131981) ") == "1980s"
    assert ml.decade_of("1984 (1956)") == "1950s"
    assert ml.normalize_query("  Dark   COMEDY\u00a0") == "dark comedy"
    assert si.text_tokens("The Sci-Fi of it") == ["sci"]


# -------------------------------------------------------------------- search: same_tag construction
def _same_tag_index():
    movies = [
        ml.Movie(i, f"Movie {name} ({1990 + i})", genres)
        for i, name, genres in [
            (1, "Space", ("Sci-Fi",)),
            (2, "Heist", ("Crime",)),
            (3, "Space Wars", ("Sci-Fi",)),
            (4, "Quiet", ("Drama",)),
            (5, "Big", ("Comedy",)),
            (6, "Dark Space", ("Horror",)),
        ]
    ]
    tags = [
        ml.Tag(10, 1, "space", 1),
        ml.Tag(11, 3, "Space", 2),
        ml.Tag(12, 2, "heist", 3),
        ml.Tag(13, 4, "space opera", 4),
    ]
    rating_times = {m: tuple(range(n)) for m, n in {5: 100, 4: 50, 2: 10, 1: 5, 3: 3, 6: 1}.items()}
    return {m.movie_id: m for m in movies}, si.build_search_index("same_tag", movies, tags, rating_times)


def test_same_tag_negatives_prefer_retrieved_movies_and_exclude_the_click():
    movies, index = _same_tag_index()
    assert isinstance(index, si.SameTagIndex)
    tag = ml.Tag(10, 1, "space", 1)
    first = index.negatives(tag, 1, seed=0)
    assert first == [3]  # the other movie tagged "space" (tier 1)
    two = index.negatives(tag, 2, seed=0)
    assert two[0] == 3 and two[1] == 4  # then the movie tagged "space opera" (similar tag, tier 2)
    many = index.negatives(tag, 5, seed=0)
    assert 1 not in many and len(many) == len(set(many)) == 5
    assert 6 in many[:3]  # "Dark Space" matches the query text (tier 3) before popularity fills up
    assert index.negatives(tag, 5, seed=0) == many  # seeded, reproducible


def test_same_tag_negatives_exclude_movies_the_user_tagged_with_the_same_query():
    movies = [ml.Movie(i, f"M{i}", ()) for i in range(1, 5)]
    tags = [ml.Tag(1, 1, "x", 1), ml.Tag(1, 2, "x", 1), ml.Tag(2, 3, "x", 1)]
    index = si.SameTagIndex.build(movies, tags, {4: 9})
    assert index.negatives(ml.Tag(1, 1, "x", 1), 3, seed=1) == [3, 4]


def test_search_records_are_one_impression_list():
    movies, index = _same_tag_index()
    records = si.search_records(ml.Tag(10, 1, "Space", 7), movies, index, num_negatives=2, seed=0)
    assert [r["label"] for r in records] == [1, 0, 0]
    assert {(r["domain"], r["user_id"], r["query_text"], r["query_id"], r["timestamp"]) for r in records} == {
        ("search_tags", "10", "Space", "space", 7)
    }
    assert records[0]["item_id"] == "1" and records[0]["item_decade"] == "1990s"


def test_build_search_index_rejects_an_unknown_construction():
    assert si.SEARCH_CONSTRUCTIONS[0] == "engine"  # the default of build_samples --search_impressions
    with pytest.raises(ValueError, match="unknown search construction 'bm25'"):
        si.build_search_index("bm25", [], [], {})


# ---------------------------------------------------------------------- search: engine construction
DAY = 24 * 3600
T = 1_104_537_600 + 180 * DAY  # 2005-06-30 (UTC), the search time
T_LATER = 1_262_304_000 + 100 * DAY  # 2010-04-11


def _engine_world():
    """Four movies; at T the engine knows two past "pirate" tags on movie 3 and one rating of movie 4.

    Movie 2 is released in 2009 (not in the 2005 catalog); movie 4 is tagged "pirate" only after T;
    movie 3 is rated only after T.
    """
    movies = [
        ml.Movie(1, "Space Pirate (1990)", ("Sci-Fi",)),
        ml.Movie(2, "Pirate Radio (2009)", ("Comedy",)),
        ml.Movie(3, "Quiet Harbour (1995)", ("Drama",)),
        ml.Movie(4, "Heist (1995)", ("Crime",)),
    ]
    tags = [
        ml.Tag(10, 3, "pirate", T - 30 * DAY),
        ml.Tag(12, 3, "Pirate", T - 10 * DAY),
        ml.Tag(11, 4, "pirate", T + 5 * DAY),  # the future at T
        ml.Tag(10, 3, "pirate", T),  # the search itself (not before T)
    ]
    rating_times = {4: [T - 200 * DAY], 3: [T + 10 * DAY]}
    return movies, tags, rating_times


def test_engine_ranks_only_what_was_known_before_the_search():
    movies, tags, rating_times = _engine_world()
    engine = si.build_search_index("engine", movies, tags, rating_times)
    assert isinstance(engine, si.SearchEngine)
    assert engine.popularity(3, T) == 0 and engine.popularity(3, T + 11 * DAY) == 1  # rated after T only
    assert engine.popularity(4, T) == 1
    # At T the catalog is {1, 3, 4} (N = 3); "pirate" matches movie 1 (title) and movie 3 (two past
    # tags; the tag applied at T itself is not before T): df = 2. Movie 4's tag is in the future: it
    # enters only as a popular movie (one rating before T), with no text score.
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    prior_one_rating = math.log(2) / math.log(11)
    expected = {3: idf * 2 * 2.2 / (2 + 1.2), 1: idf * 1 * 2.2 / (1 + 1.2), 4: prior_one_rating}
    assert engine.scores("pirate", T) == pytest.approx(expected)
    assert engine.ranked("Pirate", T) == [3, 1, 4]
    assert engine.ranked("pirate", T, exclude=[3]) == [1, 4]
    assert engine.ranked("zebra", T) == [4]  # no text match: the established movies only
    # In 2010 movie 2 is in the catalog; movie 4's tag, the search at T (movie 3's third "pirate") and
    # movie 3's rating are in the past: N = 4, df = 4.
    idf = math.log(1 + 0.5 / 4.5)
    later = engine.scores("pirate", T_LATER)
    assert later == pytest.approx(
        {3: idf * 3 * 2.2 / (3 + 1.2) + prior_one_rating, 4: idf + prior_one_rating, 1: idf, 2: idf}
    )
    assert engine.ranked("pirate", T_LATER)[:2] == [3, 4]


def test_engine_negatives_are_page_results_without_the_users_clicks():
    movies, tags, rating_times = _engine_world()
    engine = si.SearchEngine.build(movies, tags, rating_times)
    search = ml.Tag(10, 3, "pirate", T)
    assert engine.negatives(search, 5, seed=0) == [1, 4]  # the whole page, in page order
    user12 = ml.Tag(12, 1, "pirate", T)  # user 12 tagged movie 3 "pirate" before: a click, never a skip
    assert engine.negatives(user12, 5, seed=0) == [4]
    records = si.search_records(search, {m.movie_id: m for m in movies}, engine, num_negatives=1, seed=3)
    assert [(r["item_id"], r["label"]) for r in records][0] == ("3", 1)
    assert len(records) == 2 and records[1]["item_id"] in {"1", "4"}


def test_engine_impressions_decay_with_page_position():
    movies, tags, rating_times = _engine_world()
    engine = si.SearchEngine.build(movies, tags, rating_times)
    search = ml.Tag(10, 3, "pirate", T)
    picks = [engine.negatives(search, 1, seed=s)[0] for s in range(600)]
    # weights 1 and 1/2 for page positions 0 (movie 1) and 1 (movie 4): P(movie 1) = 2/3
    assert 0.6 < picks.count(1) / len(picks) < 0.73
    assert engine.negatives(search, 1, seed=7) == engine.negatives(search, 1, seed=7)


def test_engine_is_independent_of_input_order():
    movies, tags, rating_times = _engine_world()
    engine = si.SearchEngine.build(movies, tags, rating_times)
    shuffled = si.SearchEngine.build(
        movies[::-1], tags[::-1], {m: list(reversed(ts)) for m, ts in reversed(rating_times.items())}
    )
    assert shuffled == engine


def test_engine_on_real_data_is_deterministic_and_never_shows_the_click(movielens_dir):
    data = ml.read_movielens(movielens_dir)
    rating_times = collections.defaultdict(list)
    for r in data.ratings:
        rating_times[r.movie_id].append(r.timestamp)
    engine = si.SearchEngine.build(data.movies.values(), data.tags, rating_times)
    sample = data.tags[::97]
    negatives = [engine.negatives(t, 4, seed=0) for t in sample]
    assert negatives == [engine.negatives(t, 4, seed=0) for t in sample]
    for tag, shown in zip(sample, negatives, strict=True):
        assert len(set(shown)) == 4 and tag.movie_id not in shown
        search_year = datetime.datetime.fromtimestamp(tag.timestamp, tz=datetime.timezone.utc).year
        assert all((ml.release_year(data.movies[m].title) or 0) <= search_year for m in shown)


def test_user_eval_cutoff_keeps_ties_in_training():
    assert splits.user_eval_cutoff([1, 2, 3, 4, 5], 0.2) == 4
    assert splits.user_eval_cutoff([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], 0.2) == 8
    assert splits.user_eval_cutoff([3, 3, 3, 3, 3], 0.2) == 3  # all ties -> training only
    assert splits.user_eval_cutoff([1, 2, 2, 2], 0.5) == 2
    assert (
        splits.split_of(5, 4, "eval", "train") == "eval" and splits.split_of(4, 4, "eval", "train") == "train"
    )
    with pytest.raises(ValueError, match="eval_fraction"):
        splits.user_eval_cutoff([1], 1.0)
    assert splits.is_cold_item(2, 2) == 1 and splits.is_cold_item(3, 2) == 0


# ------------------------------------------------------------------------------------------ reader
def test_read_movielens_real_data(movielens_dir):
    data = ml.read_movielens(movielens_dir)
    assert (len(data.movies), len(data.ratings), len(data.tags), data.rejections) == (9742, 100836, 3683, [])


def test_read_movielens_counts_every_rejection():
    data = ml.read_movielens(DATA / "ml_corrupt")
    reasons = {(r.source, r.line): r.reason for r in data.rejections}
    assert reasons == {
        ("movies", 8): "malformed_csv",
        ("movies", 9): "wrong_column_count",
        ("movies", 10): "non_numeric_movie_id",
        ("movies", 11): "empty_title",
        ("movies", 12): "invalid_utf8",
        ("movies", 13): "duplicate_movie_id",
        ("ratings", 15): "non_numeric_rating",
        ("ratings", 16): "rating_out_of_range",
        ("ratings", 17): "unknown_movie_id",
        ("ratings", 18): "wrong_column_count",
        ("ratings", 19): "wrong_column_count",
        ("ratings", 20): "invalid_utf8",
        ("ratings", 21): "unknown_movie_id",
        ("ratings", 22): "non_numeric_user_id",
        ("ratings", 23): "blank_line",
        ("ratings", 24): "rating_out_of_range",
        ("tags", 8): "empty_tag",
        ("tags", 9): "unknown_movie_id",
        ("tags", 10): "invalid_utf8",
        ("tags", 11): "non_numeric_timestamp",
    }
    assert (len(data.movies), len(data.ratings), len(data.tags)) == (6, 13, 6)
    assert data.movies[3].title == "Heat (1995)"  # the first of a duplicated id wins


def test_ensure_movielens_missing_files(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    with pytest.raises(FileNotFoundError, match=r"missing \['ratings.csv', 'tags.csv'\]"):
        ml.ensure_movielens(tmp_path)


def test_ensure_movielens_offline_download_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TFSR_DATA_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ml.urllib.request, "urlretrieve", offline)
    with pytest.raises(RuntimeError, match="could not download https://files.grouplens.org/.*offline"):
        ml.ensure_movielens()
    with pytest.raises(FileNotFoundError, match="not cached"):
        ml.ensure_movielens(download=False)


# ------------------------------------------------------------------------------- search: the Beam job
def _write_engine_world(folder: pathlib.Path) -> None:
    movies, tags, rating_times = _engine_world()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{m.movie_id},{m.title},{'|'.join(m.genres)}\n" for m in movies)
    )
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        + "".join(f"{t.user_id},{t.movie_id},{t.tag},{t.timestamp}\n" for t in tags)
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"7,{m},4.0,{ts}\n" for m, times in rating_times.items() for ts in times)
    )


@pytest.mark.parametrize("construction", si.SEARCH_CONSTRUCTIONS)
def test_build_samples_constructs_the_chosen_search_impressions(tmp_path, construction):
    """build_samples' --search_impressions reaches read_movielens, whose Beam side-input index gives the
    same impressions as the in-memory rules."""
    args = bs._parser().parse_args(["--movielens_dir", "d", "--output_dir", "o"])
    assert args.search_impressions == "engine"
    args = bs._parser().parse_args(
        ["--movielens_dir", "d", "--output_dir", "o", "--search_impressions", construction]
    )
    assert args.search_impressions == construction

    _write_engine_world(tmp_path)
    movies, tags, rating_times = _engine_world()
    index = si.build_search_index(construction, movies, tags, rating_times)
    table = {m.movie_id: m for m in movies}
    expected = [
        (r["user_id"], r["timestamp"], r["item_id"], r["label"])
        for t in tags
        for r in si.search_records(t, table, index, num_negatives=2, seed=5)
    ]
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        branches = sources.read_movielens(
            p, str(tmp_path), FeatureSpec.default(MOVIELENS_DOMAINS), 2, 5, args.search_impressions
        )
        (search,) = [b.used for b in branches if b.source == "tags"]
        got = search | beam.FlatMap(
            lambda row: [(r["user_id"], r["timestamp"], r["item_id"], r["label"]) for r in row[1]]
        )
        assert_that(got, equal_to(expected))
    if construction == "engine":  # the search at T shows movies 1 and 4 (see the engine tests above)
        assert ("10", T, "1", 0) in expected and ("10", T, "4", 0) in expected
