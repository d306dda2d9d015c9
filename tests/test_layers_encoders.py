"""L0 aspect encoders: lookups, OOV, hashing, pooling, presence, errors, round-trips."""

from tfsr.layers import IdEncoder, MissingEntityVector, SparseEncoder, TextEncoder

import numpy as np
import pytest
import tensorflow as tf


def test_id_encoder_vocabulary_and_oov_rows():
    encoder = IdEncoder(3, vocabulary=["a", "b", "", "a"], num_oov_buckets=2)
    assert encoder.vocabulary == ["a", "b"]  # "" (absent) and duplicates dropped
    out = encoder(tf.constant(["b", "zzz", "a"]))
    table = encoder.embeddings.numpy()
    assert table.shape == (4, 3)  # 2 OOV rows + 2 ids
    # StringLookup puts the OOV rows first: "a" -> 2, "b" -> 3.
    np.testing.assert_array_equal(out[0], table[3])
    np.testing.assert_array_equal(out[2], table[2])
    assert int(encoder.lookup(tf.constant(["zzz"]))[0]) in (0, 1)
    np.testing.assert_array_equal(encoder.presence(tf.constant(["a", "", "q"])), [True, False, True])


def test_id_encoder_hashing_is_stable_and_accepts_ints():
    encoder = IdEncoder(2, num_hash_bins=7)
    a = encoder(tf.constant(["x", "y", "x"]))
    np.testing.assert_array_equal(a[0], a[2])
    assert encoder(tf.constant([5, 6], tf.int64)).shape == (2, 2)
    np.testing.assert_array_equal(encoder.presence(tf.constant([5, 6], tf.int64)), [True, True])


def test_sparse_encoder_mean_pools_and_ignores_empty_values():
    encoder = SparseEncoder(2, vocabulary=["x", "y"], num_oov_buckets=1)
    values = tf.ragged.constant([["x", "y"], [], ["", "x"], ["y", "nope"]])
    out = encoder(values)
    table = encoder.embeddings.numpy()  # rows: oov, x, y
    np.testing.assert_allclose(
        out, [(table[1] + table[2]) / 2, [0, 0], table[1], (table[2] + table[0]) / 2], rtol=1e-6
    )
    np.testing.assert_array_equal(encoder.presence(values), [True, False, True, True])
    np.testing.assert_allclose(encoder(tf.constant(["y", ""])), [table[2], [0, 0]])
    summed = SparseEncoder(2, combiner="sum", vocabulary=["x", "y"])
    summed(values)
    summed.embeddings.assign(table)
    np.testing.assert_allclose(summed(values)[0], table[1] + table[2], rtol=1e-6)


def test_text_encoder_projects_and_marks_zero_vectors_absent():
    encoder = TextEncoder(2)
    x = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    out = encoder(x)
    np.testing.assert_allclose(out, x @ encoder.kernel.numpy() + encoder.bias.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(encoder.presence(x), [True, False])


def test_missing_entity_vector_replaces_absent_rows():
    layer = MissingEntityVector(2)
    x = tf.constant([[1.0, 1.0], [2.0, 2.0]])
    out = layer(x, tf.constant([True, False]))
    np.testing.assert_array_equal(out[0], [1.0, 1.0])
    np.testing.assert_array_equal(out[1], layer.vector.numpy())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: IdEncoder(4), "exactly one of vocabulary and num_hash_bins"),
        (
            lambda: IdEncoder(4, vocabulary=["a"], num_hash_bins=3),
            "exactly one of vocabulary and num_hash_bins",
        ),
        (lambda: IdEncoder(0, num_hash_bins=3), "embedding_dim must be a positive int, got 0"),
        (
            lambda: IdEncoder(4, vocabulary=["a"], num_oov_buckets=0),
            "num_oov_buckets must be a positive int, got 0",
        ),
        (lambda: SparseEncoder(4, combiner="max", num_hash_bins=3), "combiner must be one of .* got 'max'"),
        (lambda: TextEncoder(-2), "embedding_dim must be a positive int, got -2"),
    ],
)
def test_bad_arguments_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    ("layer", "inputs"),
    [
        (IdEncoder(3, vocabulary=["a", "b"]), tf.constant(["a", "c"])),
        (IdEncoder(3, num_hash_bins=11), tf.constant(["a", "c"])),
        (SparseEncoder(3, vocabulary=["a", "b"]), tf.ragged.constant([["a", "b"], ["c"]])),
        (TextEncoder(3), tf.constant([[0.5, 1.0], [1.0, -1.0]])),
    ],
)
def test_config_and_save_load_round_trip(layer, inputs, tmp_path):
    expected = layer(inputs)
    restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    restored(inputs)
    tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(layer=restored).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored(inputs), expected)
