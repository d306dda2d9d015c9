"""Where MovieLens comes from: the path given, then $TFSR_DATA_HOME (or the cache), then the checked download.

The download is exercised with ``file://`` archives built here (this machine has no network): the real
CSVs zipped (checksums match), and small fake ones (checksums do not).
"""

import hashlib
import pathlib
import zipfile

from tfsr.cli import UsageError
from tfsr.datasets import movielens as ml
from tfsr.datasets.locate import find_movielens

import pytest

FILES = ("movies.csv", "ratings.csv", "tags.csv", "links.csv")


def _movielens_dir(root: pathlib.Path) -> pathlib.Path:
    root.mkdir(parents=True)
    for name in ml.REQUIRED_FILES:
        (root / name).write_text(ml.HEADERS[name.removesuffix(".csv")] + "\n")
    return root


def _archive(path: pathlib.Path, contents: dict[str, bytes], md5: str | None = None) -> str:
    """A zip of ml-latest-small/<name> files with its .md5 beside it (the archive's own MD5 unless given)."""
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in contents.items():
            zipped.writestr(f"ml-latest-small/{name}", data)
    pathlib.Path(f"{path}.md5").write_text(
        f"{md5 or hashlib.md5(path.read_bytes()).hexdigest()}  {path.name}\n"
    )
    return path.as_uri()


@pytest.fixture
def data_home(tmp_path, monkeypatch) -> pathlib.Path:
    home = tmp_path / "data_home"
    monkeypatch.setenv("TFSR_DATA_HOME", str(home))
    return home


def test_the_path_given_comes_first_and_is_never_replaced(tmp_path, data_home):
    given = _movielens_dir(tmp_path / "given")
    _movielens_dir(data_home / "ml-latest-small")
    assert find_movielens(given, "--data") == given
    with pytest.raises(UsageError) as err:
        find_movielens(tmp_path / "typo", "--data")  # the cache holds data, but the user named a directory
    assert str(err.value) == (
        f"--data {tmp_path / 'typo'}: no such directory (ml-latest-small: movies.csv, ratings.csv, tags.csv)"
    )
    (given / "tags.csv").unlink()
    with pytest.raises(
        UsageError, match=r"^--data .* is not an ml-latest-small directory: missing \['tags.csv'\]$"
    ):
        find_movielens(given, "--data")


def test_without_a_path_tfsr_data_home_is_used(data_home):
    folder = _movielens_dir(data_home / "ml-latest-small")
    assert find_movielens(None, download=False) == folder


def test_nothing_found_says_where_to_put_the_files_in_one_line(data_home):
    with pytest.raises(UsageError) as err:
        find_movielens(None, download=False)
    message = str(err.value)
    assert message == (
        f"MovieLens ml-latest-small: MovieLens is not cached at {data_home / 'ml-latest-small'}; put movies.csv, "
        f"ratings.csv and tags.csv of ml-latest-small in {data_home / 'ml-latest-small'} (with "
        "TFSR_DATA_HOME=DIR: in DIR/ml-latest-small), or pass their directory (make demo DATA=DIR; "
        "tfsr preprocess --movielens_dir DIR)"
    )
    assert "\n" not in message


def test_a_failed_download_says_what_to_do(tmp_path, data_home):
    url = (tmp_path / "absent.zip").as_uri()
    with pytest.raises(
        RuntimeError, match=rf"^could not download {url} \(.*\); if this machine is offline, put "
    ):
        ml.ensure_movielens(url=url)


def test_download_checks_and_installs_the_official_files(tmp_path, data_home, movielens_dir):
    contents = {name: (movielens_dir / name).read_bytes() for name in FILES}
    archive = tmp_path / "ml-latest-small.zip"
    folder = ml.ensure_movielens(url=_archive(archive, contents))
    assert folder == data_home / "ml-latest-small"
    assert {name: (folder / name).read_bytes() for name in FILES} == contents
    archive.unlink()  # a second lookup is served by the cache, without downloading
    assert find_movielens(None) == folder


def test_a_checksum_mismatch_installs_nothing(tmp_path, data_home):
    fake = {name: b"not the release\n" for name in FILES}
    with pytest.raises(
        RuntimeError, match=r"movies.csv has SHA-256 .* GroupLens may have published a new version"
    ):
        ml.ensure_movielens(url=_archive(tmp_path / "fake.zip", fake))
    assert not (data_home / "ml-latest-small").exists()  # the next lookup does not find unchecked files

    with pytest.raises(RuntimeError, match=r"MD5 [0-9a-f]{32} does not match the published 0{32}"):
        ml.ensure_movielens(url=_archive(tmp_path / "corrupt.zip", fake, md5="0" * 32))


def test_preprocess_without_a_source_reads_movielens_from_the_data_home(tmp_path, data_home):
    from beam_jobs import build_samples

    cached = _movielens_dir(data_home / "ml-latest-small")
    args, _ = build_samples._parser().parse_known_args(["--output_dir", str(tmp_path / "out")])
    build_samples._check_args(args)
    assert args.movielens_dir == str(cached) and args.logs is None
