"""DomainCalibration (per-domain Platt scaling) and fit_platt."""

from tfsr import evaluation
from tfsr.layers.calibration import MIN_SCALE, DomainCalibration, fit_platt

import numpy as np
import pytest
import tensorflow as tf


def test_calibration_applies_each_samples_domain_pair():
    layer = DomainCalibration(num_domains=3)
    layer.set_domain(1, scale=0.5, shift=-1.0)
    layer.set_domain(2, scale=2.0, shift=0.25)
    out = layer(tf.constant([2.0, 2.0, 2.0, -1.0]), tf.constant([0, 1, 2, 2]))
    np.testing.assert_allclose(out.numpy(), [2.0, 0.0, 4.25, -1.75])
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 6
    assert layer.domain(1) == (0.5, -1.0)


def test_calibration_is_never_trained_and_rejects_bad_pairs():
    layer = DomainCalibration(num_domains=2)
    layer.trainable = True  # even when someone unfreezes everything, the optimizer never sees it
    layer.domain_weights.add_domain()
    assert layer.trainable_weights == [] and not any(v.trainable for v in layer.weights)
    with pytest.raises(ValueError, match="scale must be positive, got 0"):
        layer.set_domain(0, scale=0.0, shift=0.0)
    with pytest.raises(ValueError, match=r"domain_id must be in \[0, 3\), got 5"):
        layer.set_domain(5, scale=1.0, shift=0.0)


def test_add_domain_appends_an_identity_pair_and_config_round_trips():
    layer = DomainCalibration(num_domains=2)
    layer.set_domain(0, 3.0, 1.0)
    layer.domain_weights.add_domain()
    assert layer.num_domains == 3 and layer.domain(2) == (1.0, 0.0) and layer.domain(0) == (3.0, 1.0)
    clone = DomainCalibration.from_config(layer.get_config())
    assert clone.num_domains == 3 and clone.trainable_weights == []


def test_fit_platt_recovers_the_generating_map_and_lowers_log_loss():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 50_000)
    y = (rng.random(z.size) < 1.0 / (1.0 + np.exp(-(0.4 * z - 1.2)))).astype(float)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.4, abs=0.02) and b == pytest.approx(-1.2, abs=0.03)
    before = evaluation.log_loss(y, 1.0 / (1.0 + np.exp(-z)))
    after = evaluation.log_loss(y, 1.0 / (1.0 + np.exp(-(a * z + b))))
    assert after < before and after < evaluation.constant_log_loss(y)


def test_fit_platt_never_reverses_a_ranking():
    rng = np.random.default_rng(1)
    z = rng.normal(size=5_000)
    y = (z < 0).astype(float)  # the logits rank backwards
    a, b = fit_platt(z, y)
    assert a == MIN_SCALE
    # only the shift was fitted: the mean prediction matches the click rate
    p = 1.0 / (1.0 + np.exp(-(a * z + b)))
    assert p.mean() == pytest.approx(y.mean(), abs=1e-4)
    assert evaluation.auc(y, p) == pytest.approx(evaluation.auc(y, z))


def test_fit_platt_on_one_class_is_the_identity():
    assert fit_platt(np.array([0.1, 2.0]), np.array([1.0, 1.0])) == (1.0, 0.0)
    assert fit_platt(np.array([]), np.array([])) == (1.0, 0.0)
