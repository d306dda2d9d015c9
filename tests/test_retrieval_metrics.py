"""Recall@K / NDCG@K against a catalogue (hand-computed, and against TFRS's FactorizedTopK) and the
popularity baseline's ranking."""

import math

from tfsr import retrieval_metrics

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs


def test_hit_ranks_and_metrics_by_hand():
    top_k = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 4], [4, 0, 1]])
    truth = np.array([1, 9, 9, 4])
    ranks = retrieval_metrics.hit_ranks(top_k, truth)
    np.testing.assert_array_equal(ranks, [1, -1, 0, 0])
    m = retrieval_metrics.metrics_from_ranks(ranks, ks=(1, 2), ndcg_k=2)
    assert m["count"] == 4
    assert m["recall_at_1"] == pytest.approx(2 / 4)
    assert m["recall_at_2"] == pytest.approx(3 / 4)
    assert m["ndcg_at_2"] == pytest.approx((1 / math.log2(3) + 1 + 1) / 4)


def test_ndcg_counts_only_the_top_k():
    m = retrieval_metrics.metrics_from_ranks(np.array([0, 10, -1]), ks=(100,), ndcg_k=10)
    assert m["ndcg_at_10"] == pytest.approx(1 / 3)
    assert m["recall_at_100"] == pytest.approx(2 / 3)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="top_k must be"):
        retrieval_metrics.hit_ranks(np.zeros([3]), np.zeros([3]))


def test_recall_equals_tfrs_factorized_top_k():
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(200, 8)).astype(np.float32)
    queries = rng.normal(size=(64, 8)).astype(np.float32)
    truth = rng.integers(0, 200, size=64)
    ids = np.array([str(i).encode() for i in range(200)])
    top = tf.math.top_k(queries @ candidates.T, k=10).indices.numpy()
    ours = retrieval_metrics.metrics_from_ranks(retrieval_metrics.hit_ranks(top, truth), ks=(1, 10))
    index = tfrs.layers.factorized_top_k.BruteForce(k=10)
    index.index(tf.constant(candidates), tf.constant(ids))
    metric = tfrs.metrics.FactorizedTopK(candidates=index, ks=(1, 10))
    metric.update_state(
        tf.constant(queries), tf.constant(candidates[truth]), true_candidate_ids=tf.constant(ids[truth])
    )
    top_1, top_10 = (float(v) for v in metric.result())  # one value per k, in `ks` order
    assert ours["recall_at_1"] == pytest.approx(top_1)
    assert ours["recall_at_10"] == pytest.approx(top_10)
    assert 0 < ours["recall_at_10"] < 1


def test_top_k_excluding_leaves_out_each_rows_items_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    top = retrieval_metrics.top_k_excluding(scores, [np.array([1]), np.array([], np.int64)], k=3)
    np.testing.assert_array_equal(top, [[3, 2, 0], [0, 1, 2]])
    assert retrieval_metrics.top_k_excluding(scores, [np.array([])] * 2, k=10).shape == (2, 4)
