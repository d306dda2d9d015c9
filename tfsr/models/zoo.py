"""The S&R Multi-Domain Foundation model and the baselines, all in the `MultiDomainModel` harness.

| model_type      | L1 fusion (default) | domain adapter | L2 block      | towers     | alignment (default) |
|-----------------|---------------------|----------------|---------------|------------|---------------------|
| srfoundation    | domain gating       | DomainAdaptive | MMoE          | per domain | JS                  |
| single_domain   | mean                | –              | MLP           | one shared | none                |
| shared_bottom   | mean                | –              | MLP           | per domain | none                |
| mmoe            | mean                | –              | MMoE          | per domain | none                |
| ple             | mean                | –              | PLE (CGC)     | per domain | none                |
| star            | mean                | –              | STAR          | per domain | none                |
| deepfm          | mean                | –              | MLP           | per domain | none                |
| dcn_v2          | mean                | –              | MLP           | per domain | none                |

Interactions (`ModelConfig.interactions`, `tfsr.layers.FeatureInteractions`): srfoundation crosses the
fused user, query and item vectors (`("dot", "cross")`); deepfm adds an FM term over the L0 aspect
fields and the domain field to the logit and gives its deep MLP the concatenated fields
(`("fields", "fm")`); dcn_v2 puts a DCN-v2 cross network over the same fields under its deep MLP
(`("cross",)`, stacked); the other baselines have none.

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
    """The S&R Multi-Domain Foundation model (Gong et al., CIKM 2023, §3, https://arxiv.org/abs/2309.08939).

    L0 id/text/sparse aspect encoders; L1 Domain-Gating Aspect Gating Fusion and a Domain Adaptive
    layer with a Jensen-Shannon (or MMD) alignment loss; L2 MMoE with one gate and one tower per
    domain. See :class:`~tfsr.models.base.MultiDomainModel` for the arguments, outputs and hooks.

    Example:
      >>> model = build_model(ModelConfig("srfoundation", embedding_dim=32), spec, vocabularies)
      >>> model.compile()
      >>> lookup = samples_text_lookup(samples_dir, spec)  # key-mode samples: texts -> vectors
      >>> model.fit(make_dataset((samples_dir, "pretrain_train"), spec, 1024, text_lookup=lookup), epochs=3)
      >>> model.add_domain(spec.domains["rec_children"]); model.freeze("L0", "L1"); model.compile()
    """

    default_gating = "domain"
    default_alignment = "js"
    # Dot products put user·item affinity and query·item relevance on the logit (weights start at 1, as an
    # FM's) and give them to the experts as inputs; the cross network adds every bounded-degree product of
    # the three vectors (docs/MODEL.md, "Explicit interactions (L2)", with the measurement).
    default_interactions = ("dot", "cross")

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


class _FieldModel:
    """Mixin of the field baselines: interactions over the L0 aspect fields plus a domain field.

    The fields are the unfused L0 aspect vectors (one per entity and aspect with a feature: user id,
    query id and text, item id, text and sparse for the default spec), absent aspects zeroed, plus a
    learned embedding of the domain, so the FM / cross terms can be domain-dependent; the head is one
    tower per domain (as SharedBottom's), so each domain also gets its own output layer. The deep part
    is a shared MLP (`expert_units`) on `[mean-fused representation; interaction features]` (the
    representation is a linear function of the fields, left in to keep the harness's one forward).
    """

    interaction_fields = "aspects"
    interaction_domain_field = True

    def build_experts(self) -> tf.keras.layers.Layer:
        return MLP(self.config.expert_units, name="deep")


@register_model("deepfm")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class DeepFMModel(_FieldModel, MultiDomainModel):
    """Baseline: DeepFM (Guo et al., IJCAI 2017) on the L0 aspect fields and a domain field.

    `logit = tower_d(MLP([x; e_1; …; e_F])) + w · [e_1; …; e_F] + Σ_{i<j} <e_i, e_j>`: the FM's first
    and second order (sum-square trick) over the same field embeddings the deep part reads, as in the
    paper, with one tower per domain. See :class:`~tfsr.layers.FactorizationMachine`.
    """

    default_interactions = ("fields", "fm")


@register_model("dcn_v2")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class DCNv2Model(_FieldModel, MultiDomainModel):
    """Baseline: DCN-v2 (Wang et al., WWW 2021), stacked: `tfrs.layers.dcn.Cross` layers over the
    concatenated L0 aspect fields and a domain field, then a deep MLP and one tower per domain.

    `num_cross_layers` and `cross_projection_dim` (None: full rank; the paper's low-rank `U V` else)
    come from the config. See :class:`~tfsr.layers.CrossNetwork`.
    """

    default_interactions = ("cross",)
