"""The generic search-log / rec-log format: how a team brings its own logs to ``tfsr preprocess``.

One row per impression (shown item), JSONL or CSV, columns documented in ``docs/BEAM.md``:

=============  ======  ==================================================================
column         type    meaning
=============  ======  ==================================================================
domain         string  a domain of the registry (search domains need a query)
user_id        string  user identifier
query_text     string  the query as typed; empty for recommendation domains
item_id        string  item identifier
item_title     string  item title (text aspect)
item_genres    list    item categories; a JSON list, or '|'-joined in CSV
item_decade    string  sparse item bucket, e.g. '1990s'; may be empty
label          int     1 = clicked, 0 = shown but not clicked
timestamp      int     event time, seconds since the epoch
=============  ======  ==================================================================

The columns are derived from the feature specification (:func:`log_columns`): every raw, label and meta
feature except those computed from others (:data:`COMPUTED`). ``query_id`` is derived
(:func:`tfsr.datasets.rows.normalize_query`), never read. Every row is validated against the
:class:`~tfsr.features.FeatureSpec`; a bad row raises :class:`~tfsr.contract.RowError` whose reason
names the field, so it becomes a dead letter.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tfsr.contract import RowError
from tfsr.datasets.rows import MAX_TEXT_CHARS, decode_line, normalize_query, split_csv_line
from tfsr.features import RECORD_ROLES, Feature, FeatureSpec, default_features

# Sample features a log does not carry: they are computed from the others.
COMPUTED = {
    "query_id": "normalised from query_text (tfsr.datasets.rows.normalize_query)",
    "is_cold_item": "set by build_samples from the item's training samples",
}


def log_columns(features: Sequence[Feature]) -> tuple[Feature, ...]:
    """The columns of the generic log format, in spec order: the raw, label and meta features not
    :data:`COMPUTED`."""
    return tuple(f for f in features if f.role in RECORD_ROLES and f.name not in COMPUTED)


_COLUMN_FEATURES = log_columns(default_features())
COLUMNS = tuple(f.name for f in _COLUMN_FEATURES)
CSV_HEADER = ",".join(COLUMNS)
FORMATS = ("jsonl", "csv")
_INT_COLUMNS = tuple(f.name for f in _COLUMN_FEATURES if f.dtype == "int64")
_TEXT_COLUMNS = tuple(f.name for f in _COLUMN_FEATURES if f.aspect == "text")
_LIST_COLUMNS = tuple(f.name for f in _COLUMN_FEATURES if f.varlen)
MAX_INT_DIGITS = 20  # int64 has at most 19 digits; longer literals are rejected unconverted
_CSV_INT = re.compile(f"-?[0-9]{{1,{MAX_INT_DIGITS}}}")


def log_format(path: str) -> str:
    """'jsonl' or 'csv' from a file name (``.jsonl``, ``.json``, ``.csv``, optionally ``.gz`` / ``.bz2``)."""
    name = path.lower().removesuffix(".gz").removesuffix(".bz2")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise ValueError(
        f"cannot tell the log format of {path!r}: name it *.jsonl or *.csv (optionally .gz or .bz2)"
    )


def _json_int(digits: str) -> int:
    """json.loads' integer hook: an integer literal longer than any int64 is refused before conversion.

    Python refuses to convert integer strings of over 4,300 digits (a ValueError that is no
    JSONDecodeError) and converting long ones costs quadratic time, so a hostile row could crash or stall
    the job.
    """
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise RowError(
            "number_too_long", f"an integer of {len(digits)} characters (max {MAX_INT_DIGITS} digits)"
        )
    return int(digits)


def _from_jsonl(raw: bytes | str) -> dict[str, Any]:
    line = decode_line(raw)
    try:
        record = json.loads(line, parse_int=_json_int)
    except json.JSONDecodeError as err:
        raise RowError("malformed_json", f"{err.msg} at column {err.colno}") from None
    except RecursionError:
        raise RowError("malformed_json", "JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise RowError("malformed_json", f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(COLUMNS))
    if unknown:
        raise RowError("unknown_column", f"unknown columns {unknown[:5]}; known: {list(COLUMNS)}")
    return record


def _from_csv(raw: bytes | str) -> dict[str, Any]:
    record: dict[str, Any] = dict(zip(COLUMNS, split_csv_line(raw, len(COLUMNS)), strict=True))
    for name in _INT_COLUMNS:
        if record[name] == "":
            del record[name]  # absent: parse_log_line's validation requires or defaults it
            continue
        # the spellings JSON accepts for an integer: ASCII digits, an optional '-' (no spaces, '+', '1.0',
        # fullwidth digits or '_', all of which Python's int() would take)
        if not _CSV_INT.fullmatch(record[name]):
            raise RowError(f"invalid_{name}", f"{name} {record[name][:40]!r} is not an integer")
        record[name] = int(record[name])
    for name in _LIST_COLUMNS:
        record[name] = [g for g in record[name].split("|") if g]
    return record


def read_log_fields(raw: bytes | str, fmt: str) -> dict[str, Any]:
    """One generic-format line's columns, not yet validated against a spec (`parse_log_line` validates;
    batch retrieval reads contexts, whose item columns may be absent).

    Raises:
      RowError: a malformed line (``malformed_json``, a CSV line with the wrong number of columns, ...).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return _from_jsonl(raw) if fmt == "jsonl" else _from_csv(raw)


def parse_log_line(
    raw: bytes | str, fmt: str, spec: FeatureSpec, require_label: bool = True
) -> dict[str, Any]:
    """One generic-format line as a validated sample record (raw, label and meta features).

    `require_label=False` is for scoring: `label` may then be absent (CSV: empty).

    Raises:
      RowError: malformed line, unknown column, text too long, a query missing in a search domain
        (or present in a rec domain), or any FeatureSpec violation (reason ``invalid_<field>``).
    """
    record = read_log_fields(raw, fmt)
    for name in _TEXT_COLUMNS:
        value = record.get(name)
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise RowError(f"{name}_too_long", f"{name} has {len(value)} characters (max {MAX_TEXT_CHARS})")
    roles = RECORD_ROLES if require_label or record.get("label") is not None else ("raw", "meta")
    values = spec.validate(record, roles=roles)
    values["query_id"] = normalize_query(values["query_text"])
    is_search = spec.domains[values["domain"]].kind == "search"
    if is_search and not values["query_id"]:
        raise RowError("missing_query", f"search domain {values['domain']!r} needs a non-empty query_text")
    if not is_search and values["query_text"]:
        raise RowError("unexpected_query", f"rec domain {values['domain']!r} rows must have no query_text")
    return values


def format_log_line(record: Mapping[str, Any], fmt: str) -> str:
    """One record as a generic-format line (no line ending); the inverse of :func:`parse_log_line`."""
    row = {name: record.get(name, "") for name in COLUMNS}
    if fmt == "jsonl":
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    if fmt == "csv":
        for name in _LIST_COLUMNS:
            row[name] = "|".join(row[name])
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow([row[name] for name in COLUMNS])
        return buffer.getvalue()
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
