"""Reading input files row by row for the Beam jobs: numbered lines, checked decompression, dead letters.

Shared by ``build_samples`` and ``batch_score`` so both account for every input row the same way
(docs/RELIABILITY.md §2): each row keeps its file and line number (a :class:`LineRef`) for dead letters,
rows are read as bytes (invalid UTF-8 is a dead letter, not a crash), and a compressed file that ends
early is one ``truncated_input`` dead letter naming the file and its last good line, never a silent end
of file. Beam's own ``CompressedFile`` returns a truncated gzip stream's data as if the file ended there,
so the rows after the cut would be in no count.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

DEAD = "dead"
FILTERED = "filtered"
RAW_SNIPPET_CHARS = 200
PROGRESS_EVERY = 100_000
TRUNCATED_INPUT = "truncated_input"
# what a damaged compressed stream raises when read: a missing end-of-stream marker (EOFError), a bad
# header (gzip.BadGzipFile, an OSError) or corrupt deflate data (zlib.error)
READ_ERRORS = (EOFError, OSError, zlib.error)


class LineRef(NamedTuple):
    """Where an input row came from, carried with it until it becomes samples (for dead letters)."""

    source: str
    path: str
    line: int
    raw: str


def snippet(raw: bytes) -> str:
    """The first characters of a raw row, for a dead letter (bytes that are not UTF-8 escaped)."""
    return raw[:RAW_SNIPPET_CHARS].decode("utf-8", errors="backslashreplace")


def dead_letter(ref: LineRef, reason: str, detail: str) -> dict:
    """The dead-letter record of one unusable input row."""
    return {
        "source": ref.source,
        "file": ref.path,
        "line": ref.line,
        "reason": reason,
        "detail": detail,
        "raw": ref.raw,
    }


def truncated_input(source: str, path: str, last_good: int, err: BaseException, unit: str = "line") -> dict:
    """The dead letter of a file that cannot be read past its row `last_good` (counted as row last_good+1).

    The jobs fail when they hold one (rows after the cut are lost and nothing downstream could count them).
    """
    detail = (
        f"{path}: cannot read past {unit} {last_good} (the last good {unit}): {type(err).__name__}: {err}"
    )
    logger.error("truncated or unreadable input: %s", detail)
    return dead_letter(LineRef(source, path, last_good + 1, ""), TRUNCATED_INPUT, detail)


# Python's own decompressing readers, which raise EOFError at a missing end-of-stream marker.
_DECOMPRESSORS = {
    CompressionTypes.GZIP: lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    CompressionTypes.BZIP2: bz2.BZ2File,
}


@contextlib.contextmanager
def open_checked(path: str) -> Iterator[Any]:
    """`path` opened for reading bytes (compression from the name: .gz, .bz2); a gzip / bzip2 file that
    ends early raises EOFError when read, instead of looking like a shorter file."""
    opener = _DECOMPRESSORS.get(CompressionTypes.detect_compression_type(path))
    if opener is None:
        with FileSystems.open(path) as handle:
            yield handle
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw, opener(raw) as handle:
        yield handle


def numbered_lines(path: str, source: str, header: str | None, rows_read: Any = None) -> Iterator[Any]:
    """One file's lines as (LineRef, raw bytes without the line ending), for a DoFn to ``yield from``.

    A first line equal to `header` and blank lines go to the FILTERED output as (LineRef, reason); a file
    that breaks or ends early yields one ``truncated_input`` dead letter (DEAD output) after its last good
    line, so every line read, the broken one included, is in exactly one output. `rows_read` (a Beam
    counter) is incremented once per entry.
    """
    number = 0
    try:
        with open_checked(path) as handle:
            for number, raw in enumerate(iter(handle.readline, b""), start=1):
                raw = raw.rstrip(b"\r\n")
                ref = LineRef(source, path, number, snippet(raw))
                if rows_read is not None:
                    rows_read.inc()
                if number % PROGRESS_EVERY == 0:
                    logger.info("%s: %d lines read", path, number)
                if number == 1 and header is not None and raw.strip() == header.encode("utf-8"):
                    yield beam.pvalue.TaggedOutput(FILTERED, (ref, "header"))
                elif not raw.strip():
                    yield beam.pvalue.TaggedOutput(FILTERED, (ref, "blank_line"))
                else:
                    yield ref, raw
    except READ_ERRORS as err:
        if rows_read is not None:
            rows_read.inc()
        yield beam.pvalue.TaggedOutput(DEAD, truncated_input(source, path, number, err))
