"""tfsr.text.lookup: the text -> embedding tables shared by training (key-mode samples) and the export."""

import json

from tfsr import data, layout
from tfsr.text.lookup import TextEmbedder, TextLookup, read_text_embeddings, samples_text_lookup

import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf

TEXT_DIM = 16


def test_embedder_table_fallback_and_empty():
    encoder = T.HashingTextEncoder(TEXT_DIM)
    matrix = np.full([2, TEXT_DIM], 7.0, np.float32)
    embedder = TextEmbedder(TEXT_DIM, [b"known", b"also known"], matrix, encoder)
    out = embedder(tf.constant(["known", "brand new text", "", "known", "brand new text"])).numpy()
    np.testing.assert_allclose(out[0], 7.0)  # from the table, not the encoder
    np.testing.assert_allclose(out[1], encoder(tf.constant(["brand new text"])).numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(out[2], 0.0)  # an empty text (a rec sample's query) -> zeros
    np.testing.assert_allclose(out[3], out[0])
    np.testing.assert_allclose(out[4], out[1])
    zeros = TextEmbedder(TEXT_DIM, [b"known"], matrix[:1], None)
    np.testing.assert_allclose(zeros(tf.constant(["unseen"])).numpy(), 0.0)
    no_table = TextEmbedder(TEXT_DIM, encoder=encoder)  # an export without samples: every text encoded
    np.testing.assert_allclose(
        no_table(tf.constant(["brand new text", ""])).numpy(), np.stack([out[1], out[2]]), rtol=1e-6
    )


def test_missing_text_fails_naming_it_under_missing_error():
    embedder = TextEmbedder(TEXT_DIM, [b"known"], np.ones([1, TEXT_DIM], np.float32), missing="error")
    np.testing.assert_allclose(embedder(tf.constant(["known", ""])).numpy()[0], 1.0)  # empty is not missing
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in the table"):
        embedder(tf.constant(["known", "not in the table"]))
    with pytest.raises(ValueError, match="missing must be one of"):
        TextEmbedder(TEXT_DIM, missing="encoder")


def test_table_is_saved_as_variables_not_graph_constants(tmp_path):
    """The texts live in variables/ (a table can outgrow a 2 GB graph proto) and survive a SavedModel."""
    texts = [f"a distinctive title number {i}".encode() for i in range(50)]
    matrix = np.random.default_rng(0).normal(size=[50, TEXT_DIM]).astype(np.float32)
    module = tf.Module()
    module.embedder = TextEmbedder(TEXT_DIM, texts, matrix, missing="zeros")
    module.embed = tf.function(module.embedder, input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "m"))
    assert b"distinctive title" not in (tmp_path / "m" / "saved_model.pb").read_bytes()
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    got = loaded.embed(tf.constant([texts[7], texts[0], b"unknown"])).numpy()
    np.testing.assert_array_equal(got, np.stack([matrix[7], matrix[0], np.zeros(TEXT_DIM, np.float32)]))


def test_read_text_embeddings_keeps_the_first_of_duplicates(tmp_path):
    spec = T.toy_spec(TEXT_DIM)
    encoder = T.HashingTextEncoder(TEXT_DIM)
    T.write_samples_dir(tmp_path, spec, encoder, queries=["war", "space", "war"])
    texts, matrix = read_text_embeddings(layout.text_embeddings_path(tmp_path, "query_text"), TEXT_DIM)
    assert texts == [b"war", b"space"]
    np.testing.assert_allclose(matrix, encoder(tf.constant(["war", "space"])).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="text_dim is 8"):
        read_text_embeddings(layout.text_embeddings_path(tmp_path, "query_text"), 8)


def _write(path, spec, records, roles):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for r in records:
            writer.write(spec.to_example(r, roles=roles).SerializeToString())


@pytest.fixture(scope="module")
def key_and_vector_samples(tmp_path_factory):
    """The same records written twice: carrying keys (+ tables, manifest "key") and carrying vectors."""
    root = tmp_path_factory.mktemp("lookup")
    spec = T.toy_spec(TEXT_DIM)
    encoder = T.HashingTextEncoder(TEXT_DIM)
    key_dir = T.write_samples_dir(root / "keys", spec, encoder)
    (key_dir / layout.MANIFEST).write_text(json.dumps({"text_features": layout.TEXT_KEYS}))
    records = T.toy_records(60, seed=1) + T.toy_records(60, seed=2, domain="rec_drama")
    records = [r for r in records if r["item_id"] != "m_unseen" and r["query_text"] != "never typed before"]
    for r in records:
        r["label"] = len(r["item_genres"]) % 2
        r["timestamp"] = 1
        for source, derived in spec.text_embeddings.items():
            r[derived] = (
                encoder(tf.constant([r[source]])).numpy()[0].tolist() if r[source] else [0.0] * TEXT_DIM
            )
    (key_dir / layout.PRETRAIN_EVAL).mkdir()
    _write(
        key_dir / layout.PRETRAIN_EVAL / f"part-00000-of-00001{layout.TFRECORD_SUFFIX}",
        spec,
        records,
        ("raw", "label", "meta"),
    )
    vector_file = root / f"vectors{layout.TFRECORD_SUFFIX}"
    _write(vector_file, spec, records, ("raw", "derived", "label", "meta"))
    return spec, key_dir, vector_file


def test_key_samples_read_through_the_lookup_equal_vector_samples(key_and_vector_samples):
    spec, key_dir, vector_file = key_and_vector_samples
    lookup = samples_text_lookup(key_dir, spec)
    assert isinstance(lookup, TextLookup) and lookup.table_sizes["item_title_embedding"] == 40
    keyed = data.make_dataset((key_dir, layout.PRETRAIN_EVAL), spec, 32, shuffle=False, text_lookup=lookup)
    vectors = data.make_dataset(str(vector_file), spec, 32, shuffle=False)
    for a, b in zip(keyed, vectors, strict=True):
        for name in spec.text_embeddings.values():
            np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())


def test_key_samples_without_a_lookup_are_refused(key_and_vector_samples):
    spec, key_dir, vector_file = key_and_vector_samples
    with pytest.raises(ValueError, match="carry text keys"):
        data.make_dataset((key_dir, layout.PRETRAIN_EVAL), spec, 32)
    assert (
        samples_text_lookup(vector_file.parent, spec) is None
    )  # no manifest: vectors (pre-issue-14 samples)
