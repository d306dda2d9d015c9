"""L2 multi-task blocks: shared experts, per-domain gates and towers.

* :class:`MMoE` — Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): shared experts, one softmax
  gate per domain. The S&R Foundation model's L2 (Gong et al. 2023, §3.4) and a baseline.
* :class:`PLE` — Progressive Layered Extraction built from CGC levels (Tang et al., RecSys 2020):
  shared experts plus domain-specific experts, per-domain gates, a shared gate between levels.
* :class:`STAR` — the star-topology FCN (Sheng et al., CIKM 2021): each layer's weights are the
  element-wise product of shared and domain-specific weights, biases their sum.
* :class:`MLP` — a shared bottom (the SharedBottom and single-domain baselines).
* :class:`DomainTowers` / :class:`SharedTower` — heads giving one logit per sample.

Every block maps `(inputs [B, D], domain_ids [B])` to `[B, U]` (towers: `[B]` logits) and lists in
`shared_layers` the sublayers that `freeze("L2_shared")` freezes. Per-domain parameters live in
:class:`~tfsr.layers.domain.DomainWeights`, so `add_domain()` works on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfsr.contract import check_positive_int
from tfsr.layers.domain import (
    DomainWeights,
    WeightBank,
    check_units,
    grouped_dense,
    select_domain,
)

import tensorflow as tf


def _layer_dims(input_dim: int, units: Sequence[int]) -> list[tuple[int, int]]:
    dims = [input_dim, *units]
    return list(zip(dims[:-1], dims[1:], strict=True))


class _BlockBase(tf.keras.layers.Layer):
    """Shared constructor checks and config of the blocks (units + activation)."""

    def __init__(self, units: Sequence[int], activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.units = check_units("units", units)
        self.activation = tf.keras.activations.get(activation)

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        """The sublayers holding parameters shared by all domains (frozen by `freeze("L2_shared")`)."""
        return [self]

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": list(self.units),
            "activation": tf.keras.activations.serialize(self.activation),
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class MLP(_BlockBase):
    """A stack of dense layers shared by every domain (a shared bottom).

    Args:
      units: widths of the layers.
      activation: activation after every layer.

    Call args: `inputs [B, D]`, `domain_ids` (ignored; present for the common block signature).
    Output shape: `[B, units[-1]]`.
    """

    def build(self, input_shape):
        self.dense_layers = [
            tf.keras.layers.Dense(u, activation=self.activation, name=f"dense_{i}", dtype=self.dtype_policy)
            for i, u in enumerate(self.units)
        ]
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor | None = None) -> tf.Tensor:
        for layer in self.dense_layers:
            inputs = layer(inputs)
        return inputs


@tf.keras.utils.register_keras_serializable(package="tfsr")
class ExpertBank(_BlockBase):
    """`num_experts` MLP experts of the same shape, computed together with grouped matmuls.

    Args:
      num_experts: E.
      units: widths of each expert's layers.
      activation: activation after every layer.

    Input shape: `[B, D]`. Output shape: `[B, E, units[-1]]`.
    """

    def __init__(self, num_experts: int, units: Sequence[int], activation="relu", **kwargs):
        super().__init__(units, activation, **kwargs)
        self.num_experts = check_positive_int("num_experts", num_experts)

    def build(self, input_shape):
        self.kernels, self.biases = [], []
        for i, (d_in, d_out) in enumerate(_layer_dims(int(input_shape[-1]), self.units)):
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{i}", shape=(self.num_experts, d_in, d_out), initializer="glorot_uniform"
                )
            )
            self.biases.append(
                self.add_weight(name=f"bias_{i}", shape=(self.num_experts, d_out), initializer="zeros")
            )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        for kernel, bias in zip(self.kernels, self.biases, strict=True):
            inputs = self.activation(grouped_dense(inputs, kernel, bias))
        return inputs

    def get_config(self) -> dict:
        return {**super().get_config(), "num_experts": self.num_experts}


@tf.keras.utils.register_keras_serializable(package="tfsr")
class DomainTowers(_BlockBase):
    """One MLP tower per domain ending in a logit; each sample goes through its own domain's tower.

    Args:
      num_domains: K.
      units: hidden widths of each tower (a final 1-unit linear layer is added).
      activation: activation of the hidden layers.

    Call args: `inputs [B, D]` (or `[B, K, D]`, one input per domain), `domain_ids [B]`.
    Output shape: `[B]` logits.
    """

    def __init__(self, num_domains: int, units: Sequence[int] = (32,), activation="relu", **kwargs):
        super().__init__(units, activation, **kwargs)
        self.domain_weights = DomainWeights(num_domains, name="towers", dtype=self.dtype_policy)

    @property
    def num_domains(self) -> int:
        return self.domain_weights.num_domains

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        return []

    def build(self, input_shape):
        self.num_layers = len(self.units) + 1
        for i, (d_in, d_out) in enumerate(_layer_dims(int(input_shape[-1]), (*self.units, 1))):
            self.domain_weights.add_family(f"kernel_{i}", (d_in, d_out), "glorot_uniform")
            self.domain_weights.add_family(f"bias_{i}", (d_out,), "zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        for i in range(self.num_layers):
            inputs = grouped_dense(
                inputs, self.domain_weights.stacked(f"kernel_{i}"), self.domain_weights.stacked(f"bias_{i}")
            )
            if i < self.num_layers - 1:
                inputs = self.activation(inputs)
        return select_domain(inputs[..., 0], domain_ids)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_domains": self.num_domains}


@tf.keras.utils.register_keras_serializable(package="tfsr")
class SharedTower(_BlockBase):
    """One MLP tower for every domain (the single-domain baseline's head).

    Args:
      units: hidden widths (a final 1-unit linear layer is added).
      activation: activation of the hidden layers.

    Call args: `inputs [B, D]`, `domain_ids` (ignored). Output shape: `[B]` logits.
    """

    def build(self, input_shape):
        self.mlp = MLP(self.units, self.activation, name="hidden", dtype=self.dtype_policy)
        self.logit = tf.keras.layers.Dense(1, name="logit", dtype=self.dtype_policy)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor | None = None) -> tf.Tensor:
        return self.logit(self.mlp(inputs))[:, 0]


@tf.keras.utils.register_keras_serializable(package="tfsr")
class MMoE(_BlockBase):
    """Multi-gate Mixture-of-Experts with one gate per domain.

    `out_d(x) = sum_e softmax(x G_d + g_d)_e * expert_e(x)`.

    Args:
      num_experts: E, shared experts.
      units: widths of each expert's layers.
      num_domains: K (one gate each).
      activation: activation of the experts.

    Call args: `inputs [B, D]`, `domain_ids [B]`. Output shape: `[B, units[-1]]`.
    """

    def __init__(self, num_experts: int, units: Sequence[int], num_domains: int, activation="relu", **kwargs):
        super().__init__(units, activation, **kwargs)
        self.experts = ExpertBank(
            num_experts, self.units, activation, name="experts", dtype=self.dtype_policy
        )
        self.domain_weights = DomainWeights(num_domains, name="gates", dtype=self.dtype_policy)

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    @property
    def num_domains(self) -> int:
        return self.domain_weights.num_domains

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        return [self.experts]

    def build(self, input_shape):
        self.domain_weights.add_family("kernel", (int(input_shape[-1]), self.num_experts), "glorot_uniform")
        self.domain_weights.add_family("bias", (self.num_experts,), "zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        experts = self.experts(inputs)  # [B, E, U]
        gate_logits = grouped_dense(
            inputs, self.domain_weights.stacked("kernel"), self.domain_weights.stacked("bias")
        )
        gates = tf.nn.softmax(select_domain(gate_logits, domain_ids), axis=-1)  # [B, E]
        return tf.einsum("be,beu->bu", gates, experts)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_experts": self.num_experts, "num_domains": self.num_domains}


@tf.keras.utils.register_keras_serializable(package="tfsr")
class PLE(_BlockBase):
    """Progressive Layered Extraction: `num_levels` Customized Gate Control (CGC) levels.

    Each level has `num_shared_experts` shared experts and, per domain, `num_specific_experts`
    domain-specific experts. Domain k's gate mixes its own experts and the shared ones; between
    levels a shared gate mixes all experts into the next level's shared input. The shared gate's
    logits for domain k's experts are themselves a per-domain parameter, so domains can be added; as
    that gate mixes every domain's experts, a domain added later also enters the existing domains'
    shared path (MMoE, STAR and the towers leave existing domains' outputs unchanged).

    Args:
      num_levels: number of CGC levels (>= 1).
      num_shared_experts: shared experts per level.
      num_specific_experts: experts per domain per level.
      units: widths of each expert's layers.
      num_domains: K.
      activation: activation of the experts.

    Call args: `inputs [B, D]`, `domain_ids [B]`. Output shape: `[B, units[-1]]`.
    """

    def __init__(
        self,
        num_levels: int,
        num_shared_experts: int,
        num_specific_experts: int,
        units: Sequence[int],
        num_domains: int,
        activation="relu",
        **kwargs,
    ):
        super().__init__(units, activation, **kwargs)
        self.num_levels = check_positive_int("num_levels", num_levels)
        self.num_shared_experts = check_positive_int("num_shared_experts", num_shared_experts)
        self.num_specific_experts = check_positive_int("num_specific_experts", num_specific_experts)
        self.shared_experts = [
            ExpertBank(
                num_shared_experts,
                self.units,
                activation,
                name=f"shared_experts_{level}",
                dtype=self.dtype_policy,
            )
            for level in range(self.num_levels)
        ]
        self.level_weights = [
            DomainWeights(num_domains, name=f"level_{level}", dtype=self.dtype_policy)
            for level in range(self.num_levels)
        ]
        self.shared_gates = WeightBank(name="shared_gates", dtype=self.dtype_policy)

    @property
    def num_domains(self) -> int:
        return self.level_weights[0].num_domains

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        return [*self.shared_experts, self.shared_gates]

    def build(self, input_shape):
        width = self.units[-1]
        n_specific, n_shared = self.num_specific_experts, self.num_shared_experts
        self.shared_gate_kernels, self.shared_gate_biases = [], []
        input_dim = int(input_shape[-1])
        for level, weights in enumerate(self.level_weights):
            for i, (d_in, d_out) in enumerate(_layer_dims(input_dim, self.units)):
                weights.add_family(f"expert_kernel_{i}", (n_specific, d_in, d_out), "glorot_uniform")
                weights.add_family(f"expert_bias_{i}", (n_specific, d_out), "zeros")
            weights.add_family("gate_kernel", (input_dim, n_specific + n_shared), "glorot_uniform")
            weights.add_family("gate_bias", (n_specific + n_shared,), "zeros")
            if level < self.num_levels - 1:
                # The shared gate's logits for this domain's specific experts.
                weights.add_family("shared_gate_kernel", (input_dim, n_specific), "glorot_uniform")
                weights.add_family("shared_gate_bias", (n_specific,), "zeros")
                self.shared_gate_kernels.append(
                    self.shared_gates.add(f"kernel_{level}", (input_dim, n_shared))
                )
                self.shared_gate_biases.append(self.shared_gates.add(f"bias_{level}", (n_shared,), "zeros"))
            input_dim = width
        super().build(input_shape)

    def _specific_experts(self, weights: DomainWeights, task_inputs: tf.Tensor) -> tf.Tensor:
        """`[B, D]` or `[B, K, D]` -> `[B, K, Ep, U]`."""
        k, n = self.num_domains, self.num_specific_experts
        hidden = (
            task_inputs if task_inputs.shape.rank == 2 else tf.repeat(task_inputs, n, axis=1)
        )  # [B, K*Ep, D]
        for i in range(len(self.units)):
            kernel = weights.stacked(f"expert_kernel_{i}")  # [K, Ep, D, U]
            bias = weights.stacked(f"expert_bias_{i}")  # [K, Ep, U]
            kernel = tf.reshape(kernel, [k * n, tf.shape(kernel)[2], tf.shape(kernel)[3]])
            hidden = self.activation(grouped_dense(hidden, kernel, tf.reshape(bias, [k * n, -1])))
        return tf.reshape(hidden, [-1, k, n, self.units[-1]])

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        shared_in, task_in = inputs, inputs  # task_in: [B, D] at the first level, then [B, K, U]
        k = self.num_domains
        for level, weights in enumerate(self.level_weights):
            shared = self.shared_experts[level](shared_in)  # [B, Es, U]
            specific = self._specific_experts(weights, task_in)  # [B, K, Ep, U]
            shared_tiled = tf.repeat(shared[:, None], k, axis=1)  # [B, K, Es, U]
            experts = tf.concat([specific, shared_tiled], axis=2)  # [B, K, Ep+Es, U]
            gates = tf.nn.softmax(
                grouped_dense(task_in, weights.stacked("gate_kernel"), weights.stacked("gate_bias"))
            )
            task_out = tf.einsum("bke,bkeu->bku", gates, experts)
            if level < self.num_levels - 1:
                specific_logits = grouped_dense(
                    shared_in, weights.stacked("shared_gate_kernel"), weights.stacked("shared_gate_bias")
                )  # [B, K, Ep]
                shared_logits = (
                    tf.matmul(shared_in, self.shared_gate_kernels[level]) + self.shared_gate_biases[level]
                )
                logits = tf.concat(
                    [tf.reshape(specific_logits, [-1, k * self.num_specific_experts]), shared_logits], 1
                )
                all_experts = tf.concat(
                    [tf.reshape(specific, [-1, k * self.num_specific_experts, self.units[-1]]), shared],
                    axis=1,
                )
                shared_in = tf.einsum("be,beu->bu", tf.nn.softmax(logits), all_experts)
            task_in = task_out
        return select_domain(task_out, domain_ids)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_levels": self.num_levels,
            "num_shared_experts": self.num_shared_experts,
            "num_specific_experts": self.num_specific_experts,
            "num_domains": self.num_domains,
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class STAR(_BlockBase):
    """Star-topology fully-connected network.

    Layer i of domain d: `h = act(x (W_i * W_i^d) + b_i + b_i^d)` with `W_i^d` initialised to ones and
    `b_i^d` to zeros, so every domain starts at the shared network. (STAR's partitioned
    normalisation and auxiliary network are left out: the towers on top play the auxiliary role.)

    Args:
      units: widths of the layers.
      num_domains: K.
      activation: activation after every layer.

    Call args: `inputs [B, D]`, `domain_ids [B]`. Output shape: `[B, units[-1]]`.
    """

    def __init__(self, units: Sequence[int], num_domains: int, activation="relu", **kwargs):
        super().__init__(units, activation, **kwargs)
        self.shared = WeightBank(name="shared", dtype=self.dtype_policy)
        self.domain_weights = DomainWeights(num_domains, name="domain_layers", dtype=self.dtype_policy)

    @property
    def num_domains(self) -> int:
        return self.domain_weights.num_domains

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        return [self.shared]

    def build(self, input_shape):
        self.kernels, self.biases = [], []
        for i, (d_in, d_out) in enumerate(_layer_dims(int(input_shape[-1]), self.units)):
            self.kernels.append(self.shared.add(f"kernel_{i}", (d_in, d_out)))
            self.biases.append(self.shared.add(f"bias_{i}", (d_out,), "zeros"))
            self.domain_weights.add_family(f"kernel_{i}", (d_in, d_out), "ones")
            self.domain_weights.add_family(f"bias_{i}", (d_out,), "zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            kernels = kernel[None] * self.domain_weights.stacked(f"kernel_{i}")  # [K, D, U]
            biases = bias[None] + self.domain_weights.stacked(f"bias_{i}")
            inputs = self.activation(grouped_dense(inputs, kernels, biases))  # [B, K, U]
        return select_domain(inputs, domain_ids)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_domains": self.num_domains}
