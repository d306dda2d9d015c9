"""The synthetic generators: the generic-log generator (seeded, streaming, schema-valid, with learnable
structure) and `tfsr.data.synthetic_records` with planted, domain-dependent aspect informativeness."""

import collections
import gzip
import hashlib
import inspect
import json

from tfsr import data as samples
from tfsr.datasets import synthetic
from tfsr.datasets.logs import parse_log_line
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.evaluation import auc
from tfsr.features import FeatureSpec

import numpy as np
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
    spec = FeatureSpec.default(MOVIELENS_DOMAINS)
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
    spec = FeatureSpec.default(MOVIELENS_DOMAINS)
    parsed = []
    for path in paths:
        data = path.read_bytes()
        lines = (gzip.decompress(data) if compress else data).splitlines()
        if fmt == "csv":
            lines = lines[1:]
        parsed += [parse_log_line(line, fmt, spec) for line in lines]
    expected = list(synthetic.generate(250, seed=1, config=SMALL))
    assert [{k: p[k] for k in expected[0]} for p in parsed] == expected


def test_catalogue_scale_options_give_about_one_distinct_text_per_row():
    # every event a one-impression search over a uniform catalogue: text features at a search engine's scale
    config = synthetic.SyntheticConfig(
        num_users=300,
        num_items=2000,
        chunk_size=512,
        search_fraction=1.0,
        impressions_per_search=1,
        popularity_exponent=0.0,
        query_tail=10**7,
    )
    rows = list(synthetic.generate(3000, seed=0, config=config))
    assert len({r["query_text"] for r in rows}) >= 2990  # ~3000 draws from 10^7 tail tokens x topic words
    # 3000 uniform draws over 2000 titles: 2000 * (1 - e^-1.5) = 1554 distinct expected
    assert 1450 < len({r["item_title"] for r in rows}) < 1650
    stems = [r["query_text"].rsplit(" q", 1) for r in rows]
    assert all(len(parts) == 2 and parts[1].isdigit() for parts in stems)
    # the topic words still carry the click signal
    match = [
        any(w in r["item_title"].lower() for w in stem.split())
        for r, (stem, _) in zip(rows, stems, strict=True)
    ]
    labels = np.array([r["label"] for r in rows])
    assert labels[np.array(match)].mean() > labels[~np.array(match)].mean()
    with pytest.raises(ValueError, match="query_tail and popularity_exponent must be >= 0"):
        synthetic.SyntheticConfig(query_tail=-1)


def test_main_cli(tmp_path):
    assert (
        synthetic.main(["--rows", "50", "--out", str(tmp_path), "--num_users", "10", "--num_items", "100"])
        == 0
    )
    data = (tmp_path / "synthetic-00000-of-00001.jsonl.gz").read_bytes()
    assert len(gzip.decompress(data).splitlines()) == 50
    args = ["--rows", "40", "--out", str(tmp_path / "tail"), "--num_users", "10", "--num_items", "100"]
    args += ["--search_fraction", "1", "--impressions_per_search", "1", "--query_tail", "1000000"]
    assert synthetic.main([*args, "--popularity_exponent", "0"]) == 0
    lines = gzip.decompress(
        (tmp_path / "tail" / "synthetic-00000-of-00001.jsonl.gz").read_bytes()
    ).splitlines()
    assert len({json.loads(line)["query_text"] for line in lines}) == 40


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_items must be positive, got 0"):
        synthetic.SyntheticConfig(num_items=0)
    with pytest.raises(ValueError, match="rows must be >= 0, got -1"):
        next(synthetic.generate(-1))


# ------------------------------------------------------------------ planted aspect informativeness
SPEC8 = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=8)
PLANTED = samples.PLANTED_ASPECTS


def _digest(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def test_default_synthetic_records_are_unchanged():
    """Without `aspect_signal` the records are those from before planting existed (digests taken then),
    so the tests and benchmarks built on them keep their numbers."""
    assert _digest(list(samples.synthetic_records(SPEC8, 200, seed=3))) == (
        "033654bdfb58cffa285cba6c397b0ac7734e9e4fde7cc8cbe477365fcb66a864"
    )
    small = {"num_users": 15, "num_items": 30, "num_queries": 10}
    assert _digest(list(samples.synthetic_records(SPEC8, 200, seed=3, draw_seed=2, **small))) == (
        "7559a8bea1f4b35e7f7a98fab4f958966142afc18709b6c6ae34113310573aaa"
    )


def test_planted_records_are_seeded_and_valid():
    rows = list(samples.synthetic_records(SPEC8, 300, seed=1, aspect_signal=PLANTED))
    assert rows == list(samples.synthetic_records(SPEC8, 300, seed=1, aspect_signal=PLANTED))
    assert rows != list(samples.synthetic_records(SPEC8, 300, seed=2, aspect_signal=PLANTED))
    for row in rows:
        SPEC8.validate(row)
    assert {r["domain"] for r in rows} == set(PLANTED)
    for row in rows:  # ids are the world's only where the id aspect is the informative one
        assert ("fresh" not in row["item_id"]) == (PLANTED[row["domain"]] == "id")


def _target_encoding(keys_fit, labels_fit, keys_eval, prior_weight=5.0):
    """Smoothed per-key click rate learnt on the fit rows; unseen keys get the overall rate."""
    prior = labels_fit.mean()
    sums, counts = collections.Counter(), collections.Counter()
    for key, label in zip(keys_fit, labels_fit, strict=True):
        sums[key] += label
        counts[key] += 1
    return np.array([(sums[k] + prior * prior_weight) / (counts[k] + prior_weight) for k in keys_eval])


def _aspect_aucs(rows) -> dict[str, float]:
    """Held-out AUC of a one-aspect model of the item (and query), fit on the first half of `rows`:
    id and sparse by target encoding, text by least squares on the embeddings."""
    labels = np.array([r["label"] for r in rows], dtype=float)
    half = len(rows) // 2
    keys = {
        "id": [(r["item_id"], r.get("query_id", "")) for r in rows],
        "sparse": [(*sorted(r["item_genres"]), r["item_decade"]) for r in rows],
    }
    scores = {a: _target_encoding(k[:half], labels[:half], k[half:]) for a, k in keys.items()}
    text = np.array([[*r["item_title_embedding"], *r["query_text_embedding"], 1.0] for r in rows])
    beta = np.linalg.lstsq(text[:half], labels[:half], rcond=None)[0]
    scores["text"] = text[half:] @ beta
    return {a: auc(labels[half:], s) for a, s in scores.items()}


def test_planted_aspect_alone_predicts_clicks_and_the_others_do_not():
    rows = list(
        samples.synthetic_records(SPEC8, 24_000, seed=0, num_users=100, num_items=200, aspect_signal=PLANTED)
    )
    for domain, planted in PLANTED.items():
        aucs = _aspect_aucs([r for r in rows if r["domain"] == domain])
        assert aucs[planted] > 0.62, (domain, aucs)
        for aspect, value in aucs.items():
            if aspect != planted:
                assert abs(value - 0.5) < 0.04, (domain, aucs)


def test_default_records_have_no_planting():
    """The contrast: by default ids, text and genres all follow the item, so every aspect is informative."""
    rows = list(samples.synthetic_records(SPEC8, 12_000, seed=0, num_users=100, num_items=200))
    aucs = _aspect_aucs([r for r in rows if r["domain"] == "search_tags"])
    assert min(aucs.values()) > 0.55, aucs


@pytest.mark.parametrize(
    "signal, message",
    [
        ({"rec_action": "id"}, "must name exactly the domains"),
        ({**PLANTED, "rec_action": "query"}, "must be 'id', 'text' or 'sparse', got 'query'"),
        ({**PLANTED, "search_tags": "sparse"}, "is for rec domains"),
    ],
)
def test_bad_aspect_signal_is_named(signal, message):
    with pytest.raises(ValueError, match=message):
        next(samples.synthetic_records(SPEC8, 1, aspect_signal=signal))
