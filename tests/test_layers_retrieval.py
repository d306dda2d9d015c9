"""RetrievalTower: per-domain output layers or a domain vector, normalisation, shared layers, new domains."""

from tfsr.layers import RetrievalTower

import numpy as np
import pytest
import tensorflow as tf

X = tf.random.stateless_normal([6, 5], seed=[1, 2])
IDS = tf.constant([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("mode", ["output", "vector"])
def test_shapes_normalisation_and_config(mode):
    tower = RetrievalTower((8, 4), num_domains=3, domain_mode=mode, domain_dim=3)
    out = tower(X, IDS).numpy()
    assert out.shape == (6, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    clone = RetrievalTower.from_config(tower.get_config())
    clone(X, IDS)
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(X, IDS).numpy(), out, rtol=1e-6)
    assert tower.shared_layers == ([tower.hidden] if mode == "output" else [tower.hidden, tower.output_layer])


def test_per_domain_output_is_the_domains_own_linear_map():
    tower = RetrievalTower((4,), num_domains=2, normalize=False)
    out = tower(X, tf.constant([0, 1, 0, 1, 0, 1])).numpy()
    kernels, biases = (
        tower.domain_weights.stacked("kernel").numpy(),
        tower.domain_weights.stacked("bias").numpy(),
    )
    for row, domain in enumerate([0, 1, 0, 1, 0, 1]):
        np.testing.assert_allclose(out[row], X.numpy()[row] @ kernels[domain] + biases[domain], rtol=1e-5)


def test_a_new_domain_leaves_the_others_unchanged():
    tower = RetrievalTower((8, 4), num_domains=2)
    before = tower(X, tf.constant([0, 1, 0, 1, 0, 1])).numpy()
    tower.domain_weights.add_domain(init_from=1)
    after = tower(X, tf.constant([0, 1, 0, 1, 0, 1])).numpy()
    # the grouped matmul over 3 domains instead of 2 may round differently in the last bit
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)
    copied = tower(X, tf.fill([6], 2)).numpy()
    np.testing.assert_allclose(copied, tower(X, tf.fill([6], 1)).numpy(), rtol=1e-6)  # init_from=1


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain_mode"):
        RetrievalTower((4,), num_domains=2, domain_mode="tower")
    with pytest.raises(ValueError, match="needs domain_ids"):
        RetrievalTower((4,), num_domains=2)(X)
