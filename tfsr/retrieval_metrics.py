"""Retrieval metrics against a whole catalogue: Recall@K and NDCG@K of held-out clicks, and the popularity
baseline (docs/TRAINING.md, "Retrieval").

Every held-out click is one query: its context (domain, user, query) retrieves the top K of the catalogue,
and the click is a hit at rank r (0-based) when the clicked item is the r-th retrieved. Then
``Recall@K`` is the fraction of clicks with a hit in the top K (TFRS's ``FactorizedTopK`` top-K
categorical accuracy of the same clicks) and ``NDCG@K`` averages ``1 / log2(r + 2)`` over the hits (one
relevant item per query, so the ideal DCG is 1). Items the user clicked before (the training splits) are
left out of every method's top K (:func:`top_k_excluding`), as in the usual protocol on MovieLens: a user
rates a movie once, so a seen item is never a held-out click.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (10, 100)
NDCG_K = 10


def hit_ranks(top_k: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`[N]` rank of each truth in its row of `top_k` (`[N, K]` item indices), -1 when not retrieved."""
    top_k, truth = np.asarray(top_k), np.asarray(truth)
    if top_k.ndim != 2 or truth.shape != (top_k.shape[0],):
        raise ValueError(f"top_k must be [N, K] and truth [N], got {top_k.shape} and {truth.shape}")
    hits = top_k == truth[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS, ndcg_k: int = NDCG_K) -> dict[str, float]:
    """``recall_at_<k>`` for each k and ``ndcg_at_<ndcg_k>`` from hit ranks (-1 = miss), plus ``count``."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {"count": int(ranks.size)}
    if ranks.size == 0:
        return out
    hit = ranks >= 0
    for k in ks:
        out[f"recall_at_{k}"] = float(np.mean(hit & (ranks < k)))
    gains = np.where(hit & (ranks < ndcg_k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    out[f"ndcg_at_{ndcg_k}"] = float(np.mean(gains))
    return out


def top_k_excluding(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """`[N, min(k, M)]` indices of the highest of `scores` `[N, M]`, best first, leaving out row i's
    `exclude[i]` indices (a user's already clicked items). Ties go to the lower index."""
    scores = np.array(scores, dtype=np.float64)
    if scores.ndim != 2 or len(exclude) != scores.shape[0]:
        raise ValueError(
            f"scores must be [N, M] with one exclusion list per row, got {scores.shape}, {len(exclude)}"
        )
    for row, items in enumerate(exclude):
        scores[row, np.asarray(items, dtype=np.int64)] = -np.inf
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]
