"""MovieLens reader, row parsers (bad input) and the pure mapping rules of tfsr.datasets.movielens."""

import pathlib
import urllib.error

from tfsr.datasets import movielens as ml
from tfsr.features import MOVIELENS_DOMAINS

import pytest

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
    with pytest.raises(ml.RowError) as err:
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
    with pytest.raises(ml.RowError) as err:
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
    with pytest.raises(ml.RowError) as err:
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
    assert ml.text_tokens("The Sci-Fi of it") == ["sci"]


def _index():
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
    popularity = {5: 100, 4: 50, 2: 10, 1: 5, 3: 3, 6: 1}
    return {m.movie_id: m for m in movies}, ml.SearchIndex.build(movies, tags, popularity)


def test_search_negatives_prefer_retrieved_movies_and_exclude_the_click():
    movies, index = _index()
    tag = ml.Tag(10, 1, "space", 1)
    first = index.negatives(tag, 1, seed=0)
    assert first == [3]  # the other movie tagged "space" (tier 1)
    two = index.negatives(tag, 2, seed=0)
    assert two[0] == 3 and two[1] == 4  # then the movie tagged "space opera" (similar tag, tier 2)
    many = index.negatives(tag, 5, seed=0)
    assert 1 not in many and len(many) == len(set(many)) == 5
    assert 6 in many[:3]  # "Dark Space" matches the query text (tier 3) before popularity fills up
    assert index.negatives(tag, 5, seed=0) == many  # seeded, reproducible


def test_search_negatives_exclude_movies_the_user_tagged_with_the_same_query():
    movies = [ml.Movie(i, f"M{i}", ()) for i in range(1, 5)]
    tags = [ml.Tag(1, 1, "x", 1), ml.Tag(1, 2, "x", 1), ml.Tag(2, 3, "x", 1)]
    index = ml.SearchIndex.build(movies, tags, {4: 9})
    assert index.negatives(ml.Tag(1, 1, "x", 1), 3, seed=1) == [3, 4]


def test_search_records_are_one_impression_list():
    movies, index = _index()
    records = ml.search_records(ml.Tag(10, 1, "Space", 7), movies, index, num_negatives=2, seed=0)
    assert [r["label"] for r in records] == [1, 0, 0]
    assert {(r["domain"], r["user_id"], r["query_text"], r["query_id"], r["timestamp"]) for r in records} == {
        ("search_tags", "10", "Space", "space", 7)
    }
    assert records[0]["item_id"] == "1" and records[0]["item_decade"] == "1990s"


def test_user_eval_cutoff_keeps_ties_in_training():
    assert ml.user_eval_cutoff([1, 2, 3, 4, 5], 0.2) == 4
    assert ml.user_eval_cutoff([5, 1, 4, 2, 3, 6, 7, 8, 9, 10], 0.2) == 8
    assert ml.user_eval_cutoff([3, 3, 3, 3, 3], 0.2) == 3  # all ties -> training only
    assert ml.user_eval_cutoff([1, 2, 2, 2], 0.5) == 2
    assert ml.split_of(5, 4, "eval", "train") == "eval" and ml.split_of(4, 4, "eval", "train") == "train"
    with pytest.raises(ValueError, match="eval_fraction"):
        ml.user_eval_cutoff([1], 1.0)
    assert ml.is_cold_item(2, 2) == 1 and ml.is_cold_item(3, 2) == 0


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
