"""The generic search-log / rec-log format: parsing, FeatureSpec validation, reasons for bad rows; the
samples built from the same rows do not depend on the order of the logs."""

import pathlib

from tfsr import layout
from tfsr.contract import RowError
from tfsr.datasets.logs import CSV_HEADER, format_log_line, log_format, parse_log_line
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec

import numpy as np
import pytest
import tensorflow as tf

SPEC = FeatureSpec.default(MOVIELENS_DOMAINS)
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


# ------------------------------------------------------------------- log order does not change samples
DOMAINS = ("rec_action", "rec_comedy", "rec_drama", "rec_other", "rec_children", "search_tags")
KEY_FEATURES = ("domain", "user_id", "item_id", "query_text", "timestamp", "label", "is_cold_item")


def _movielens_like_rows(seed: int = 0) -> list[dict]:
    """Rating-like rec rows in five domains (rec_children cold) and tag-search impressions (one click,
    two skips sharing user, query and time); timestamps from a small range, so many rows tie."""
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Children", "Sci-Fi", "War"]

    def item(i: int) -> dict:
        year = 1950 + 7 * (i % 9)
        return {
            "item_id": str(i),
            "item_title": f"Movie {i}, The ({year})",
            "item_genres": [genres[i % 6], genres[(i * 7) % 6]],
            "item_decade": f"{year // 10 * 10}s",
        }

    rows = []
    for _ in range(2000):
        user, ts = f"u{rng.integers(40)}", int(1_000_000 + rng.integers(600))
        domain = DOMAINS[int(rng.integers(len(DOMAINS)))]
        if domain == "search_tags":
            query = f"tag {rng.integers(30)}"
            for n, i in enumerate(rng.choice(80, size=3, replace=False)):
                rows.append(
                    {
                        "domain": domain,
                        "user_id": user,
                        "query_text": query,
                        **item(int(i)),
                        "label": int(n == 0),
                        "timestamp": ts,
                    }
                )
        else:
            rows.append(
                {
                    "domain": domain,
                    "user_id": user,
                    "query_text": "",
                    **item(int(rng.integers(80))),
                    "label": int(rng.random() < 0.4),
                    "timestamp": ts,
                }
            )
    return rows


def _write_logs(directory, rows, by_domain: bool, fmt: str):
    """Domain-sorted (one file per domain, in time order, as services write them) or shuffled logs."""
    directory.mkdir()
    files = {}
    for n, row in enumerate(rows):
        name = row["domain"] if by_domain else f"part{n % 3}"
        files.setdefault(name, []).append(row)
    for name, part in files.items():
        if by_domain:
            part.sort(key=lambda r: r["timestamp"])
        lines = [format_log_line(r, fmt) for r in part]
        header = [CSV_HEADER] if fmt == "csv" else []
        (directory / f"{name}.{fmt}").write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    return str(directory / f"*.{fmt}")


def _file_rows(out, path) -> list[tuple]:
    """The rows of one shard in file order, as tuples of KEY_FEATURES (what samples of either
    --text_features mode carry)."""
    parse_spec = layout.read_feature_spec(out).parse_spec(roles=("raw", "label", "meta"))
    parse_spec = {f: parse_spec[f] for f in KEY_FEATURES}
    rows = []
    records = tf.data.TFRecordDataset(str(path), compression_type="GZIP").batch(512)
    for batch in records.map(lambda s: tf.io.parse_example(s, parse_spec)):
        columns = [batch[f].numpy() for f in KEY_FEATURES]
        rows += [
            tuple(c[i].decode() if isinstance(c[i], bytes) else int(c[i]) for c in columns)
            for i in range(len(columns[0]))
        ]
    return rows


def _split_rows(out, split: str) -> list[tuple]:
    """The rows of a split, shard after shard."""
    return [row for path in sorted(pathlib.Path(out, split).glob("part-*")) for row in _file_rows(out, path)]


@pytest.mark.slow  # four small Beam runs (~1 min)
@pytest.mark.parametrize("split_mode", ["per_user", "global"])
def test_same_splits_from_domain_sorted_and_shuffled_logs(tmp_path, split_mode):
    from beam_jobs import build_samples

    rows = _movielens_like_rows()
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    built = {}
    for name, pattern in [
        ("sorted", _write_logs(tmp_path / "sorted_logs", rows, by_domain=True, fmt="jsonl")),
        ("shuffled", _write_logs(tmp_path / "shuffled_logs", shuffled, by_domain=False, fmt="csv")),
    ]:
        out = tmp_path / name
        argv = [
            "--logs",
            pattern,
            "--output_dir",
            str(out),
            "--text_encoder",
            "tiny",
            "--split_mode",
            split_mode,
            "--coldstart_finetune_rows",
            "60",
            "--coldstart_valid_rows",
            "20",
        ]
        assert build_samples.run(argv, save_main_session=False) == 0
        built[name] = out

    manifests = {name: layout.read_manifest(out) for name, out in built.items()}
    for key in ("counts", "split_cutoffs", "shards"):
        assert manifests["sorted"][key] == manifests["shuffled"][key], key
    cold = manifests["sorted"]["split_cutoffs"]["coldstart"]
    assert cold["finetune_start"] <= cold["valid_start"] <= cold["eval_cutoff"]
    assert manifests["sorted"]["shards"]["pretrain_train"] >= 2
    splits = {name: {s: _split_rows(out, s) for s in layout.SPLITS} for name, out in built.items()}
    for split in layout.SPLITS:
        assert splits["sorted"][split], split  # every split has rows
        # the same rows in every split, and in the same (key) order: the files do not depend on log order
        assert splits["sorted"][split] == splits["shuffled"][split], split
    assert (
        len(splits["sorted"]["coldstart_valid"]) == 20 and len(splits["sorted"]["coldstart_finetune"]) == 60
    )

    # every shard mixes the domains: a domain-sorted file order would change domain a handful of times
    for path in sorted((built["sorted"] / layout.PRETRAIN_TRAIN).glob("part-*")):
        domains = [r[0] for r in _file_rows(built["sorted"], path)]
        assert set(domains[:100]) >= set(DOMAINS) - {"rec_children"}
        changes = sum(a != b for a, b in zip(domains, domains[1:], strict=False))
        assert changes > len(domains) / 2
