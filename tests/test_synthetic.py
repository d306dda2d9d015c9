"""The synthetic generic-log generator: seeded, streaming, schema-valid, with learnable structure."""

import collections
import gzip
import inspect

from tfsr.datasets import synthetic
from tfsr.datasets.logs import parse_log_line
from tfsr.features import MOVIELENS_DOMAINS, FeatureSpec

import pytest

SMALL = synthetic.SyntheticConfig(num_users=300, num_items=2000, chunk_size=512)


def test_generate_is_a_seeded_stream_of_exactly_n_rows():
    stream = synthetic.generate(1000, seed=3, config=SMALL)
    assert inspect.isgenerator(stream)  # streaming: rows are produced lazily, never held in a list
    rows = list(stream)
    assert len(rows) == 1000
    assert rows == list(synthetic.generate(1000, seed=3, config=SMALL))
    assert rows != list(synthetic.generate(1000, seed=4, config=SMALL))
    assert list(synthetic.generate(0, config=SMALL)) == []


def test_rows_validate_against_the_feature_spec_and_cover_every_domain():
    spec = FeatureSpec.default()
    rows = list(synthetic.generate(5000, seed=0, config=SMALL))
    for row in rows:
        spec.validate(row, roles=("raw", "label", "meta"))
    assert {r["domain"] for r in rows} == set(MOVIELENS_DOMAINS.names)
    assert all((r["domain"] == "search_tags") == bool(r["query_text"]) for r in rows)
    timestamps = [r["timestamp"] for r in rows]
    assert timestamps == sorted(timestamps)  # events move forward in time


def test_popularity_is_power_law_with_many_cold_items():
    rows = list(synthetic.generate(20000, seed=0, config=SMALL))
    counts = collections.Counter(r["item_id"] for r in rows)
    top_share = sum(c for _, c in counts.most_common(20)) / len(rows)
    assert top_share > 0.2  # 1% of the catalogue takes a large share of impressions
    never_or_rarely = SMALL.num_items - sum(1 for c in counts.values() if c > 2)
    assert never_or_rarely > SMALL.num_items / 2  # most of the catalogue is (almost) cold


def test_text_carries_signal():
    rows = [r for r in synthetic.generate(30000, seed=0, config=SMALL) if r["domain"] == "search_tags"]
    matched = collections.Counter()
    for r in rows:
        match = any(w in r["item_title"].lower() for w in r["query_text"].split())
        matched[(match, r["label"])] += 1
    ctr_match = matched[(True, 1)] / (matched[(True, 1)] + matched[(True, 0)])
    ctr_other = matched[(False, 1)] / (matched[(False, 1)] + matched[(False, 0)])
    assert ctr_match > ctr_other + 0.1


@pytest.mark.parametrize("fmt, compress", [("jsonl", True), ("csv", False)])
def test_write_logs_round_trips_through_the_generic_parser(tmp_path, fmt, compress):
    paths = synthetic.write_logs(
        250, tmp_path, seed=1, fmt=fmt, rows_per_shard=100, compress=compress, config=SMALL
    )
    assert [p.name for p in paths] == [
        f"synthetic-0000{i}-of-00003.{fmt}" + (".gz" if compress else "") for i in range(3)
    ]
    spec = FeatureSpec.default()
    parsed = []
    for path in paths:
        data = path.read_bytes()
        lines = (gzip.decompress(data) if compress else data).splitlines()
        if fmt == "csv":
            lines = lines[1:]
        parsed += [parse_log_line(line, fmt, spec) for line in lines]
    expected = list(synthetic.generate(250, seed=1, config=SMALL))
    assert [{k: p[k] for k in expected[0]} for p in parsed] == expected


def test_main_cli(tmp_path):
    assert (
        synthetic.main(["--rows", "50", "--out", str(tmp_path), "--num_users", "10", "--num_items", "100"])
        == 0
    )
    data = (tmp_path / "synthetic-00000-of-00001.jsonl.gz").read_bytes()
    assert len(gzip.decompress(data).splitlines()) == 50


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_items must be positive, got 0"):
        synthetic.SyntheticConfig(num_items=0)
    with pytest.raises(ValueError, match="rows must be >= 0, got -1"):
        next(synthetic.generate(-1))
