"""The S&R Multi-Domain Foundation model and the baselines, all in the `MultiDomainModel` harness.

| model_type      | L1 fusion (default) | domain adapter | L2 block      | towers     | alignment (default) |
|-----------------|---------------------|----------------|---------------|------------|---------------------|
| srfoundation    | domain gating       | DomainAdaptive | MMoE          | per domain | JS                  |
| single_domain   | mean                | –              | MLP           | one shared | none                |
| shared_bottom   | mean                | –              | MLP           | per domain | none                |
| mmoe            | mean                | –              | MMoE          | per domain | none                |
| ple             | mean                | –              | PLE (CGC)     | per domain | none                |
| star            | mean                | –              | STAR          | per domain | none                |

Every baseline shares the L0 encoders, the inputs, the losses and the metrics, and takes any
`gating`/`alignment` given in its config (e.g. MMoE with domain gating).
"""

from __future__ import annotations

from tfsr.layers import MLP, PLE, STAR, DomainAdaptiveLayer, MMoE, SharedTower
from tfsr.models.base import MultiDomainModel
from tfsr.models.registry import register_model

import tensorflow as tf


class _MMoEHeads:
    """Mixin: MMoE experts (shared) with one gate per domain."""

    def build_experts(self) -> tf.keras.layers.Layer:
        c = self.config
        return MMoE(c.num_experts, c.expert_units, len(self.domain_registry), name="mmoe")


@register_model("srfoundation")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class SRFoundationModel(_MMoEHeads, MultiDomainModel):
    """The S&R Multi-Domain Foundation model (Gong et al., CIKM 2023, §3).

    L0 id/text/sparse aspect encoders; L1 Domain-Gating Aspect Gating Fusion and a Domain Adaptive
    layer with a Jensen-Shannon (or MMD) alignment loss; L2 MMoE with one gate and one tower per
    domain. See :class:`~tfsr.models.base.MultiDomainModel` for the arguments, outputs and hooks.

    Example:
      >>> model = build_model(ModelConfig("srfoundation", embedding_dim=32), spec, vocabularies)
      >>> model.compile()
      >>> model.fit(make_dataset((samples_dir, "pretrain_train"), spec, 1024), epochs=3)
      >>> model.add_domain(spec.domains["rec_children"]); model.freeze("L0", "L1"); model.compile()
    """

    default_gating = "domain"
    default_alignment = "js"

    def build_domain_adapter(self) -> tf.keras.layers.Layer:
        return DomainAdaptiveLayer(
            self.config.adaptive_units, len(self.domain_registry), name="domain_adapter"
        )


@register_model("single_domain")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class SingleDomainModel(MultiDomainModel):
    """Baseline: one network for every sample (train it on one domain's data for the single-domain baseline)."""

    def build_experts(self) -> tf.keras.layers.Layer:
        return MLP(self.config.expert_units, name="bottom")

    def build_towers(self) -> tf.keras.layers.Layer:
        return SharedTower(self.config.tower_units, name="tower")


@register_model("shared_bottom")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class SharedBottomModel(MultiDomainModel):
    """Baseline: a shared MLP bottom and one tower per domain (Caruana 1997)."""

    def build_experts(self) -> tf.keras.layers.Layer:
        return MLP(self.config.expert_units, name="bottom")


@register_model("mmoe")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class MMoEModel(_MMoEHeads, MultiDomainModel):
    """Baseline: MMoE (Ma et al., KDD 2018) with one gate and one tower per domain."""


@register_model("ple")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class PLEModel(MultiDomainModel):
    """Baseline: PLE (Tang et al., RecSys 2020), `num_levels` CGC levels, one tower per domain."""

    def build_experts(self) -> tf.keras.layers.Layer:
        c = self.config
        return PLE(
            c.num_levels,
            c.num_shared_experts,
            c.num_specific_experts,
            c.expert_units,
            len(self.domain_registry),
            name="ple",
        )


@register_model("star")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class STARModel(MultiDomainModel):
    """Baseline: STAR (Sheng et al., CIKM 2021) star-topology network, one tower per domain."""

    def build_experts(self) -> tf.keras.layers.Layer:
        return STAR(self.config.expert_units, len(self.domain_registry), name="star")
