"""The towers of two-tower retrieval: fused entity vectors -> one embedding space for contexts and items
(docs/MODEL.md, "Retrieval"; the first stage in front of the S&R Foundation ranker of Gong et al.,
CIKM 2023, https://arxiv.org/abs/2309.08939).
"""

from __future__ import annotations

from collections.abc import Sequence

from tfsr.layers.domain import DomainWeights, check_units
from tfsr.layers.experts import MLP

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfsr")
class RetrievalTower(tf.keras.layers.Layer):
    """A tower of a two-tower model: `[B, D_in]` (+ the domain) -> `[B, units[-1]]`, L2-normalised.

    The hidden layers are ReLU, the last one linear (`MLP` with a linear head). With `num_domains`, a
    learned vector per domain (a :class:`DomainWeights` family, so `add_domain` extends it) is concatenated
    to the input: the same user gets a different context embedding in each domain, which is what lets one
    index over the whole catalogue serve every domain.

    Args:
      units: widths of the layers; the last is the embedding width.
      num_domains: K for the domain vector (the context tower), None for none (the candidate tower).
      domain_dim: width of the domain vector.
      normalize: L2-normalise the output (dot products become cosines; the task's temperature scales them).

    Call args: `inputs [B, D_in]`, `domain_ids [B]` (with `num_domains`).

    `shared_layers` are the weights every domain shares (the MLP), what `freeze("L2_shared")` freezes; the
    domain vectors stay apart, so a cold-start domain can learn its own while the shared map stays fixed.
    """

    def __init__(
        self,
        units: Sequence[int],
        num_domains: int | None = None,
        domain_dim: int = 16,
        normalize: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_units("units", units)
        self.domain_dim = int(domain_dim)
        self.normalize = bool(normalize)
        self.domain_vectors = (
            DomainWeights(num_domains, name="domain_vectors", dtype=self.dtype_policy)
            if num_domains is not None
            else None
        )
        self.hidden = (
            MLP(self.units[:-1], name="hidden", dtype=self.dtype_policy) if len(self.units) > 1 else None
        )
        self.output_layer = tf.keras.layers.Dense(self.units[-1], name="output", dtype=self.dtype_policy)

    @property
    def num_domains(self) -> int | None:
        return self.domain_vectors.num_domains if self.domain_vectors is not None else None

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        return [layer for layer in (self.hidden, self.output_layer) if layer is not None]

    def build(self, input_shape):
        if self.domain_vectors is not None:
            self.domain_vectors.add_family(
                "vector", (self.domain_dim,), tf.keras.initializers.RandomNormal(stddev=0.05)
            )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor | None = None) -> tf.Tensor:
        x = tf.cast(inputs, self.compute_dtype)
        if self.domain_vectors is not None:
            if domain_ids is None:
                raise ValueError("a RetrievalTower with num_domains needs domain_ids in call(), got None")
            vectors = tf.gather(self.domain_vectors.stacked("vector"), tf.cast(domain_ids, tf.int32))
            x = tf.concat([x, tf.cast(vectors, x.dtype)], axis=1)
        if self.hidden is not None:
            x = self.hidden(x)
        x = tf.cast(self.output_layer(x), tf.float32)
        return tf.math.l2_normalize(x, axis=1) if self.normalize else x

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": list(self.units),
            "num_domains": self.num_domains,
            "domain_dim": self.domain_dim,
            "normalize": self.normalize,
        }
