"""Domain-specific layers: DomainWeights, DomainAdaptiveLayer and the L2 expert blocks."""

from tfsr.layers import (
    MLP,
    PLE,
    STAR,
    DomainAdaptiveLayer,
    DomainTowers,
    DomainWeights,
    ExpertBank,
    MMoE,
    SharedTower,
    grouped_dense,
)

import numpy as np
import pytest
import tensorflow as tf

X = tf.constant(np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32))
IDS = tf.constant([0, 1, 2, 1, 0])


def test_grouped_dense_matches_a_loop():
    kernel = np.random.default_rng(1).normal(size=(3, 6, 2)).astype(np.float32)
    bias = np.ones((3, 2), np.float32)
    got = grouped_dense(X, kernel, bias)
    np.testing.assert_allclose(got, np.stack([X.numpy() @ kernel[g] + 1 for g in range(3)], 1), rtol=1e-5)
    per_group = tf.stack([X] * 3, axis=1)
    np.testing.assert_allclose(grouped_dense(per_group, kernel, bias), got, rtol=1e-5)


def test_domain_weights_add_domain_keeps_existing_and_copies():
    weights = DomainWeights(2)
    weights.add_family("v", (3,), "glorot_uniform")
    before = weights.stacked("v").numpy()
    assert not np.array_equal(before[0], before[1])  # each domain its own draw
    weights.add_domain(init_from=1)
    after = weights.stacked("v").numpy()
    assert after.shape == (3, 3) and weights.num_domains == 3
    np.testing.assert_array_equal(after[:2], before)
    np.testing.assert_array_equal(after[2], before[1])
    with pytest.raises(ValueError, match=r"init_from must be a domain id in \[0, 3\), got 7"):
        weights.add_domain(init_from=7)


def test_domain_adaptive_layer_starts_at_the_shared_map():
    layer = DomainAdaptiveLayer(4, num_domains=3)
    out = layer(X, IDS)
    np.testing.assert_allclose(
        out, X.numpy() @ layer.kernel.numpy() + layer.bias.numpy(), rtol=1e-5, atol=1e-6
    )
    layer.domain_weights.families["bias"][2].assign([1.0, 2.0, 3.0, 4.0])
    out2 = layer(X, IDS)
    np.testing.assert_allclose(out2[2] - out[2], [1.0, 2.0, 3.0, 4.0], rtol=1e-5)
    np.testing.assert_allclose(out2[0], out[0])


def test_star_starts_at_the_shared_network():
    layer = STAR([4], num_domains=3)
    out = layer(X, IDS)
    np.testing.assert_allclose(out, np.maximum(X.numpy() @ layer.kernels[0].numpy(), 0), rtol=1e-5, atol=1e-6)


def test_mmoe_mixes_experts_with_each_domains_gate():
    layer = MMoE(num_experts=3, units=[4], num_domains=3)
    out = layer(X, IDS).numpy()
    experts = layer.experts(X).numpy()
    kernel = layer.domain_weights.stacked("kernel").numpy()
    bias = layer.domain_weights.stacked("bias").numpy()
    for b, d in enumerate(IDS.numpy()):
        z = X.numpy()[b] @ kernel[d] + bias[d]
        gate = np.exp(z) / np.exp(z).sum()
        np.testing.assert_allclose(out[b], gate @ experts[b], rtol=1e-5, atol=1e-6)


def test_domain_towers_send_each_sample_through_its_own_tower():
    towers = DomainTowers(3, [4])
    out = towers(X, IDS).numpy()
    for b, d in enumerate(IDS.numpy()):
        np.testing.assert_allclose(out[b], towers(X[b : b + 1], tf.constant([d])).numpy()[0], rtol=1e-5)
    assert out.shape == (5,)


def test_ple_output_shape_and_add_domain():
    layer = PLE(num_levels=2, num_shared_experts=2, num_specific_experts=1, units=[4], num_domains=3)
    assert layer(X, IDS).shape == (5, 4)
    before = {w.ref(): w.numpy() for w in layer.weights}
    for weights in layer.level_weights:
        weights.add_domain(init_from=0)
    assert len(layer.weights) > len(before)
    assert all(np.array_equal(ref.deref().numpy(), value) for ref, value in before.items())
    # The shared gate between levels mixes every domain's experts, so (unlike MMoE and STAR) a new
    # domain also reaches the existing domains' shared path: only the shapes are checked here.
    assert layer(X, tf.constant([3] * 5)).shape == (5, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"cls": MMoE, "num_experts": 0, "units": [4], "num_domains": 2},
            "num_experts must be a positive int, got 0",
        ),
        ({"cls": MLP, "units": []}, r"units must be a non-empty list of positive ints, got \(\)"),
        ({"cls": DomainTowers, "num_domains": 0}, "num_domains must be a positive int, got 0"),
        (
            {
                "cls": PLE,
                "num_levels": 0,
                "num_shared_experts": 1,
                "num_specific_experts": 1,
                "units": [2],
                "num_domains": 2,
            },
            "num_levels must be a positive int, got 0",
        ),
        ({"cls": DomainAdaptiveLayer, "units": -1, "num_domains": 2}, "units must be a positive int, got -1"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    cls = kwargs.pop("cls")
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: MLP([4, 2]),
        lambda: SharedTower([3]),
        lambda: DomainTowers(3, [3]),
        lambda: MMoE(2, [4], 3),
        lambda: PLE(2, 1, 1, [4], 3),
        lambda: STAR([4, 3], 3),
        lambda: DomainAdaptiveLayer(4, 3, activation="tanh"),
    ],
)
def test_config_and_save_load_round_trip(factory, tmp_path):
    layer = factory()
    expected = layer(X, IDS)
    restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    restored(X, IDS)
    tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(layer=restored).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored(X, IDS), expected)


def test_expert_bank_shape():
    assert ExpertBank(3, [4, 2])(X).shape == (5, 3, 2)
