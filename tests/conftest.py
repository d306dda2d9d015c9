"""Shared test fixtures. Selects Keras 2 before anything imports TensorFlow."""

import os
import pathlib

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfsr  # noqa: F401

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def movielens_dir() -> pathlib.Path:
    """The real ml-latest-small directory shared beside the project."""
    path = SHARED / "data" / "ml-latest-small"
    if not (path / "ratings.csv").exists():
        pytest.fail(f"MovieLens data not found at {path}; the tests expect ../shared beside the repo")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return SHARED / "fixtures"
