"""Per-domain offline evaluation of CTR models: AUC, GAUC, log loss, calibration and gate weights.

The metrics are plain numpy (no TensorFlow, no scikit-learn), so they can be checked by hand and reused on
scores that did not come from a tfsr model (the text-similarity baseline of the paper study, for one).

* :func:`auc` — ROC AUC by the rank-sum (Mann-Whitney) formula with **average ranks for ties**, so a
  constant score gets exactly 0.5.
* :func:`gauc` — group (user) AUC: the AUC inside each user's impressions, averaged with the user's number
  of impressions as weight; users whose impressions are all of one class are skipped (their AUC is undefined).
* :func:`log_loss`, :func:`constant_log_loss` — the binary cross-entropy of the scores and the floor a model
  with no features reaches: the entropy of the positive rate, i.e. the log loss of always predicting the
  evaluation set's own positive rate (an *oracle* constant: a model that does not beat it has learnt nothing
  about the ranking *or* the calibration of that set).
* :func:`evaluate_arrays` — all of the above per domain, with the cold-start domains and the
  item-cold-start subset (``is_cold_item == 1``) reported separately, and the mean aspect gate weights
  per domain.
* :func:`predict_dataset` / :func:`evaluate_model` — run a model over a ``tf.data`` pipeline and collect
  what :func:`evaluate_arrays` needs.

The report layout is documented in ``docs/TRAINING.md``; :mod:`tfsr.report` renders it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tfsr.contract import ASPECTS, ENTITIES

import numpy as np

EPS = 1e-7


# --------------------------------------------------------------------------- metrics
def _as_1d(name: str, values: Any, dtype=np.float64) -> np.ndarray:
    arr = (
        np.asarray(values, dtype=dtype).reshape(-1) if np.ndim(values) else np.asarray([values], dtype=dtype)
    )
    return arr


def _check_binary(labels: np.ndarray) -> None:
    if labels.size and not np.all((labels == 0) | (labels == 1)):
        bad = labels[(labels != 0) & (labels != 1)][:5]
        raise ValueError(f"labels must be 0 or 1, got values like {bad.tolist()}")


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of the ranks they span (like scipy's 'average')."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.size
    if n == 0:
        return np.zeros(0)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # run boundaries of equal values
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = sorted_vals[1:] != sorted_vals[:-1]
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n) - 1  # inclusive, 0-based
    mean_rank = (starts + ends) / 2.0 + 1.0
    ranks = np.empty(n)
    ranks[order] = mean_rank[run_id]
    return ranks


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC with ties counted as half (average ranks). NaN when only one class is present.

    Example:
      >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
      0.75
    """
    labels = _as_1d("labels", labels)
    scores = _as_1d("scores", scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores must have the same length, got {labels.size} and {scores.size}")
    _check_binary(labels)
    n_pos = float(labels.sum())
    n_neg = float(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels, scores, groups) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUCs, skipping groups with only one class.

    Vectorised: one lexicographic sort by (group, score), average ranks inside each group, and a bincount.

    Returns:
      (gauc, number of groups that counted). gauc is NaN when no group has both classes.
    """
    labels = _as_1d("labels", labels)
    scores = _as_1d("scores", scores)
    groups = np.asarray(groups).reshape(-1)
    if not (labels.shape == scores.shape == groups.shape):
        raise ValueError(
            f"labels, scores and groups must have the same length, got "
            f"{labels.size}, {scores.size} and {groups.size}"
        )
    _check_binary(labels)
    n = labels.size
    if n == 0:
        return float("nan"), 0
    _, gidx = np.unique(groups, return_inverse=True)
    gidx = gidx.reshape(-1)
    order = np.lexsort((scores, gidx))
    g = gidx[order]
    s = scores[order]
    y = labels[order]
    idx = np.arange(n)
    group_start_flag = np.empty(n, dtype=bool)
    group_start_flag[0] = True
    group_start_flag[1:] = g[1:] != g[:-1]
    group_start = np.maximum.accumulate(np.where(group_start_flag, idx, 0))
    # tie runs: same group and same score
    run_flag = group_start_flag.copy()
    run_flag[1:] |= s[1:] != s[:-1]
    run_id = np.cumsum(run_flag) - 1
    run_starts = np.flatnonzero(run_flag)
    run_ends = np.append(run_starts[1:], n) - 1
    run_mean_pos = (run_starts + run_ends) / 2.0  # 0-based global position
    rank_in_group = run_mean_pos[run_id] - group_start + 1.0
    n_groups = int(g.max()) + 1
    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_all = np.bincount(g, minlength=n_groups).astype(np.float64)
    n_neg = n_all - n_pos
    rank_pos = np.bincount(g, weights=rank_in_group * y, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan"), 0
    group_auc = (rank_pos[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    weights = n_all[valid]
    return float(np.sum(group_auc * weights) / np.sum(weights)), int(valid.sum())


def log_loss(labels, probs, eps: float = EPS) -> float:
    """Mean binary cross-entropy (natural log) of probabilities clipped to [eps, 1 - eps]."""
    labels = _as_1d("labels", labels)
    probs = np.clip(_as_1d("probs", probs), eps, 1.0 - eps)
    if labels.shape != probs.shape:
        raise ValueError(f"labels and probs must have the same length, got {labels.size} and {probs.size}")
    if labels.size == 0:
        return float("nan")
    _check_binary(labels)
    return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))


def constant_log_loss(labels, eps: float = EPS) -> float:
    """Log loss of always predicting the set's own positive rate (the entropy of that rate)."""
    labels = _as_1d("labels", labels)
    if labels.size == 0:
        return float("nan")
    p = float(np.clip(labels.mean(), eps, 1 - eps))
    return float(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def binary_metrics(labels, probs, groups=None) -> dict[str, Any]:
    """Every metric of one slice of rows, as a JSON-friendly dict."""
    labels = _as_1d("labels", labels)
    probs = _as_1d("probs", probs)
    out: dict[str, Any] = {
        "count": int(labels.size),
        "positives": int(labels.sum()) if labels.size else 0,
        "pos_rate": float(labels.mean()) if labels.size else float("nan"),
        "mean_ctr": float(probs.mean()) if probs.size else float("nan"),
        "auc": auc(labels, probs) if labels.size else float("nan"),
        "logloss": log_loss(labels, probs),
        "logloss_const": constant_log_loss(labels),
    }
    if groups is not None:
        g, n = gauc(labels, probs, groups)
        out["gauc"] = g
        out["gauc_groups"] = n
        out["users"] = int(np.unique(np.asarray(groups)).size) if labels.size else 0
    return out


# --------------------------------------------------------------------------- per-domain evaluation
def _str_array(values) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in ("S", "O"):
        arr = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr])
    return arr


def evaluate_arrays(
    labels,
    probs,
    domains,
    users=None,
    is_cold_item=None,
    gate_weights=None,
    cold_domains: Iterable[str] = (),
    domain_kinds: Mapping[str, str] | None = None,
    entity_names: Sequence[str] = ENTITIES,
    aspect_names: Sequence[str] = ASPECTS,
) -> dict[str, Any]:
    """The evaluation report's metrics from flat arrays (one entry per impression).

    Args:
      labels: [N] 0/1 clicks.
      probs: [N] predicted CTRs.
      domains: [N] domain names (str or bytes).
      users: [N] user ids for GAUC (optional).
      is_cold_item: [N] 1 where the item had (almost) no training interactions (optional).
      gate_weights: [N, entities, aspects] aspect gate weights (optional).
      cold_domains: names of cold-start domains; they are reported but left out of ``overall_warm``.
      domain_kinds: optional {domain: "search" | "rec"} for the report.

    Returns:
      ``{"domains": {name: metrics}, "overall": metrics, "overall_warm": metrics,
      "item_cold_start": {name | "all": metrics}, "gate_weights": {name: {...}}, "cold_domains": [...]}``
      where metrics is :func:`binary_metrics`' dict (plus ``kind`` and ``cold_start`` per domain).
    """
    labels = _as_1d("labels", labels)
    probs = _as_1d("probs", probs)
    domains = _str_array(domains)
    n = labels.size
    if probs.size != n or domains.size != n:
        raise ValueError(
            f"labels, probs and domains must have the same length, got {n}, {probs.size}, {domains.size}"
        )
    users_arr = _str_array(users) if users is not None else None
    cold_item = _as_1d("is_cold_item", is_cold_item, np.int64) if is_cold_item is not None else None
    cold_domains = [str(d) for d in cold_domains]
    kinds = dict(domain_kinds or {})

    def metrics(mask):
        return binary_metrics(labels[mask], probs[mask], users_arr[mask] if users_arr is not None else None)

    report: dict[str, Any] = {
        "domains": {},
        "item_cold_start": {},
        "gate_weights": {},
        "cold_domains": cold_domains,
    }
    order = {name: i for i, name in enumerate(kinds)}  # the registry's order when given
    present = sorted(set(domains.tolist()), key=lambda d: (d in cold_domains, order.get(d, len(order)), d))
    for name in present:
        mask = domains == name
        m = metrics(mask)
        m["kind"] = kinds.get(name)
        m["cold_start"] = name in cold_domains
        report["domains"][name] = m
        if cold_item is not None:
            cmask = mask & (cold_item == 1)
            if cmask.any():
                report["item_cold_start"][name] = metrics(cmask)
        if gate_weights is not None:
            gw = np.asarray(gate_weights, dtype=np.float64)
            if gw.shape[0] != n:
                raise ValueError(f"gate_weights must have {n} rows, got shape {gw.shape}")
            report["gate_weights"][name] = {
                "entities": list(entity_names)[: gw.shape[1]],
                "aspects": list(aspect_names)[: gw.shape[2]],
                "mean": gw[mask].mean(axis=0).round(6).tolist(),
            }
    if n:
        report["overall"] = metrics(np.ones(n, dtype=bool))
        warm = ~np.isin(domains, cold_domains)
        if warm.any() and not warm.all():
            report["overall_warm"] = metrics(warm)
        if cold_item is not None and (cold_item == 1).any():
            report["item_cold_start"]["all"] = metrics(cold_item == 1)
    return report


# --------------------------------------------------------------------------- running a model
def predict_dataset(model, dataset, max_batches: int | None = None) -> dict[str, np.ndarray]:
    """Runs ``model(features, training=False)`` over a finite dataset; returns concatenated arrays.

    Collected: ``ctr``, ``logit`` (when the model outputs it), ``label``, ``domain``, ``user_id``, ``is_cold_item`` (when present), ``gate_weights``
    (when the model outputs them) and ``item_id``.
    """
    import tensorflow as tf

    def _call(batch):
        return model(batch, training=False)

    # one trace for all batches (the batch dimension of the element spec is None)
    _predict = (
        tf.function(_call, input_signature=[dataset.element_spec])
        if isinstance(dataset.element_spec, Mapping)
        else tf.function(_call, reduce_retracing=True)
    )

    keep = ("label", "domain", "user_id", "item_id", "is_cold_item")
    chunks: dict[str, list[np.ndarray]] = {}
    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        if isinstance(batch, tuple):  # (features, label)
            features, label = batch[0], batch[1]
            features = dict(features)
            features["label"] = label
        else:
            features = batch
        outputs = _predict(features)
        if not isinstance(outputs, Mapping):
            outputs = {"ctr": outputs}
        chunks.setdefault("ctr", []).append(np.asarray(outputs["ctr"]).reshape(-1))
        if "logit" in outputs:
            chunks.setdefault("logit", []).append(np.asarray(outputs["logit"]).reshape(-1))
        if "gate_weights" in outputs and outputs["gate_weights"] is not None:
            chunks.setdefault("gate_weights", []).append(np.asarray(outputs["gate_weights"]))
        for key in keep:
            if key in features:
                chunks.setdefault(key, []).append(np.asarray(features[key]).reshape(-1))
    if not chunks:
        raise ValueError("the evaluation dataset is empty")
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def evaluate_predictions(
    preds: Mapping[str, np.ndarray], spec=None, cold_domains: Iterable[str] | None = None
):
    """:func:`evaluate_arrays` on the output of :func:`predict_dataset`."""
    kinds = {}
    if spec is not None:
        kinds = {d.name: d.kind for d in spec.domains}
        if cold_domains is None:
            cold_domains = [d.name for d in spec.domains.cold()]
    return evaluate_arrays(
        preds["label"],
        preds["ctr"],
        preds["domain"],
        users=preds.get("user_id"),
        is_cold_item=preds.get("is_cold_item"),
        gate_weights=preds.get("gate_weights"),
        cold_domains=cold_domains or (),
        domain_kinds=kinds,
    )


def evaluate_model(
    model, dataset, spec=None, cold_domains: Iterable[str] | None = None, max_batches: int | None = None
) -> dict[str, Any]:
    """Predicts over `dataset` and computes the per-domain report metrics."""
    return evaluate_predictions(predict_dataset(model, dataset, max_batches), spec, cold_domains)


__all__ = [
    "auc",
    "gauc",
    "average_ranks",
    "log_loss",
    "constant_log_loss",
    "binary_metrics",
    "evaluate_arrays",
    "predict_dataset",
    "evaluate_predictions",
    "evaluate_model",
]
