"""L1 Domain Adaptive layer (Gong et al. 2023, §3.4, "Domain Adaptive Multi-Task")."""

from __future__ import annotations

from tfsr.contract import check_positive_int
from tfsr.layers.domain import DomainWeights, WeightBank, grouped_dense, select_domain

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfsr")
class DomainAdaptiveLayer(tf.keras.layers.Layer):
    """Maps each domain's fused representation into a common space: `x_hat = f_d(x)`.

    `f_d(x) = act(x (W + W_d) + b + b_d)`: a shared linear map plus a domain-specific residual map.
    The paper maps "inputs from multiple domains to a common vector space" with domain-specific
    parameters; we split each domain's map into a shared part and a per-domain correction because
    (1) the shared part carries what the domains have in common, so the alignment loss has a common
    space to act on, and (2) the correction starts at zero, so a domain added for cold-start
    fine-tuning begins exactly at the shared map, which is what we want when its data is small and
    L1 is frozen (the paper's best split).

    Args:
      units: output width U.
      num_domains: K.
      activation: activation of the output; None (linear, the default) keeps it a linear map.
      kernel_initializer: initializer of the shared kernel.

    Call args:
      inputs: `[B, D]`.
      domain_ids: `[B]` int.

    Output shape: `[B, U]`.
    """

    def __init__(
        self, units: int, num_domains: int, activation=None, kernel_initializer="glorot_uniform", **kwargs
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.activation = tf.keras.activations.get(activation)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.shared = WeightBank(name="shared", dtype=self.dtype_policy)
        self.domain_weights = DomainWeights(num_domains, name="domain_maps", dtype=self.dtype_policy)

    @property
    def num_domains(self) -> int:
        return self.domain_weights.num_domains

    def build(self, input_shape):
        input_dim = int(tf.TensorShape(input_shape)[-1])
        self.kernel = self.shared.add("kernel", (input_dim, self.units), self.kernel_initializer)
        self.bias = self.shared.add("bias", (self.units,), "zeros")
        self.domain_weights.add_family("kernel", (input_dim, self.units), "zeros")
        self.domain_weights.add_family("bias", (self.units,), "zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        residual = grouped_dense(
            inputs, self.domain_weights.stacked("kernel"), self.domain_weights.stacked("bias")
        )
        outputs = tf.matmul(inputs, self.kernel) + self.bias + select_domain(residual, domain_ids)
        return self.activation(outputs)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "num_domains": self.num_domains,
            "activation": tf.keras.activations.serialize(self.activation),
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        }
