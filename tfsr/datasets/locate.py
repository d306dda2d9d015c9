"""Where the MovieLens data comes from, for every command and the tests: one lookup, one message.

In order (:func:`tfsr.datasets.movielens.ensure_movielens`):

1. the directory given (``make demo DATA=DIR``, ``--data``, ``--movielens_dir``), used as is;
2. ``$TFSR_DATA_HOME/ml-latest-small``, else ``~/.cache/tfsr/ml-latest-small``;
3. the official GroupLens archive, downloaded into 2. and checked (MD5 of the archive, SHA-256 of the CSVs).

When none works (a wrong path; offline with an empty cache), :func:`find_movielens` raises
:class:`tfsr.cli.UsageError` with one line that says what to do.
"""

from __future__ import annotations

import os
import pathlib

from tfsr.cli import UsageError
from tfsr.datasets import movielens


def find_movielens(
    directory: str | os.PathLike | None = None, argument: str = "--movielens_dir", download: bool = True
) -> pathlib.Path:
    """The ml-latest-small directory to read: `directory` if given, else the cache, else the download.

    Args:
      directory: the path the user gave, or None to look in the cache and then download.
      argument: how the user gave `directory` (``--data``), named in the message.
      download: whether step 3 may run.

    Raises:
      UsageError: nothing usable; the message names the argument and what to do.
    """
    try:
        return movielens.ensure_movielens(directory, download=download)
    except (FileNotFoundError, RuntimeError) as err:
        where = f"{argument} " if directory is not None else "MovieLens ml-latest-small: "
        raise UsageError(f"{where}{err}") from err
