"""The towers of two-tower retrieval: fused entity vectors -> one embedding space for contexts and items
(docs/MODEL.md, "Retrieval"; the first stage in front of the S&R Foundation ranker of Gong et al.,
CIKM 2023, https://arxiv.org/abs/2309.08939).
"""

from __future__ import annotations

from collections.abc import Sequence

from tfsr.layers.domain import DomainWeights, check_units, grouped_dense, select_domain
from tfsr.layers.experts import MLP

import tensorflow as tf

DOMAIN_MODES = ("output", "vector")


@tf.keras.utils.register_keras_serializable(package="tfsr")
class RetrievalTower(tf.keras.layers.Layer):
    """A tower of a two-tower model: `[B, D_in]` (+ the domain) -> `[B, units[-1]]`, L2-normalised.

    The hidden layers (`units[:-1]`, ReLU) are shared; the last layer (`units[-1]`, linear) gives the
    embedding. With `num_domains` the domain enters in one of two ways (`domain_mode`):

    * ``"output"``: one output layer per domain (as the rankers' per-domain towers): each domain maps the shared
      hidden vector into the embedding space its own way, and a new domain (`add_domain`) trains its own map
      while every other domain's stays as it was;
    * ``"vector"``: a learned vector per domain is concatenated to the input and every layer is shared.

    Per-domain weights are :class:`DomainWeights` families, so `add_domain` extends them. Without
    `num_domains` (the candidate tower) every layer is shared: one index of item vectors serves all domains.

    Args:
      units: widths of the layers; the last is the embedding width.
      num_domains: K, or None for a tower without the domain.
      domain_mode: "output" or "vector" (see above).
      domain_dim: width of the domain vector ("vector").
      normalize: L2-normalise the output (dot products become cosines; the task's temperature scales them).

    Call args: `inputs [B, D_in]`, `domain_ids [B]` (with `num_domains`).

    `shared_layers` are the weights every domain shares, what `freeze("L2_shared")` freezes.
    """

    def __init__(
        self,
        units: Sequence[int],
        num_domains: int | None = None,
        domain_mode: str = "output",
        domain_dim: int = 16,
        normalize: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if domain_mode not in DOMAIN_MODES:
            raise ValueError(f"domain_mode must be one of {DOMAIN_MODES}, got {domain_mode!r}")
        self.units = check_units("units", units)
        self.domain_mode = domain_mode
        self.domain_dim = int(domain_dim)
        self.normalize = bool(normalize)
        self.domain_weights = (
            DomainWeights(num_domains, name="domain_weights", dtype=self.dtype_policy)
            if num_domains is not None
            else None
        )
        self.hidden = (
            MLP(self.units[:-1], name="hidden", dtype=self.dtype_policy) if len(self.units) > 1 else None
        )
        self.per_domain_output = self.domain_weights is not None and domain_mode == "output"
        self.output_layer = (
            None
            if self.per_domain_output
            else tf.keras.layers.Dense(self.units[-1], name="output", dtype=self.dtype_policy)
        )

    @property
    def num_domains(self) -> int | None:
        return self.domain_weights.num_domains if self.domain_weights is not None else None

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        return [layer for layer in (self.hidden, self.output_layer) if layer is not None]

    def build(self, input_shape):
        width = int(input_shape[-1])
        if self.domain_weights is not None and self.domain_mode == "vector":
            self.domain_weights.add_family(
                "vector", (self.domain_dim,), tf.keras.initializers.RandomNormal(stddev=0.05)
            )
            width += self.domain_dim
        if self.per_domain_output:
            hidden_width = self.units[-2] if len(self.units) > 1 else width
            self.domain_weights.add_family("kernel", (hidden_width, self.units[-1]), "glorot_uniform")
            self.domain_weights.add_family("bias", (self.units[-1],), "zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor | None = None) -> tf.Tensor:
        x = tf.cast(inputs, self.compute_dtype)
        if self.domain_weights is not None and domain_ids is None:
            raise ValueError("a RetrievalTower with num_domains needs domain_ids in call(), got None")
        if self.domain_weights is not None and self.domain_mode == "vector":
            vectors = tf.gather(self.domain_weights.stacked("vector"), tf.cast(domain_ids, tf.int32))
            x = tf.concat([x, tf.cast(vectors, x.dtype)], axis=1)
        if self.hidden is not None:
            x = self.hidden(x)
        if self.per_domain_output:
            per_domain = grouped_dense(
                x, self.domain_weights.stacked("kernel"), self.domain_weights.stacked("bias")
            )
            x = select_domain(per_domain, domain_ids)
        else:
            x = self.output_layer(x)
        x = tf.cast(x, tf.float32)
        return tf.math.l2_normalize(x, axis=1) if self.normalize else x

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": list(self.units),
            "num_domains": self.num_domains,
            "domain_mode": self.domain_mode,
            "domain_dim": self.domain_dim,
            "normalize": self.normalize,
        }
