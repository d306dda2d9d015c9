"""Mixed precision: under a `mixed_float16` policy every model type runs, its outputs are finite float32,
and the softmax masks stay finite in float16 (-1e9 overflows to -inf there)."""

from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec
from tfsr.layers import AspectGatingFusion, FeatureInteractions
from tfsr.layers.domain import large_negative
from tfsr.models import MODEL_TYPES, ModelConfig, build_model

import numpy as np
import pytest
import tensorflow as tf

SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=6)
SMALL = {
    "embedding_dim": 4,
    "adaptive_units": 8,
    "expert_units": (8,),
    "tower_units": (4,),
    "num_hash_bins": 64,
    "num_experts": 2,
}
BUILT_IN = ("srfoundation", "single_domain", "shared_bottom", "mmoe", "ple", "star", "deepfm", "dcn_v2")


def _batch(n=16, seed=0):
    records = list(data.synthetic_records(SPEC, n, seed=seed))
    serialized = tf.constant([SPEC.to_example(r).SerializeToString() for r in records])
    return tf.io.parse_example(serialized, SPEC.parse_spec())


@pytest.fixture
def mixed_float16():
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def test_large_negative_is_finite_in_every_float_dtype():
    assert large_negative(tf.float32) == -1e9  # float32 behaviour unchanged
    for dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64):
        value = tf.constant(large_negative(dtype), dtype)
        assert np.isfinite(value.numpy()) and value.numpy() < -1e3
    assert not np.isfinite(tf.cast(-1e9, tf.float16).numpy())  # why a per-dtype value is needed


@pytest.mark.parametrize("model_type", BUILT_IN)
def test_every_model_type_runs_under_mixed_float16(model_type, mixed_float16):
    assert model_type in MODEL_TYPES
    batch = _batch()
    model = build_model(ModelConfig(model_type, **SMALL), SPEC)
    assert model.experts is None or model.experts.compute_dtype == "float16"
    outputs = model(batch)
    assert {k: v.dtype for k, v in outputs.items()} == dict.fromkeys(outputs, tf.float32)
    for key, value in outputs.items():
        assert np.all(np.isfinite(value.numpy())), key
    ctr = outputs["ctr"].numpy()
    assert ctr.shape == (16,) and np.all((ctr >= 0) & (ctr <= 1))
    rows = outputs["gate_weights"].numpy().sum(axis=2)  # 1, or 0 for an absent entity (no query in rec)
    np.testing.assert_allclose(np.where(rows > 0.5, rows, 1.0), 1.0, atol=2e-3)
    # Weights stay float32 (the policy's variable dtype); the loss is a finite float32.
    assert all(v.dtype == tf.float32 for v in model.weights if v.dtype.is_floating)
    loss = model.compute_loss(batch)
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())


def test_fusion_masks_do_not_overflow_in_float16(mixed_float16):
    fusion = AspectGatingFusion("domain", num_domains=2)
    aspects = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 4)), tf.float32)
    fusion(aspects, domain_ids=tf.constant([0, 1, 0]))
    for variable in fusion.domain_weights.families["gate"]:
        variable.assign(tf.fill(variable.shape, 50.0))  # large logits: -1e9 - max would be -inf - x
    mask = tf.constant([[True, False, True], [False, False, False], [True, True, True]])
    fused, weights = fusion(aspects, domain_ids=tf.constant([0, 1, 0]), aspect_mask=mask)
    assert weights.dtype == tf.float16 and fused.dtype == tf.float16
    weights = weights.numpy().astype(np.float32)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(fused.numpy()))
    assert weights[0, 1] == 0 and np.all(weights[1] == 0)
    np.testing.assert_allclose(weights.sum(axis=1), [1, 0, 1], atol=1e-3)


def test_interactions_compute_in_float16(mixed_float16):
    block = FeatureInteractions(("dot", "fields", "cross", "fm"), num_domains=2)
    fields = tf.random.stateless_normal([4, 3, 4], seed=[0, 1])
    outputs = block(fields, tf.constant([[True, False, True]] * 4), tf.constant([0, 1, 0, 1]))
    assert outputs["features"].dtype == tf.float16 and outputs["logit"].dtype == tf.float16
    assert all(v.dtype == tf.float32 for v in block.weights)
    assert np.all(np.isfinite(outputs["features"].numpy())) and np.all(np.isfinite(outputs["logit"].numpy()))
