"""AspectGatingFusion: hand-computed weights, masks, errors, config and save/load round-trips."""

from tfsr.layers import AspectGatingFusion

import numpy as np
import pytest
import tensorflow as tf


def _inputs(seed=0, batch=4, aspects=3, width=4):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch, aspects, width)).astype(np.float32),
        np.array([0, 1, 2, 1][:batch], np.int32),
    )


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mean_strategy_is_exact_and_respects_the_mask():
    aspects, ids = _inputs()
    mask = np.array([[True, True, True], [True, False, True], [False, False, True], [False, False, False]])
    fused, weights = AspectGatingFusion("mean")(aspects, domain_ids=ids, aspect_mask=mask)
    expected_w = np.array([[1 / 3] * 3, [0.5, 0, 0.5], [0, 0, 1], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(weights, expected_w, rtol=1e-6)
    np.testing.assert_allclose(fused, np.einsum("ba,bah->bh", expected_w, aspects), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fused[3], np.zeros(4))


def test_domain_gating_matches_numpy():
    aspects, ids = _inputs()
    fusion = AspectGatingFusion("domain", num_domains=3)
    fusion(aspects, domain_ids=ids)
    table = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    for k, variable in enumerate(fusion.domain_weights.families["gate"]):
        variable.assign(table[k])
    fused, weights = fusion(aspects, domain_ids=ids)
    expected_w = _softmax(np.einsum("bh,bah->ba", table[ids], aspects) / np.sqrt(4))
    np.testing.assert_allclose(weights, expected_w, rtol=1e-5)
    np.testing.assert_allclose(fused, np.einsum("ba,bah->bh", expected_w, aspects), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sum(weights, axis=1), np.ones(4), rtol=1e-6)


def test_cls_gating_with_a_mask_excludes_absent_aspects_from_the_softmax():
    aspects, ids = _inputs()
    fusion = AspectGatingFusion("cls", gate_scale=0.5)
    fusion(aspects)
    c = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    fusion.cls_vector.assign(c)
    mask = np.array([True, False, True])  # one mask for every sample
    _, weights = fusion(aspects, aspect_mask=mask)
    logits = np.einsum("h,bah->ba", c, aspects) * 0.5
    expected = np.zeros((4, 3), np.float32)
    expected[:, [0, 2]] = _softmax(logits[:, [0, 2]])
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)


def test_gates_start_as_mean_pooling():
    aspects, ids = _inputs()
    _, weights = AspectGatingFusion("domain", num_domains=3)(aspects, domain_ids=ids)
    np.testing.assert_allclose(weights, np.full((4, 3), 1 / 3), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "max"}, "strategy must be one of .* got 'max'"),
        ({"strategy": "domain"}, "needs num_domains, got None"),
        ({"strategy": "domain", "num_domains": 0}, "num_domains must be a positive int, got 0"),
        ({"strategy": "mean", "gate_scale": -1.0}, "gate_scale must be positive or None, got -1.0"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AspectGatingFusion(**kwargs)


def test_domain_strategy_needs_domain_ids():
    aspects, _ = _inputs()
    with pytest.raises(ValueError, match="needs domain_ids"):
        AspectGatingFusion("domain", num_domains=3)(aspects)


@pytest.mark.parametrize("strategy", ["domain", "cls", "mean"])
def test_config_and_save_load_round_trip(strategy, tmp_path):
    aspects, ids = _inputs()
    layer = AspectGatingFusion(strategy, num_domains=3)
    layer(aspects, domain_ids=ids)
    for variable in layer.weights:
        variable.assign(tf.random.stateless_normal(variable.shape, seed=[1, 2]))
    expected = layer(aspects, domain_ids=ids)
    restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(layer))
    assert restored.get_config() == layer.get_config()
    restored(aspects, domain_ids=ids)
    tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(layer=restored).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    for got, want in zip(restored(aspects, domain_ids=ids), expected, strict=True):
        np.testing.assert_array_equal(got, want)
