"""Domain alignment regularisers `L_reg` between the domains present in a batch (Gong et al. 2023, §3.4).

Both take the adapted representations `x_hat [B, D]` and each sample's domain id, and sum a
symmetric divergence over the pairs `i < j` of domains that have at least one sample in the batch
(absent domains are masked out, so a batch with one domain gives exactly 0):

* :func:`js_divergence_alignment` (the paper's best): each domain's distribution is
  `p_k = softmax(mean_{s in k} x_hat_s / tau)` over the D dimensions, and
  `JS(P||Q) = KL(P||M)/2 + KL(Q||M)/2` with `M = (P+Q)/2` (natural log, so `0 <= JS <= log 2`);
* :func:`mmd_alignment`: the (biased) squared Maximum Mean Discrepancy between the domains' sample
  sets with a Gaussian kernel `k(x, y) = exp(-|x-y|^2 / (2 sigma^2))`.
"""

from __future__ import annotations

import math

from tfsr.contract import check_positive_int

import tensorflow as tf


def _domain_stats(domain_ids: tf.Tensor, num_domains: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One-hot `[B, K]`, counts `[K]` and the mask `[K, K]` of present pairs i < j."""
    check_positive_int("num_domains", num_domains)
    onehot = tf.one_hot(tf.cast(tf.reshape(domain_ids, [-1]), tf.int32), num_domains, dtype=tf.float32)
    counts = tf.reduce_sum(onehot, axis=0)
    present = counts > 0
    upper = tf.linalg.band_part(tf.ones([num_domains, num_domains], tf.bool), 0, -1) & ~tf.eye(
        num_domains, dtype=tf.bool
    )
    pairs = upper & present[:, None] & present[None, :]
    return onehot, counts, tf.cast(pairs, tf.float32)


def js_divergence_alignment(
    x_hat: tf.Tensor, domain_ids: tf.Tensor, num_domains: int, temperature: float = 1.0
) -> tf.Tensor:
    """Sum of pairwise Jensen-Shannon divergences between the domains present in the batch.

    Args:
      x_hat: `[B, D]` adapted representations.
      domain_ids: `[B]` int domain ids in `[0, num_domains)`.
      num_domains: K.
      temperature: tau > 0 of the softmax that turns a domain's mean vector into a distribution.

    Returns:
      A scalar >= 0; at most `log(2)` per pair of present domains.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    onehot, counts, pairs = _domain_stats(domain_ids, num_domains)
    x_hat = tf.cast(x_hat, tf.float32)
    means = tf.matmul(onehot, x_hat, transpose_a=True) / tf.maximum(counts, 1.0)[:, None]  # [K, D]
    log_p = tf.nn.log_softmax(means / temperature, axis=-1)
    p = tf.exp(log_p)
    log_pi, log_pj = log_p[:, None, :], log_p[None, :, :]
    log_m = tf.experimental.numpy.logaddexp(log_pi, log_pj) - math.log(2.0)  # log((P_i + P_j) / 2)
    kl_i_m = tf.reduce_sum(p[:, None, :] * (log_pi - log_m), axis=-1)  # KL(P_i || M_ij), [K, K]
    js = 0.5 * (kl_i_m + tf.transpose(kl_i_m))
    return tf.reduce_sum(js * pairs)


def mmd_alignment(
    x_hat: tf.Tensor, domain_ids: tf.Tensor, num_domains: int, bandwidth: float = 1.0
) -> tf.Tensor:
    """Sum of pairwise squared MMDs (Gaussian kernel) between the domains present in the batch.

    `MMD^2(i, j) = mean k(X_i, X_i) + mean k(X_j, X_j) - 2 mean k(X_i, X_j)` (biased estimator:
    exactly 0 when the two sample sets are identical).

    Args:
      x_hat: `[B, D]` adapted representations.
      domain_ids: `[B]` int domain ids in `[0, num_domains)`.
      num_domains: K.
      bandwidth: sigma > 0 of the Gaussian kernel.

    Returns:
      A scalar >= 0 (up to rounding).
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    onehot, counts, pairs = _domain_stats(domain_ids, num_domains)
    x_hat = tf.cast(x_hat, tf.float32)
    sq_norms = tf.reduce_sum(tf.square(x_hat), axis=-1)
    sq_dists = tf.maximum(
        sq_norms[:, None] + sq_norms[None, :] - 2.0 * tf.matmul(x_hat, x_hat, transpose_b=True), 0.0
    )
    kernel = tf.exp(-sq_dists / (2.0 * bandwidth**2))
    safe_counts = tf.maximum(counts, 1.0)
    mean_kernel = tf.matmul(tf.matmul(onehot, kernel, transpose_a=True), onehot) / (
        safe_counts[:, None] * safe_counts[None, :]
    )  # [K, K]
    diag = tf.linalg.diag_part(mean_kernel)
    mmd = diag[:, None] + diag[None, :] - 2.0 * mean_kernel
    return tf.reduce_sum(mmd * pairs)


ALIGNMENTS = {"js": js_divergence_alignment, "mmd": mmd_alignment}
