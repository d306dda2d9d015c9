"""Metrics of tfsr.evaluation against hand-computed cases and simple numpy reference loops."""

import math

from tfsr import evaluation as ev

import numpy as np
import pytest


def _auc_pairs(labels, scores):
    """Reference: fraction of (positive, negative) pairs ranked correctly, ties counting one half."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _gauc_loop(labels, scores, users):
    labels, scores, users = map(np.asarray, (labels, scores, users))
    num = den = 0.0
    n = 0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        num += m.sum() * _auc_pairs(labels[m], scores[m])
        den += m.sum()
        n += 1
    return (num / den if den else float("nan")), n


def test_auc_hand_computed():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert ev.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert ev.auc([0, 1], [0.2, 0.9]) == 1.0
    assert ev.auc([1, 0], [0.2, 0.9]) == 0.0


def test_auc_ties_are_half():
    assert ev.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # pos {0.5, 0.9}, neg {0.5, 0.1}: 0.5 vs 0.5 tie (0.5), 0.5>0.1, 0.9>0.5, 0.9>0.1 -> 3.5/4
    assert ev.auc([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1]) == pytest.approx(0.875)


def test_auc_one_class_is_nan_and_bad_labels_raise():
    assert math.isnan(ev.auc([1, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        ev.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        ev.auc([0, 1], [0.1])


def test_auc_matches_pairwise_reference_on_random_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 10, 300) / 10.0  # many ties
    assert ev.auc(labels, scores) == pytest.approx(_auc_pairs(labels, scores), abs=1e-12)


def test_average_ranks():
    np.testing.assert_allclose(ev.average_ranks([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])


def test_gauc_hand_computed():
    # user a: 3 rows, auc 1.0; user b: 2 rows, auc 0.0; user c: one class, skipped
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.1, 0.9, 0.5, 0.6]
    users = ["a", "a", "a", "b", "b", "c", "c"]
    value, n = ev.gauc(labels, scores, users)
    assert n == 2
    assert value == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)


def test_gauc_matches_numpy_reference_loop():
    rng = np.random.default_rng(1)
    n = 2000
    users = rng.integers(0, 150, n)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.random(n) + 0.3 * labels, 2)  # ties inside users
    value, groups = ev.gauc(labels, scores, users.astype(str))
    ref, ref_groups = _gauc_loop(labels, scores, users)
    assert groups == ref_groups
    assert value == pytest.approx(ref, abs=1e-12)


def test_log_loss_and_constant_floor():
    assert ev.log_loss([1, 0], [0.8, 0.2]) == pytest.approx(-math.log(0.8))
    p = 0.25
    assert ev.constant_log_loss([1, 0, 0, 0]) == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))
    # predicting the rate itself reaches the floor exactly
    assert ev.log_loss([1, 0, 0, 0], [p] * 4) == pytest.approx(ev.constant_log_loss([1, 0, 0, 0]))


def test_evaluate_arrays_per_domain_cold_items_and_gates():
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    probs = np.array([0.9, 0.1, 0.6, 0.4, 0.3, 0.7, 0.8, 0.2])
    domains = np.array([b"rec_a", b"rec_a", b"rec_a", b"rec_a", b"cold", b"cold", b"cold", b"cold"])
    users = np.array(["u1", "u1", "u2", "u2", "u1", "u1", "u3", "u3"])
    cold = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    gates = np.zeros((8, 3, 3))
    gates[:4, :, 0] = 1.0  # warm domain leans on id
    gates[4:, :, 1] = 1.0  # cold domain leans on text
    rep = ev.evaluate_arrays(
        labels,
        probs,
        domains,
        users=users,
        is_cold_item=cold,
        gate_weights=gates,
        cold_domains=["cold"],
        domain_kinds={"rec_a": "rec", "cold": "rec"},
    )
    assert list(rep["domains"]) == ["rec_a", "cold"]  # warm first, cold-start last
    assert rep["domains"]["rec_a"]["auc"] == 1.0
    assert rep["domains"]["cold"]["auc"] == pytest.approx(0.75)  # 3 of 4 pairs
    assert rep["domains"]["cold"]["cold_start"] is True
    assert rep["domains"]["rec_a"]["count"] == 4 and rep["domains"]["rec_a"]["pos_rate"] == 0.5
    assert rep["domains"]["rec_a"]["gauc"] == 1.0 and rep["domains"]["rec_a"]["gauc_groups"] == 2
    assert rep["item_cold_start"]["cold"]["count"] == 2 and rep["item_cold_start"]["all"]["count"] == 4
    assert rep["overall_warm"]["count"] == 4 and rep["overall"]["count"] == 8
    assert rep["gate_weights"]["cold"]["mean"][0] == [0.0, 1.0, 0.0]
    assert rep["gate_weights"]["rec_a"]["aspects"] == ["id", "text", "sparse"]
