"""Shared test fixtures. Selects Keras 2 before anything imports TensorFlow."""

import os
import pathlib

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfsr  # noqa: F401
from tfsr.cli import UsageError
from tfsr.datasets.locate import find_movielens

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def movielens_dir() -> pathlib.Path:
    """The real ml-latest-small: ../shared/data/ml-latest-small beside the project when it exists (CI),
    else the lookup every command uses ($TFSR_DATA_HOME or ~/.cache/tfsr, then the official download).

    Fails (never skips) with that lookup's message when the data cannot be had.
    """
    shared = SHARED / "data" / "ml-latest-small"
    try:
        return find_movielens(shared if shared.is_dir() else None, argument="../shared")
    except UsageError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    """../shared/fixtures beside the project (the MiniLM reference embeddings)."""
    path = SHARED / "fixtures"
    if not path.is_dir():
        pytest.fail(
            f"{path}: no such directory; the MiniLM parity test reads ../shared/fixtures", pytrace=False
        )
    return path
