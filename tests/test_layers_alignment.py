"""Alignment regularisers: JS against scipy, symmetry, bounds, masking of absent domains; MMD."""

import math

from tfsr.layers import js_divergence_alignment, mmd_alignment

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax


def _two_domains(seed=0, n=6, dim=5, shift=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, dim)).astype(np.float32)
    x[n:] += shift
    return x, np.array([0] * n + [1] * n, np.int32)


def test_js_matches_scipy_on_fixed_vectors():
    x, ids = _two_domains()
    tau = 0.7
    p, q = softmax(x[ids == 0].mean(0) / tau), softmax(x[ids == 1].mean(0) / tau)
    expected = jensenshannon(p, q) ** 2  # scipy returns the distance, sqrt(JS), in base e
    got = js_divergence_alignment(x, ids, num_domains=2, temperature=tau)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_js_hand_computed_two_point_distributions():
    # Means [log 3, 0] and [0, log 3] with tau=1 give P=(3/4, 1/4), Q=(1/4, 3/4), M=(1/2, 1/2).
    x = np.array([[math.log(3), 0.0], [0.0, math.log(3)]], np.float32)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    np.testing.assert_allclose(js_divergence_alignment(x, [0, 1], 2), expected, rtol=1e-5)


def test_js_is_symmetric_zero_on_equal_inputs_and_bounded_by_log2():
    x, ids = _two_domains(shift=3.0)
    forward = js_divergence_alignment(x, ids, 2)
    backward = js_divergence_alignment(x, 1 - ids, 2)
    np.testing.assert_allclose(forward, backward, rtol=1e-6)
    same = np.concatenate([x[:6], x[:6]])
    assert float(js_divergence_alignment(same, ids, 2)) == pytest.approx(0.0, abs=1e-7)
    extreme = np.array([[100.0, 0.0], [0.0, 100.0]], np.float32)
    value = float(js_divergence_alignment(extreme, [0, 1], 2, temperature=0.01))
    assert 0.0 < value <= math.log(2) + 1e-6
    assert value == pytest.approx(math.log(2), rel=1e-4)


@pytest.mark.parametrize("fn", [js_divergence_alignment, mmd_alignment])
def test_absent_domains_are_masked_and_one_domain_gives_zero(fn):
    x, ids = _two_domains()
    # Domains 0 and 3 of 5 present: the same as domains 0 and 1 of 2.
    np.testing.assert_allclose(fn(x, np.where(ids == 1, 3, 0), 5), fn(x, ids, 2), rtol=1e-6)
    one = fn(x, np.zeros_like(ids), 4)
    assert np.isfinite(one) and float(one) == 0.0


def test_js_sums_over_pairs_of_present_domains():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    ids = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    pairwise = sum(
        float(js_divergence_alignment(x[np.isin(ids, [i, j])], ids[np.isin(ids, [i, j])], 3))
        for i, j in [(0, 1), (0, 2), (1, 2)]
    )
    np.testing.assert_allclose(js_divergence_alignment(x, ids, 3), pairwise, rtol=1e-5)


def test_mmd_is_zero_on_identical_samples_and_matches_numpy():
    x, ids = _two_domains(n=4, dim=3)
    same = np.concatenate([x[:4], x[:4]])
    assert float(mmd_alignment(same, ids, 2)) == pytest.approx(0.0, abs=1e-6)
    sigma = 1.5

    def k(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma**2))

    a, b = x[:4], x[4:]
    expected = k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()
    np.testing.assert_allclose(mmd_alignment(x, ids, 2, bandwidth=sigma), expected, rtol=1e-5)
    np.testing.assert_allclose(mmd_alignment(x, 1 - ids, 2, bandwidth=sigma), expected, rtol=1e-5)
    assert expected > 0


def test_gradients_are_finite_in_a_tf_function():
    x, ids = _two_domains()
    x = tf.Variable(x)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = js_divergence_alignment(x, ids, 3) + mmd_alignment(x, ids, 3)
        return tape.gradient(loss, x)

    assert np.all(np.isfinite(grads()))


def test_bad_arguments_raise():
    x, ids = _two_domains()
    with pytest.raises(ValueError, match="temperature must be positive, got 0"):
        js_divergence_alignment(x, ids, 2, temperature=0)
    with pytest.raises(ValueError, match="bandwidth must be positive, got -1"):
        mmd_alignment(x, ids, 2, bandwidth=-1)
    with pytest.raises(ValueError, match="num_domains must be a positive int, got 0"):
        mmd_alignment(x, ids, 0)
