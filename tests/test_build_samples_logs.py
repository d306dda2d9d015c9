"""The generic search-log / rec-log format: parsing, FeatureSpec validation, reasons for bad rows."""

from tfsr.datasets import RowError
from tfsr.datasets.logs import CSV_HEADER, format_log_line, log_format, parse_log_line
from tfsr.features import FeatureSpec

import pytest

SPEC = FeatureSpec.default()
SEARCH = {
    "domain": "search_tags",
    "user_id": "u1",
    "query_text": " Space  Movie",
    "item_id": "i1",
    "item_title": 'Star "Galaxy", The (1990)',
    "item_genres": ["Sci-Fi", "Action"],
    "item_decade": "1990s",
    "label": 1,
    "timestamp": 100,
}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_round_trip_and_derived_query_id(fmt):
    line = format_log_line(SEARCH, fmt)
    record = parse_log_line(line.encode("utf-8"), fmt, SPEC)
    assert {k: record[k] for k in SEARCH} == SEARCH
    assert record["query_id"] == "space movie"
    assert record["is_cold_item"] == 0  # meta default from the FeatureSpec


def test_csv_header_and_optional_columns():
    assert CSV_HEADER.split(",") == [
        "domain",
        "user_id",
        "query_text",
        "item_id",
        "item_title",
        "item_genres",
        "item_decade",
        "label",
        "timestamp",
    ]
    record = parse_log_line(b'{"domain":"rec_drama","user_id":"u","item_id":"i","label":0}', "jsonl", SPEC)
    assert (record["item_title"], record["item_genres"], record["query_id"], record["timestamp"]) == (
        "",
        [],
        "",
        0,
    )


@pytest.mark.parametrize(
    "line, fmt, reason, detail",
    [
        (b'{"domain":"rec_drama"', "jsonl", "malformed_json", "column"),
        (b"[1, 2]", "jsonl", "malformed_json", "JSON object"),
        (
            b'{"domain":"rec_nope","user_id":"u","item_id":"i","label":1}',
            "jsonl",
            "invalid_domain",
            "rec_nope",
        ),
        (b'{"domain":"rec_drama","user_id":"u","item_id":"i","label":2}', "jsonl", "invalid_label", "0 or 1"),
        (b'{"domain":"rec_drama","item_id":"i","label":1}', "jsonl", "invalid_user_id", "missing"),
        (b'{"domain":"rec_drama","user_id":7,"item_id":"i","label":1}', "jsonl", "invalid_user_id", "string"),
        (
            b'{"domain":"search_tags","user_id":"u","item_id":"i","label":1}',
            "jsonl",
            "missing_query",
            "query_text",
        ),
        (
            b'{"domain":"rec_drama","user_id":"u","query_text":"q","item_id":"i","label":1}',
            "jsonl",
            "unexpected_query",
            "rec_drama",
        ),
        (
            b'{"domain":"rec_drama","user_id":"u","item_id":"i","label":1,"timestamp":"soon"}',
            "jsonl",
            "invalid_timestamp",
            "integer",
        ),
        (
            b'{"domain":"rec_drama","user_id":"u\xff","item_id":"i","label":1}',
            "jsonl",
            "invalid_utf8",
            "byte",
        ),
        (
            b'{"domain":"rec_drama","user_id":"u","item_id":"i","label":1,"price":3}',
            "jsonl",
            "unknown_column",
            "price",
        ),
        (
            b'{"domain":"rec_drama","user_id":"u","item_id":"i","label":1,"item_title":"'
            + b"t" * 2000
            + b'"}',
            "jsonl",
            "item_title_too_long",
            "2000",
        ),
        (b"rec_drama,u1,,i3,War (1960),War|Drama,1960s,yes,200", "csv", "invalid_label", "yes"),
        (b"rec_drama,u1,,i3,War (1960),War|Drama,1960s,1", "csv", "wrong_column_count", "got 8"),
        (b'rec_drama,u1,,i3,"War (1960),War|Drama,1960s,1,200', "csv", "malformed_csv", "end of data"),
    ],
)
def test_bad_rows_raise_row_error_with_reason(line, fmt, reason, detail):
    with pytest.raises(RowError) as err:
        parse_log_line(line, fmt, SPEC)
    assert err.value.reason == reason
    assert detail in err.value.detail


def test_log_format_from_file_name():
    assert [log_format(p) for p in ("a.jsonl", "b.JSON.gz", "gs://x/c.csv.gz")] == ["jsonl", "jsonl", "csv"]
    with pytest.raises(ValueError, match="cannot tell the log format of 'logs.txt'"):
        log_format("logs.txt")
