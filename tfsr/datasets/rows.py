"""Row primitives shared by every input format: decoding a line, splitting CSV, text limits, the query id.

Both the MovieLens reader (:mod:`tfsr.datasets.movielens`) and the generic log format
(:mod:`tfsr.datasets.logs`) read their rows with these, so a line is decoded, split and rejected the same
way whatever its source. A row that cannot be used raises :class:`tfsr.contract.RowError`.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterator

from tfsr.contract import RowError

MAX_TEXT_CHARS = 1000  # titles, tags and queries longer than this are rejected, not truncated


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


def normalize_query(text: str) -> str:
    """Query id from query text: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without line ending) for each line of a file, streaming."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw.rstrip(b"\r\n")
