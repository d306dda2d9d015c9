"""Per-domain calibration of the logit (Platt scaling), fitted after training on a validation slice.

A multi-domain model's towers are trained with one loss over domains whose label rates differ and drift
over time; a domain's predicted CTR can be far from its click rate (the search domain's mean prediction
was 0.42 against a 0.20 label rate) even where it ranks well. Serving a CTR that is used as a probability
(bidding, blending with other scores, thresholds) needs each domain calibrated.

:class:`DomainCalibration` maps each sample's logit `z` to `a_d * z + b_d` with its domain's `(a_d, b_d)`
(one :class:`~tfsr.layers.domain.DomainWeights` family each, so `add_domain` extends it). The layer is not
trained by gradient descent: it starts as the identity (`a = 1`, `b = 0`) and :func:`fit_platt` sets a
domain's pair by minimising the log loss on held-out predictions (Platt 1999). `a_d` is kept positive,
so the map is strictly increasing and every ranking metric (AUC, GAUC) is unchanged by calibration.
"""

from __future__ import annotations

from tfsr.contract import check_positive_int
from tfsr.layers.domain import DomainWeights

import numpy as np
import tensorflow as tf

MIN_SCALE = 1e-3  # keeps the calibration map strictly increasing (rankings unchanged)


@tf.keras.utils.register_keras_serializable(package="tfsr")
class DomainCalibration(tf.keras.layers.Layer):
    """Per-domain affine map of the logit, `z -> a_d * z + b_d` (Platt scaling).

    Its variables are non-trainable (whatever the layer's `trainable` says): they are set by
    :meth:`set_domain` from :func:`fit_platt`, never by the optimizer, so training sees the identity until a
    stage calibrates, and fine-tuning one domain leaves every other domain's pair as it was.

    Args:
      num_domains: K.

    Call args: `logits [B]`, `domain_ids [B]` int. Output: `[B]` calibrated logits.

    Example:
      >>> calibration = DomainCalibration(num_domains=2)
      >>> calibration.set_domain(1, scale=0.5, shift=-1.0)
      >>> calibration(tf.constant([2.0, 2.0]), tf.constant([0, 1]))   # [2.0, 0.0]
    """

    def __init__(self, num_domains: int, **kwargs):
        super().__init__(**kwargs)
        self.domain_weights = DomainWeights(
            check_positive_int("num_domains", num_domains), name="calibration", dtype=self.dtype_policy
        )
        self.domain_weights.add_family("scale", (), "ones", trainable=False)
        self.domain_weights.add_family("shift", (), "zeros", trainable=False)

    @property
    def num_domains(self) -> int:
        return self.domain_weights.num_domains

    def call(self, logits: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        params = tf.stack(
            [self.domain_weights.stacked("scale"), self.domain_weights.stacked("shift")], axis=1
        )  # [K, 2]
        chosen = tf.gather(params, tf.cast(domain_ids, tf.int32))  # [B, 2]
        return tf.cast(chosen[:, 0], logits.dtype) * logits + tf.cast(chosen[:, 1], logits.dtype)

    def domain(self, domain_id: int) -> tuple[float, float]:
        """`(scale, shift)` of one domain."""
        families = self.domain_weights.families
        return float(families["scale"][domain_id].numpy()), float(families["shift"][domain_id].numpy())

    def set_domain(self, domain_id: int, scale: float, shift: float) -> None:
        """Sets one domain's pair; `scale` must be positive (a calibration never reverses a ranking)."""
        if not 0 <= domain_id < self.num_domains:
            raise ValueError(f"domain_id must be in [0, {self.num_domains}), got {domain_id!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.domain_weights.families["scale"][domain_id].assign(scale)
        self.domain_weights.families["shift"][domain_id].assign(shift)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_domains": self.num_domains}


def fit_platt(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """The `(a, b)` minimising the mean log loss of `sigmoid(a * logit + b)` on `labels`, with `a >= 1e-3`.

    Newton's method on the two parameters (the problem is convex). When the unconstrained optimum has
    `a < 1e-3` (the logits carry no signal, or a reversed one, on this slice) `a` is held at 1e-3 and
    only `b` is fitted: the predictions then sit near the slice's click rate while keeping their order.
    A slice with a single class carries no calibration signal: the identity `(1, 0)` is returned.
    """
    z = np.asarray(logits, np.float64).reshape(-1)
    y = np.asarray(labels, np.float64).reshape(-1)
    if z.size == 0 or y.min() == y.max():
        return 1.0, 0.0

    def newton(a: float, b: float, fit_scale: bool) -> tuple[float, float]:
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -50.0, 50.0)))
            w = p * (1.0 - p) + 1e-12
            if fit_scale:
                grad = np.array([np.mean((p - y) * z), np.mean(p - y)])
                hess = np.array([[np.mean(w * z * z), np.mean(w * z)], [np.mean(w * z), np.mean(w)]])
                step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
            else:
                step = np.array([0.0, np.mean(p - y) / np.mean(w)])
            a, b = a - step[0], b - step[1]
            if np.max(np.abs(step)) < 1e-10:
                break
        return a, b

    a, b = newton(1.0, 0.0, fit_scale=True)
    if not (np.isfinite(a) and np.isfinite(b)) or a < MIN_SCALE:
        a, b = newton(MIN_SCALE, 0.0, fit_scale=False)
    return float(a), float(b)
