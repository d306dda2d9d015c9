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
    # The fixed 1/sqrt(H) scale without a learned temperature (the defaults are ModelConfig's: 1.0, learned).
    fusion = AspectGatingFusion("domain", num_domains=3, gate_scale=None, learn_gate_scale=False)
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


def test_learned_scale_and_initialisation_options():
    aspects, ids = _inputs()
    fusion = AspectGatingFusion("domain", num_domains=3, gate_scale=1.0, learn_gate_scale=True)
    _, weights = fusion(aspects, domain_ids=ids)
    np.testing.assert_allclose(weights, np.full((4, 3), 1 / 3), rtol=1e-6)  # zero gates: mean pooling
    table = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    log_scale = np.array([0.0, 0.5, -1.0], np.float32)
    for k in range(3):
        fusion.domain_weights.families["gate"][k].assign(table[k])
        fusion.domain_weights.families["log_scale"][k].assign(log_scale[k])
    _, weights = fusion(aspects, domain_ids=ids)
    logits = np.einsum("bh,bah->ba", table[ids], aspects) * np.exp(log_scale[ids])[:, None]
    np.testing.assert_allclose(weights, _softmax(logits), rtol=1e-5)
    cls = AspectGatingFusion("cls", learn_gate_scale=True, gate_init_stddev=0.5)
    _, weights = cls(aspects)
    assert cls.log_scale.shape == () and np.std(cls.cls_vector.numpy()) > 0.1
    assert not np.allclose(weights, 1 / 3)
    with pytest.raises(ValueError, match="gate_init_stddev must be >= 0"):
        AspectGatingFusion("mean", gate_init_stddev=-0.1)


def _informative_aspect_data(rng, n, means, readout, sigma):
    """Aspects `mean_a + noise`; a domain-0 sample's label follows aspect 0, a domain-1 sample's aspect 1."""
    aspects = rng.normal(size=(n, 3, means.shape[1])).astype(np.float32) * sigma + means
    ids = rng.integers(0, 2, n).astype(np.int32)
    signal = (aspects[np.arange(n), ids] - means[ids]) @ readout / sigma
    labels = (rng.random(n) < 1 / (1 + np.exp(-3 * signal))).astype(np.float32)
    return aspects, ids, labels


def test_domain_gates_learn_the_informative_aspect_per_domain():
    """With the model's default gate options (s = 1, learned per-domain temperature, zero init) 300 Adam
    steps at lr 1e-3 move each domain's gate towards its informative aspect (to ~0.4-0.5 over 4 seeds
    tried); at the old default (s = 1/sqrt(H), fixed) it stays within ~0.02 of mean pooling."""
    width, sigma = 32, 0.05  # aspect vectors about as large as fresh embeddings (uniform +-0.05)

    def train(**options):
        tf.random.set_seed(0)
        rng = np.random.default_rng(0)
        means = rng.normal(size=(3, width)).astype(np.float32) * sigma
        readout = rng.normal(size=width).astype(np.float32)
        readout /= np.linalg.norm(readout)
        fusion = AspectGatingFusion("domain", num_domains=2, **options)
        # The (trainable) head starts out reading the informative direction, so what is measured is how
        # fast the gates follow; a random head adds a seed-dependent delay before the gates get a signal.
        head = tf.keras.layers.Dense(
            1, kernel_initializer=tf.keras.initializers.Constant(readout[:, None] * 3 / sigma)
        )
        optimizer = tf.keras.optimizers.Adam(1e-3)

        @tf.function(autograph=False)
        def step(aspects, ids, labels):
            with tf.GradientTape() as tape:
                fused, _ = fusion(aspects, domain_ids=ids)
                logits = tf.reshape(head(fused), [-1])
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
            variables = fusion.trainable_variables + head.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

        for _ in range(300):
            step(*_informative_aspect_data(rng, 128, means, readout, sigma))
        aspects, ids, _ = _informative_aspect_data(rng, 2000, means, readout, sigma)
        _, weights = fusion(aspects, domain_ids=ids)
        return np.stack([weights.numpy()[ids == d].mean(axis=0) for d in (0, 1)])  # [domain, aspect]

    learned = train(gate_scale=1.0, learn_gate_scale=True)
    for domain in (0, 1):
        assert np.argmax(learned[domain]) == domain, learned
        assert learned[domain, domain] > 1 / 3 + 0.05, learned
    old = train(gate_scale=None, learn_gate_scale=False)
    assert np.max(np.abs(old - 1 / 3)) < 0.05, old
