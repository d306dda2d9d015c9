"""L2 explicit interactions: PairwiseDot, FactorizationMachine, CrossNetwork, FeatureInteractions."""

from tfsr.layers import CrossNetwork, FactorizationMachine, FeatureInteractions, PairwiseDot

import numpy as np
import pytest
import tensorflow as tf

# Three fields (user, query, item) of width 2; the second sample has no query.
FIELDS = tf.constant(
    [
        [[1.0, 2.0], [0.5, -1.0], [3.0, 4.0]],
        [[-1.0, 0.0], [9.0, 9.0], [2.0, 5.0]],
    ]
)
MASK = tf.constant([[True, True, True], [True, False, True]])
IDS = tf.constant([1, 0])


def test_pairwise_dot_hand_computed_with_absent_field_zero():
    out = PairwiseDot()(FIELDS, MASK).numpy()
    # pairs (user, query), (user, item), (query, item)
    np.testing.assert_allclose(out[0], [1 * 0.5 - 2 * 1, 1 * 3 + 2 * 4, 0.5 * 3 - 1 * 4])
    np.testing.assert_allclose(out[1], [0.0, -2.0, 0.0])  # the absent query's 9s never enter
    np.testing.assert_allclose(PairwiseDot()(FIELDS).numpy()[1], [-9.0, -2.0, 63.0])  # no mask


def test_factorization_machine_first_and_second_order():
    fm = FactorizationMachine()
    fm.build(FIELDS.shape)
    w = np.arange(6, dtype=np.float32)[:, None] / 10  # first-order weights of the 3 x 2 flattened fields
    fm.linear.kernel.assign(w)
    out = fm(FIELDS, MASK).numpy()
    fields = FIELDS.numpy() * MASK.numpy()[:, :, None]
    for b in range(2):
        first = float(fields[b].reshape(-1) @ w[:, 0])
        second = sum(float(fields[b, i] @ fields[b, j]) for i in range(3) for j in range(i + 1, 3))
        assert out[b] == pytest.approx(first + second, rel=1e-6)
    # sample 0: pairwise sum -1.5 + 11 - 2.5 = 7; first order 0.1*2 + 0.2*0.5 - 0.3 + 0.4*3 + 0.5*4 = 3.2
    assert out[0] == pytest.approx(10.2, rel=1e-6)


def test_cross_network_full_rank_with_known_weights():
    x0 = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    net = CrossNetwork(num_layers=2)
    net.build(x0.shape)
    w = [np.array([[1.0, 0.0], [2.0, -1.0]], np.float32), np.array([[0.5, 1.0], [0.0, 1.0]], np.float32)]
    b = [np.array([0.1, -0.2], np.float32), np.array([0.0, 1.0], np.float32)]
    net(x0)  # creates the Dense sublayers of tfrs Cross
    for layer, kernel, bias in zip(net.cross_layers, w, b, strict=True):
        layer._dense.kernel.assign(kernel)
        layer._dense.bias.assign(bias)
    x1 = x0 * (x0 @ w[0] + b[0]) + x0
    x2 = x0 * (x1 @ w[1] + b[1]) + x1
    np.testing.assert_allclose(net(x0).numpy(), x2, rtol=1e-6)
    # sample 0 by hand: x1 = [1,2]*([5,-2]+[.1,-.2]) + [1,2] = [6.1, -2.4]
    np.testing.assert_allclose(x1[0], [6.1, -2.4], rtol=1e-6)


def test_cross_network_low_rank_uses_u_v():
    x0 = np.array([[1.0, 2.0, 3.0]], np.float32)
    net = CrossNetwork(num_layers=1, projection_dim=1)
    net(x0)
    (layer,) = net.cross_layers
    u = np.array([[1.0], [0.0], [-1.0]], np.float32)
    v = np.array([[2.0, 1.0, 0.0]], np.float32)
    layer._dense_u.kernel.assign(u)
    layer._dense_v.kernel.assign(v)
    layer._dense_v.bias.assign(np.zeros(3, np.float32))
    # x0 @ u = -2; @ v = [-4, -2, 0]; x1 = x0 * that + x0 = [-3, -2, 3]
    np.testing.assert_allclose(net(x0).numpy(), [[-3.0, -2.0, 3.0]], rtol=1e-6)
    assert layer._dense_u.kernel.shape == (3, 1)


def test_feature_interactions_composes_dot_fields_cross_and_fm():
    block = FeatureInteractions(("fm", "cross", "dot", "fields"), num_cross_layers=1)
    out = block(FIELDS, MASK, IDS)
    assert block.kinds == ("dot", "fields", "cross", "fm")
    masked = FIELDS * tf.cast(MASK, tf.float32)[:, :, None]
    flat = tf.reshape(masked, [2, 6])
    expected = tf.concat([block.dot(FIELDS, MASK), flat, block.cross(flat)], axis=1)
    np.testing.assert_allclose(out["features"], expected, rtol=1e-6)
    # the logit: the FM term plus the dot products, each weighted 1 at the start
    dots = block.dot(FIELDS, MASK)
    np.testing.assert_allclose(out["logit"], block.fm(FIELDS, MASK) + tf.reduce_sum(dots, 1), rtol=1e-6)
    # an absent field's values never reach any output
    other = tf.tensor_scatter_nd_update(FIELDS, [[1, 1]], [[-7.0, 3.0]])
    again = block(other, MASK, IDS)
    for key in out:
        np.testing.assert_allclose(again[key], out[key], rtol=1e-6)
    assert block.shared_layers == [block.dot_logit, block.cross, block.fm]
    assert set(FeatureInteractions(("fm",))(FIELDS, MASK)) == {"logit"}
    assert set(FeatureInteractions(("cross",))(FIELDS, MASK)) == {"features"}
    dot_only = FeatureInteractions(("dot",))
    assert set(dot_only(FIELDS, MASK)) == {"features", "logit"}
    dot_only.dot_logit.kernel.assign([[1.0], [-2.0], [0.5]])
    # sample 0: dots (-1.5, 11, -2.5) -> -1.5 - 22 - 1.25
    assert float(dot_only(FIELDS, MASK)["logit"][0]) == pytest.approx(-24.75, rel=1e-6)


def test_domain_field_is_each_samples_domain_embedding():
    block = FeatureInteractions(("fields", "dot"), num_domains=2)
    out = block(FIELDS, MASK, IDS)["features"].numpy()
    table = block.domain_weights.stacked("embedding").numpy()
    assert out.shape == (2, 6 + 4 * 2)  # 4 fields: 6 pairs, then 8 field values
    np.testing.assert_allclose(out[:, -2:], table[IDS.numpy()])
    # the domain pairs with every field: user . domain is the 3rd pair
    np.testing.assert_allclose(out[0, 2], FIELDS.numpy()[0, 0] @ table[1], rtol=1e-5)
    assert block.shared_layers == [block.dot_logit]  # the domain rows are per domain
    block.domain_weights.add_domain(init_from=0)
    np.testing.assert_allclose(block(FIELDS, MASK, tf.constant([2, 2]))["features"][:, -2:], table[[0, 0]])
    with pytest.raises(ValueError, match="needs domain_ids"):
        block(FIELDS, MASK)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: FeatureInteractions(()), r"kinds must be a non-empty subset .* got \(\)"),
        (lambda: FeatureInteractions(("dot", "mlp")), r"got \('dot', 'mlp'\)"),
        (lambda: FeatureInteractions(("dot", "dot")), r"without repeats, got \('dot', 'dot'\)"),
        (
            lambda: FeatureInteractions(("cross",), num_cross_layers=0),
            "num_cross_layers must be a positive int, got 0",
        ),
        (lambda: FeatureInteractions(("cross",), cross_projection_dim=-2), "cross_projection_dim .* got -2"),
        (lambda: FeatureInteractions(("dot",), num_domains=0), "num_domains must be a positive int, got 0"),
        (lambda: CrossNetwork(diag_scale=-1.0), r"diag_scale must be >= 0, got -1.0"),
        (lambda: PairwiseDot()(tf.zeros([2, 1, 3])), "at least 2 fields, got 1"),
        (lambda: FactorizationMachine()(tf.zeros([2, 6])), r"shape \[B, F, H\]"),
    ],
)
def test_bad_arguments_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    ("factory", "args"),
    [
        (lambda: PairwiseDot(), (FIELDS, MASK)),
        (lambda: FactorizationMachine(), (FIELDS, MASK)),
        (lambda: CrossNetwork(2, projection_dim=2), (tf.reshape(FIELDS, [2, 6]),)),
        (lambda: FeatureInteractions(("dot", "cross", "fm"), 1, 3, num_domains=2), (FIELDS, MASK, IDS)),
    ],
)
def test_config_and_save_load_round_trip(factory, args, tmp_path):
    layer = factory()
    expected = layer(*args)
    restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    restored(*args)
    tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(layer=restored).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    tf.nest.map_structure(np.testing.assert_array_equal, restored(*args), expected)
