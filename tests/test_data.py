"""tfsr.data: parsing, determinism, domain filters and sampling weights, failing fast on bad records."""

import collections

from tfsr import data, layout
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec

import numpy as np
import pytest
import tensorflow as tf

SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=4)


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    data.write_synthetic_samples(root / layout.PRETRAIN_TRAIN, SPEC, 300, seed=0, num_shards=3)
    return root


def _ids(dataset):
    return [v.decode() for batch in dataset for v in batch["user_id"].numpy()]


def test_batches_follow_the_spec(samples_dir):
    batch = next(iter(data.make_dataset((samples_dir, layout.PRETRAIN_TRAIN), SPEC, batch_size=16)))
    assert batch["domain"].shape == (16,) and batch["label"].dtype == tf.int64
    assert batch["item_title_embedding"].shape == (16, 4)
    assert isinstance(batch["item_genres"], tf.RaggedTensor)
    total = sum(
        int(b["label"].shape[0])
        for b in data.make_dataset(
            layout.split_pattern(samples_dir, layout.PRETRAIN_TRAIN), SPEC, batch_size=64
        )
    )
    assert total == 300
    unlabelled = next(iter(data.make_dataset((samples_dir, layout.PRETRAIN_TRAIN), SPEC, 8, drop_label=True)))
    assert "label" not in unlabelled


def test_deterministic_under_a_seed(samples_dir):
    files = (samples_dir, layout.PRETRAIN_TRAIN)
    first = _ids(data.make_dataset(files, SPEC, 32, seed=3))
    assert first == _ids(data.make_dataset(files, SPEC, 32, seed=3))
    assert first != _ids(data.make_dataset(files, SPEC, 32, seed=4))
    assert sorted(first) == sorted(_ids(data.make_dataset(files, SPEC, 32, shuffle=False)))


def test_domain_filter(samples_dir):
    dataset = data.make_dataset(
        (samples_dir, layout.PRETRAIN_TRAIN), SPEC, 64, domains=["rec_drama", "rec_action"]
    )
    domains = {v.decode() for b in dataset for v in b["domain"].numpy()}
    assert domains == {"rec_drama", "rec_action"}


def test_domain_sampling_weights(samples_dir):
    dataset = data.make_dataset(
        (samples_dir, layout.PRETRAIN_TRAIN),
        SPEC,
        100,
        repeat=True,
        seed=1,
        domain_weights={"search_tags": 3.0, "rec_comedy": 1.0},
    )
    counts = collections.Counter(v.decode() for b in dataset.take(20) for v in b["domain"].numpy())
    assert set(counts) == {"search_tags", "rec_comedy"}
    assert counts["search_tags"] / 2000 == pytest.approx(0.75, abs=0.04)


def test_bad_records_fail_fast_naming_the_feature(tmp_path):
    other = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=3)  # the embeddings are one value short
    pattern = data.write_synthetic_samples(tmp_path / "bad", other, 5, num_shards=1)
    with pytest.raises(ValueError, match="item_title_embedding|query_text_embedding"):
        data.make_dataset(pattern, SPEC, 4)
    path = tmp_path / "missing.tfrecord.gz"
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        example = SPEC.to_example(next(data.synthetic_records(SPEC, 1)))
        del example.features.feature["user_id"]
        writer.write(example.SerializeToString())
    with pytest.raises(ValueError, match="user_id"):
        data.make_dataset(str(path), SPEC, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"domains": ["nope"]}, ValueError, "unknown domain 'nope'"),
        ({"domain_weights": {"rec_drama": 0.0}}, ValueError, "positive weights"),
        ({"domains": ["rec_drama"], "domain_weights": {"rec_drama": 1.0}}, ValueError, "not both"),
    ],
)
def test_bad_arguments(samples_dir, kwargs, error, message):
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(error, match=message):
        data.make_dataset((samples_dir, layout.PRETRAIN_TRAIN), SPEC, **kwargs)


def test_no_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        data.make_dataset(str(tmp_path / "*.tfrecord.gz"), SPEC, 4)


def test_synthetic_records_are_valid_and_seeded():
    a = list(data.synthetic_records(SPEC, 20, seed=5))
    assert a == list(data.synthetic_records(SPEC, 20, seed=5))
    for record in a:
        SPEC.validate(record)
    assert 0 < np.mean([r["label"] for r in a]) < 1


def test_rows_interleave_one_at_a_time_across_shards(tmp_path):
    """Single-domain files (what domain-sorted logs used to give) still make mixed batches."""
    records = list(data.synthetic_records(SPEC, 200, seed=2))
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for name in ("rec_drama", "search_tags"):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{name}.tfrecord.gz"), options) as writer:
            for record in records:
                if record["domain"] == name:
                    writer.write(SPEC.to_example(record).SerializeToString())
    batch = next(iter(data.make_dataset(str(tmp_path / "part-*"), SPEC, 8, shuffle=False)))
    assert [d.decode() for d in batch["domain"].numpy()] == ["rec_drama", "search_tags"] * 4
