"""The train step of tfsr models: TFRS's step, safe under a distribution strategy and refusing bad inputs.

``tfrs.models.Model.train_step`` computes ``compute_loss`` plus the regularisation losses and applies the
gradients. Two things it leaves to the caller matter to a production run under plain ``model.fit``:

* **Replicas.** Under a ``tf.distribute`` strategy Keras sums the replicas' gradients and divides only the
  losses that ``compile`` owns by the number of replicas; a TFRS model's loss is its own, so
  :func:`train_step` divides it (what Keras does for compiled losses). The logged values are averaged
  over the replicas (Keras sums what each replica returns), so every worker logs and checks the same
  numbers.
* **Non-finite inputs.** A NaN / Inf in a float feature (a corrupt embedding) would turn every weight it
  touches into NaN. :func:`train_step` counts them in every float feature *before* any weight changes,
  sums the counts over the replicas (every worker fails at the same step instead of one hanging in a
  collective) and fails the step with an ``InvalidArgumentError`` naming the features;
  :func:`nonfinite_inputs` reads them back from the error message.

:class:`tfsr.models.MultiDomainModel` uses it as its ``train_step``; a team's subclass inherits it, so its
plain ``model.fit`` gets the same behaviour as ``tfsr train``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import tensorflow as tf

NONFINITE_INPUTS = "tfsr: NaN/Inf in input features"
_NONFINITE_PATTERN = re.compile(re.escape(NONFINITE_INPUTS) + r"\] \[([^\]]*)\]")


def _features(inputs):
    return inputs[0] if isinstance(inputs, tuple) else inputs


def nonfinite_counts(features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """{feature: number of NaN / Inf values} of every floating-point feature of a batch (in-graph)."""
    counts = {}
    for name, value in sorted(features.items()):
        if not value.dtype.is_floating:
            continue
        values = value.flat_values if isinstance(value, tf.RaggedTensor) else value
        counts[name] = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(values)), tf.int64))
    return counts


def check_finite_inputs(features: Mapping[str, tf.Tensor]) -> tf.Operation:
    """Fails the step (InvalidArgumentError naming the features) when a float feature holds a NaN / Inf.

    Returns the check, an op that depends on the batch: the optimizer update runs under it, so it never
    starts before the batch exists (Keras's last call of an epoch of unknown length, which ends on the
    end of the data, would otherwise still count an optimizer iteration).
    """
    counts = nonfinite_counts(features)
    if not counts:
        return tf.group(tf.nest.flatten(dict(features), expand_composites=True))
    totals = tf.stack(list(counts.values()))
    bad = tf.boolean_mask(
        tf.strings.join([tf.constant(list(counts)), "=", tf.strings.as_string(totals)]), totals > 0
    )
    return tf.debugging.Assert(
        tf.reduce_all(totals == 0), [NONFINITE_INPUTS, tf.strings.reduce_join(bad, separator=",")]
    )


def nonfinite_inputs(message: str) -> dict[str, int] | None:
    """{feature: NaN/Inf count} from the error a :func:`check_finite_inputs` failure raised, else None."""
    found = _NONFINITE_PATTERN.search(message)
    if not found:
        return None
    pairs = (item.rsplit("=", 1) for item in found.group(1).split(",") if "=" in item)
    return {name: int(count) for name, count in pairs}


def train_step(model: tf.keras.Model, inputs) -> dict[str, tf.Tensor]:
    """One optimisation step of a TFRS model (see the module docstring); returns TFRS's logs
    (its metrics, ``loss``, ``regularization_loss``, ``total_loss``), averaged over the replicas."""
    replicas = float(tf.distribute.get_replica_context().num_replicas_in_sync)
    with tf.control_dependencies([check_finite_inputs(_features(inputs))]):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(inputs, training=True)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(x) for x in model.losses])
            total_loss = loss + regularization_loss
            scaled = total_loss / replicas  # the replicas' gradients are summed
        gradients = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
    logs = {metric.name: metric.result() for metric in model.metrics}
    logs.update(loss=loss, regularization_loss=regularization_loss, total_loss=total_loss)
    # Keras sums what the replicas return (`distribute_reduction_method="auto"`): each returns its share
    return logs if replicas == 1 else {k: v / replicas for k, v in logs.items()}
