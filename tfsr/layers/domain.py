"""Per-domain parameters and the grouped computations every domain-specific layer shares.

Multi-domain layers (Gong et al. 2023, §3.3-3.4) hold one set of parameters per domain: a gate
vector, an adaptive map, a tower. :class:`DomainWeights` keeps each such *family* as one variable per
domain, so that :meth:`DomainWeights.add_domain` can append a domain for cold-start fine-tuning
without touching the existing variables (their values, their optimizer slots, their checkpoints).
The layers compute all domains at once with one grouped matmul and pick each sample's own domain
with :func:`select_domain`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfsr.contract import check_positive_int

import tensorflow as tf


def grouped_dense(inputs: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None = None) -> tf.Tensor:
    """One dense map per group, all groups in one einsum.

    Args:
      inputs: `[B, D]` (the same input for every group) or `[B, G, D]` (one input per group).
      kernel: `[G, D, U]`.
      bias: `[G, U]` or None.

    Returns:
      `[B, G, U]`.
    """
    equation = "bd,gdu->bgu" if inputs.shape.rank == 2 else "bgd,gdu->bgu"
    outputs = tf.einsum(equation, inputs, kernel)
    return outputs if bias is None else outputs + bias


def select_domain(per_domain: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
    """Picks each sample's own domain: `[B, K, ...]`, `[B]` -> `[B, ...]`."""
    return tf.gather(per_domain, tf.cast(domain_ids, tf.int32), batch_dims=1)


def large_negative(dtype) -> float:
    """A mask value for softmax logits of `dtype`: -1e9, or the most negative finite value of a 16-bit
    float (-1e9 overflows to -inf in float16). As Keras's `MultiHeadAttention` masks its scores."""
    dtype = tf.as_dtype(dtype)
    return float(dtype.min) if dtype.size < 4 else -1e9


def check_units(name: str, units: Sequence[int]) -> tuple[int, ...]:
    """Validates a list of layer widths."""
    units = tuple(units)
    if not units or any(not isinstance(u, int) or u <= 0 for u in units):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {units!r}")
    return units


@tf.keras.utils.register_keras_serializable(package="tfsr")
class WeightBank(tf.keras.layers.Layer):
    """A container of shared weights, owned by a parent layer.

    It exists so that a parent layer can keep its shared and its per-domain weights in separate
    sublayers, and `freeze("L2_shared")` can freeze the first without the second.

    Example:
      >>> bank = WeightBank(name="shared")
      >>> kernel = bank.add("kernel", (16, 8))
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def add(self, name: str, shape: Sequence[int], initializer="glorot_uniform") -> tf.Variable:
        return self.add_weight(name=name, shape=tuple(shape), initializer=initializer, trainable=True)


@tf.keras.utils.register_keras_serializable(package="tfsr")
class DomainWeights(tf.keras.layers.Layer):
    """Families of per-domain weights: one variable of a given shape for each of K domains.

    A parent layer declares families in its `build()` and reads them stacked in `call()`.
    `add_domain()` appends one variable to every family, freshly initialised or copied from an
    existing domain; the variables of the existing domains are left untouched.

    Args:
      num_domains: K, the number of domains (>= 1).

    Example:
      >>> weights = DomainWeights(num_domains=3)
      >>> weights.add_family("kernel", (16, 8))
      >>> weights.stacked("kernel").shape        # [3, 16, 8]
      >>> weights.add_domain(init_from=0)
      >>> weights.stacked("kernel").shape        # [4, 16, 8]
    """

    def __init__(self, num_domains: int, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = check_positive_int("num_domains", num_domains)
        self._initializers: dict[str, tuple[tuple[int, ...], dict, bool]] = {}
        self.families: dict[str, list[tf.Variable]] = {}
        self.built = True

    def add_family(
        self, name: str, shape: Sequence[int], initializer="glorot_uniform", trainable: bool = True
    ) -> None:
        """Declares a family; `trainable=False` makes variables no optimizer updates (set by assignment)."""
        if name in self.families:
            raise ValueError(f"family {name!r} already exists in {self.name}")
        # Kept serialized: an unseeded initializer instance called twice returns the same values, and each
        # domain's variable should get its own draw.
        self._initializers[name] = (
            tuple(shape),
            tf.keras.initializers.serialize(tf.keras.initializers.get(initializer)),
            bool(trainable),
        )
        self.families[name] = [self._new_variable(name, k) for k in range(self.num_domains)]

    def _new_variable(self, name: str, domain: int) -> tf.Variable:
        shape, initializer, trainable = self._initializers[name]
        return self.add_weight(
            name=f"{name}_domain{domain}",
            shape=shape,
            initializer=tf.keras.initializers.deserialize(initializer),
            trainable=trainable,
        )

    def stacked(self, name: str) -> tf.Tensor:
        """The family as one tensor `[K, *shape]`."""
        return tf.stack(self.families[name], axis=0)

    def add_domain(self, init_from: int | None = None) -> None:
        """Appends domain K to every family; copies domain `init_from`'s values when given."""
        if init_from is not None and not 0 <= init_from < self.num_domains:
            raise ValueError(f"init_from must be a domain id in [0, {self.num_domains}), got {init_from!r}")
        for name, variables in self.families.items():
            variable = self._new_variable(name, self.num_domains)
            if init_from is not None:
                variable.assign(variables[init_from])
            variables.append(variable)
        self.num_domains += 1

    def get_config(self) -> dict:
        return {**super().get_config(), "num_domains": self.num_domains}
