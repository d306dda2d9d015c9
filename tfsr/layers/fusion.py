"""L1 Aspect Gating Fusion (Gong et al., CIKM 2023, §3.3, "Aspect Gating Fusion",
https://arxiv.org/abs/2309.08939; docs/MODEL.md, "Architecture" and "Gate scale")."""

from __future__ import annotations

import math

from tfsr.contract import check_positive_int
from tfsr.layers.domain import DomainWeights, large_negative

import tensorflow as tf

GATING_STRATEGIES = ("domain", "cls", "mean")
# The defaults of the layer and of `ModelConfig` (tfsr.models.config), which reads them from here.
DEFAULT_GATE_SCALE = 1.0
DEFAULT_LEARN_GATE_SCALE = True
DEFAULT_GATE_INIT_STDDEV = 0.0


@tf.keras.utils.register_keras_serializable(package="tfsr")
class AspectGatingFusion(tf.keras.layers.Layer):
    """Fuses an entity's aspect vectors into one: `h = sum_a w_a * E_a`.

    Strategies (the paper's three):
      * "mean" (Mean-Pooling): `w_a = 1 / |A|` over the present aspects;
      * "cls" ([CLS]-Gating): `w_a = softmax_a(c . E_a * s)` with one learned vector `c`;
      * "domain" (Domain-Gating, the paper's best): `w_a = softmax_a(E_D[d] . E_a * s)` with one learned
        vector `E_D[d]` per domain (a :class:`DomainWeights` family, so domains can be added).

    `s = gate_scale * exp(t)`: `gate_scale` (None: `1 / sqrt(H)`) times, with `learn_gate_scale`, a learned
    temperature `exp(t)` (one `t` per domain for "domain", one for "cls"; `t` starts at 0). Absent aspects
    (mask False) get weight 0 and are excluded from the softmax; a sample with no aspect present gets
    zero weights and a zero vector (the model substitutes a learned "missing entity" vector). Gate vectors
    start at zero (`gate_init_stddev=0`), so every strategy starts as mean pooling and learns away from
    it; a newly added domain likewise starts from mean pooling.

    Why the scale matters (and why `ModelConfig` defaults to `gate_scale=1.0, learn_gate_scale=True`):
    under Adam every gate coordinate moves about `lr` per step whatever the gradient's size, so a logit
    `s * E_D[d] . E_a` moves by about `lr * s * |E_a - E_b|_1` per step. With fresh embeddings
    (entries ~0.05, H = 32), `s = 1/sqrt(H)` and lr 1e-3 that is ~2e-4 logit per step at best: after 500 steps of
    the paper study the gates were still within 0.003 of mean pooling, and the gating ablation measured
    nothing. `s = 1` is the paper's formula as written (it has no temperature) and is ~6x faster; the learned
    temperature is multiplicative, so once a gate has found a direction it sharpens it quickly (it
    gets no gradient while the gates are zero, hence starts exactly at the paper's formula). Non-zero
    gate initialisation (`gate_init_stddev`) was tried and is not the default: it starts each domain
    at a random, non-neutral weighting without learning faster (`tests/test_layers_fusion.py` has
    the synthetic check: one aspect informative per domain).

    Args:
      strategy: "domain", "cls" or "mean".
      num_domains: K; required for "domain".
      gate_scale: the fixed multiplier of the gate logits; None for `1 / sqrt(H)`. Default 1.0.
      gate_init_stddev: standard deviation of the gate vectors' normal initialisation; 0 (default) = zeros.
      learn_gate_scale: learn a temperature `exp(t)` multiplying `gate_scale` (per domain for "domain");
        default True. The defaults are `ModelConfig`'s.

    Call args:
      aspects: `[B, A, H]` aspect vectors.
      domain_ids: `[B]` int domain ids (used by "domain").
      aspect_mask: `[B, A]` or `[A]` bool, True where an aspect is present; None = all present.

    Returns:
      `(fused [B, H], weights [B, A])`.

    Example:
      >>> fusion = AspectGatingFusion("domain", num_domains=3)
      >>> fused, weights = fusion(aspects, domain_ids=ids, aspect_mask=mask)
    """

    def __init__(
        self,
        strategy: str = "domain",
        num_domains: int | None = None,
        gate_scale: float | None = DEFAULT_GATE_SCALE,
        gate_init_stddev: float = DEFAULT_GATE_INIT_STDDEV,
        learn_gate_scale: bool = DEFAULT_LEARN_GATE_SCALE,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strategy not in GATING_STRATEGIES:
            raise ValueError(f"strategy must be one of {GATING_STRATEGIES}, got {strategy!r}")
        if strategy == "domain" and num_domains is None:
            raise ValueError("strategy='domain' needs num_domains, got None")
        if gate_scale is not None and not gate_scale > 0:
            raise ValueError(f"gate_scale must be positive or None, got {gate_scale!r}")
        if not gate_init_stddev >= 0:
            raise ValueError(f"gate_init_stddev must be >= 0, got {gate_init_stddev!r}")
        self.strategy = strategy
        self.gate_scale = gate_scale
        self.gate_init_stddev = float(gate_init_stddev)
        self.learn_gate_scale = bool(learn_gate_scale)
        self.domain_weights = (
            DomainWeights(
                check_positive_int("num_domains", num_domains), name="domain_gates", dtype=self.dtype_policy
            )
            if strategy == "domain"
            else None
        )
        self._num_domains = num_domains

    @property
    def num_domains(self) -> int | None:
        return self.domain_weights.num_domains if self.domain_weights is not None else self._num_domains

    def build(self, input_shape):
        width = tf.TensorShape(input_shape)[-1]
        if width is None:
            raise ValueError(f"AspectGatingFusion needs a known width H, got aspects shape {input_shape}")
        self.width = int(width)
        initializer = (
            tf.keras.initializers.RandomNormal(stddev=self.gate_init_stddev)
            if self.gate_init_stddev > 0
            else "zeros"
        )
        if self.strategy == "domain":
            self.domain_weights.add_family("gate", (self.width,), initializer=initializer)
            if self.learn_gate_scale:
                self.domain_weights.add_family("log_scale", (), initializer="zeros")
        elif self.strategy == "cls":
            self.cls_vector = self.add_weight(name="cls_vector", shape=(self.width,), initializer=initializer)
            if self.learn_gate_scale:
                self.log_scale = self.add_weight(name="log_scale", shape=(), initializer="zeros")
        super().build(input_shape)

    def _scale(self) -> float:
        """The fixed part of `s`: `gate_scale`, or `1 / sqrt(H)` when None."""
        return self.gate_scale if self.gate_scale is not None else 1.0 / math.sqrt(self.width)

    def call(
        self, aspects: tf.Tensor, domain_ids: tf.Tensor | None = None, aspect_mask: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        aspects = tf.cast(aspects, self.compute_dtype)
        batch, num_aspects = tf.shape(aspects)[0], tf.shape(aspects)[1]
        mask = (
            tf.ones([batch, num_aspects], tf.bool)
            if aspect_mask is None
            else tf.broadcast_to(tf.cast(aspect_mask, tf.bool), [batch, num_aspects])
        )
        if self.strategy == "mean":
            weights = tf.cast(mask, aspects.dtype)
            weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=1, keepdims=True))
        else:
            if self.strategy == "domain":
                if domain_ids is None:
                    raise ValueError("strategy='domain' needs domain_ids in call(), got None")
                ids = tf.cast(domain_ids, tf.int32)
                query = tf.gather(self.domain_weights.stacked("gate"), ids)  # [B, H]
                log_scale = (
                    tf.gather(self.domain_weights.stacked("log_scale"), ids)[:, None]
                    if self.learn_gate_scale
                    else None
                )
            else:
                query = tf.broadcast_to(self.cls_vector[None, :], [batch, self.width])
                log_scale = self.log_scale if self.learn_gate_scale else None
            logits = tf.einsum("bh,bah->ba", query, aspects) * self._scale()
            if log_scale is not None:
                logits = logits * tf.exp(log_scale)
            masked = tf.fill(tf.shape(logits), tf.constant(large_negative(logits.dtype), logits.dtype))
            logits = tf.where(mask, logits, masked)
            # Multiplying by the mask makes absent weights exactly 0, also in rows with no aspect present.
            weights = tf.nn.softmax(logits, axis=1) * tf.cast(mask, logits.dtype)
        fused = tf.einsum("ba,bah->bh", weights, aspects)
        return fused, weights

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "strategy": self.strategy,
            "num_domains": self.num_domains,
            "gate_scale": self.gate_scale,
            "gate_init_stddev": self.gate_init_stddev,
            "learn_gate_scale": self.learn_gate_scale,
        }
