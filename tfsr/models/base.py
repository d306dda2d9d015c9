"""`MultiDomainModel`: the shared harness of the S&R Foundation model and its baselines.

Every model type runs the same pipeline (docs/MODEL.md, "Architecture"; the paper: Gong et al., CIKM 2023,
https://arxiv.org/abs/2309.08939), so comparisons are fair:

```
features ─► L0 aspect encoders (one per feature)  ─► per entity: aspects [B, 3, H] + presence mask
         ─► L1 fusion per entity (AspectGatingFusion) ─► x = [h_user; h_query; h_item]   [B, 3H]
         ─► L1 domain adapter (SRFoundation only)     ─► representation (x_hat)
         ─► L2 interactions of the fields (dot / cross / FM) ─► features beside x_hat, FM logit term
         ─► L2 experts (MMoE / PLE / STAR / MLP) on [x_hat; features] ─► hidden
         ─► towers (+ the FM logit term)              ─► logit [B]
         ─► per-domain calibration (Platt; identity until fitted after training) ─► logit, ctr
```

and differs only in what the hooks `build_fusion`, `build_domain_adapter`, `build_interactions`,
`build_experts` and `build_towers` return (and in `interaction_fields`: the interactions act on the
fused entity vectors, or on the unfused L0 aspect vectors for the field models DeepFM and DCN-v2). Teams subclass a model and override a hook (see `examples/`).

The module is one class, over 500 lines because a subclassable model's hooks, forward pass, loss and
transfer methods (`freeze`, `add_domain`) belong on the class that teams subclass; the train step, the
configuration and the I/O live in their own modules (`train_step`, `config`, `io`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from tfsr.features import Domain, DomainRegistry, Feature, FeatureSpec
from tfsr.layers import (
    ALIGNMENTS,
    ASPECTS,
    ENTITIES,
    AspectEncoder,
    AspectGatingFusion,
    DomainCalibration,
    DomainTowers,
    DomainWeights,
    FeatureInteractions,
    IdEncoder,
    MissingEntityVector,
    SparseEncoder,
    TextEncoder,
)
from tfsr.models.config import ModelConfig
from tfsr.models.train_step import train_step

import tensorflow as tf
import tensorflow_recommenders as tfrs

LEVELS = ("L0", "L1", "L2_shared")
OUTPUT_KEYS = ("ctr", "logit", "gate_weights")


class MultiDomainModel(tfrs.models.Model):
    """Base class of tfsr's multi-domain CTR models (a `tfrs.models.Model`).

    Args:
      config: the model's :class:`ModelConfig`. `gating`/`alignment` left None take the class's
        `default_gating`/`default_alignment`; `domains` left None takes `spec.domains`. The resolved
        config is `model.config`.
      spec: the feature specification; model inputs are `spec.model_features`.
      vocabularies: `feature name -> values` (most frequent first); features without one are hashed.

    Call: `model(features, training=False)` with a dict of `[B]` scalars, `[B, T]` text vectors and
    ragged `[B, None]` lists (extra keys, e.g. `label`, are ignored) returns (float32 also under a
    `mixed_float16` policy: the layers compute in the policy's `compute_dtype`, the calibration layer and
    the outputs are float32, as Keras recommends for a model's last activation)
      * `"ctr"`: `[B]` float32 click probability,
      * `"logit"`: `[B]` float32,
      * `"gate_weights"`: `[B, 3, 3]` float32 aspect weights, rows `ENTITIES` (user, query, item),
        columns `ASPECTS` (id, text, sparse). Absent aspects weigh 0; a row of an absent entity
        (the query of a rec sample) is all 0, otherwise it sums to 1.

    Hooks (override in a subclass; each is called once, from `__init__`):
      `build_feature_encoder(feature)`, `build_aspect_encoders()`, `build_fusion(entity)`,
      `build_domain_adapter()`, `build_interactions()`, `build_experts()`, `build_towers()`; and
      `forward()` for the whole pass. Class attributes: `default_gating`, `default_alignment`,
      `default_interactions` (resolve the config's None), `interaction_fields` ("entities": the
      interactions see the fused `[h_user, h_query, h_item]`, absent entities masked; "aspects": the
      L0 aspect vectors of every (entity, aspect) with a feature, absent aspects masked) and
      `interaction_domain_field` (a learned domain embedding joins the fields).

    Training: `compute_loss` = `sum_d alpha_d BCE_d` (one `tfrs.tasks.Ranking` per domain, on that
    domain's samples only) + `lambda L_reg` (alignment of the representation across domains).
    Metrics: `<domain>_auc` per domain, `auc` overall, `alignment_loss`.
    """

    default_gating = "mean"
    default_alignment = "none"
    default_interactions: tuple[str, ...] = ()
    interaction_fields = "entities"
    interaction_domain_field = False
    model_type = None  # set by tfsr.models.register_model

    def __init__(
        self,
        config: ModelConfig,
        spec: FeatureSpec,
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.config = config.replace(
            gating=config.gating or self.default_gating,
            alignment=config.alignment or self.default_alignment,
            interactions=(
                config.interactions if config.interactions is not None else self.default_interactions
            ),
            domains=config.domains if config.domains is not None else spec.domains.to_json(),
        )
        self.spec = spec
        self.vocabularies = {name: list(values) for name, values in (vocabularies or {}).items()}
        unknown = set(self.vocabularies) - {f.name for f in spec.features}
        if unknown:
            raise ValueError(f"vocabularies for unknown features {sorted(unknown)}")
        self.domain_registry = self.config.registry
        # Ids of the domains `add_domain` appended to this model object (no pretrained weights of theirs).
        self.added_domain_ids: list[int] = []
        self.domain_table = self._make_domain_table()
        self.aspect_features = self._aspect_features()
        self.feature_encoders = self.build_aspect_encoders()
        self.missing_entities = {
            e: MissingEntityVector(self.config.embedding_dim, name=f"missing_{e}") for e in ENTITIES
        }
        self.fusions = {e: self.build_fusion(e) for e in ENTITIES}
        self.domain_adapter = self.build_domain_adapter()
        self.interactions = self.build_interactions()
        self.experts = self.build_experts()
        self.towers = self.build_towers()
        # float32 whatever the global policy: the logit and the probability are the model's outputs.
        self.calibration = DomainCalibration(len(self.domain_registry), name="calibration", dtype="float32")
        self.tasks = [self._make_task(d.name) for d in self.domain_registry]
        self.overall_task = self._make_task(None)
        self.alignment_tracker = tf.keras.metrics.Mean(name="alignment_loss")

    # ------------------------------------------------------------------ hooks
    def build_feature_encoder(self, feature: Feature) -> tf.keras.layers.Layer:
        """The L0 encoder of one model feature: `[B]`/`[B, T]`/ragged -> `[B, H]`.

        Default: `IdEncoder` (id aspect), `SparseEncoder` (sparse aspect), `TextEncoder` (text aspect),
        looked up in `vocabularies[feature.name]` or hashed into `config.num_hash_bins` buckets.
        """
        dim = self.config.embedding_dim
        if feature.aspect == "text":
            if feature.dtype != "float32" or not feature.shape:
                raise ValueError(
                    f"text feature {feature.name!r} must be a float32 vector, got {feature.dtype} "
                    f"shape {feature.shape}"
                )
            return TextEncoder(dim, name=f"{feature.name}_encoder")
        vocabulary = self.vocabularies.get(feature.name)
        lookup = (
            {"vocabulary": vocabulary, "num_oov_buckets": self.config.num_oov_buckets}
            if vocabulary is not None
            else {"num_hash_bins": self.config.num_hash_bins}
        )
        if feature.aspect == "id":
            return IdEncoder(dim, name=f"{feature.name}_encoder", **lookup)
        if feature.aspect == "sparse":
            return SparseEncoder(dim, name=f"{feature.name}_encoder", **lookup)
        raise ValueError(f"feature {feature.name!r} has no aspect to encode, got aspect {feature.aspect!r}")

    def build_aspect_encoders(self) -> dict[str, tf.keras.layers.Layer]:
        """`feature name -> encoder` for every feature of `aspect_features`."""
        return {
            name: self.build_feature_encoder(self.spec[name])
            for aspects in self.aspect_features.values()
            for names in aspects.values()
            for name in names
        }

    def build_fusion(self, entity: str) -> tf.keras.layers.Layer:
        """The L1 fusion of one entity: `(aspects [B,A,H], domain_ids, aspect_mask) -> ([B,H], [B,A])`."""
        c = self.config
        return AspectGatingFusion(
            c.gating,
            num_domains=len(self.domain_registry),
            gate_scale=c.gate_scale,
            gate_init_stddev=c.gate_init_stddev,
            learn_gate_scale=c.learn_gate_scale,
            name=f"{entity}_fusion",
        )

    def build_domain_adapter(self) -> tf.keras.layers.Layer | None:
        """The L1 domain-adaptive map `(x, domain_ids) -> x_hat`, or None (the representation is x)."""
        return None

    def build_interactions(self) -> tf.keras.layers.Layer | None:
        """The L2 explicit interactions `(fields [B,F,H], field_mask [B,F], domain_ids) -> dict`, or None.

        The dict's `"features"` `[B, P]` join the representation as the experts' input; its `"logit"`
        `[B]` is added to the towers' logit. Default: `FeatureInteractions(config.interactions)` (None
        when empty), with the domain as one more field when `interaction_domain_field`.
        """
        c = self.config
        if not c.interactions:
            return None
        return FeatureInteractions(
            c.interactions,
            num_cross_layers=c.num_cross_layers,
            cross_projection_dim=c.cross_projection_dim,
            num_domains=len(self.domain_registry) if self.interaction_domain_field else None,
            name="interactions",
        )

    def build_experts(self) -> tf.keras.layers.Layer | None:
        """The L2 shared/multi-task block `(representation, domain_ids) -> hidden`, or None."""
        return None

    def build_towers(self) -> tf.keras.layers.Layer:
        """The heads `(hidden, domain_ids) -> logit [B]`: one tower per domain by default."""
        return DomainTowers(len(self.domain_registry), self.config.tower_units, name="towers")

    # ------------------------------------------------------------------ structure
    def _aspect_features(self) -> dict[str, dict[str, list[str]]]:
        """`entity -> aspect -> feature names` from the spec (text left out when `use_text` is False)."""
        table = {e: {a: [] for a in ASPECTS} for e in ENTITIES}
        for f in self.spec.model_features:
            if f.entity in table and f.aspect in ASPECTS and (self.config.use_text or f.aspect != "text"):
                table[f.entity][f.aspect].append(f.name)
        return table

    def _make_domain_table(self) -> tf.lookup.StaticHashTable:
        names = self.domain_registry.names
        return tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names), dtype=tf.int32)),
            default_value=-1,
        )

    def _make_task(self, domain: str | None) -> tfrs.tasks.Ranking:
        name = "auc" if domain is None else f"{domain}_auc"
        # SUM, divided by the domain's rows in `compute_loss`: the mean over the domain's samples, and a
        # reduction that Keras accepts under a distribution strategy (SUM_OVER_BATCH_SIZE raises there).
        return tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            ),
            metrics=[tf.keras.metrics.AUC(from_logits=True, name=name)],
            name=f"{domain or 'overall'}_task",
        )

    def level_layers(self, level: str) -> list[tf.keras.layers.Layer]:
        """The layers of a level: "L0" encoders, "L1" fusion + adapter, "L2_shared" the shared experts and
        the shared interaction layers (a per-domain field embedding stays with the domain's own weights)."""
        if level == "L0":
            return [*self.feature_encoders.values(), *self.missing_entities.values()]
        if level == "L1":
            return [
                *self.fusions.values(),
                *([self.domain_adapter] if self.domain_adapter is not None else []),
            ]
        if level == "L2_shared":
            blocks = [b for b in (self.interactions, self.experts) if b is not None]
            return [layer for b in blocks for layer in getattr(b, "shared_layers", [b])]
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")

    # ------------------------------------------------------------------ forward
    def domain_ids(self, domain: tf.Tensor) -> tf.Tensor:
        """`[B]` domain names -> `[B]` int32 ids; an unknown name fails (InvalidArgumentError)."""
        ids = self.domain_table.lookup(tf.reshape(domain, [-1]))
        check = tf.debugging.assert_non_negative(
            ids, message=f"unknown domain name in the batch; this model knows {self.domain_registry.names}"
        )
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def encode_entity(
        self, features: Mapping[str, tf.Tensor], entity: str, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """L0 of one entity: `(aspects [B, 3, H], aspect_mask [B, 3])` in `ASPECTS` order.

        An aspect's vector is the mean of its present features' encodings; it is present when any of
        its features is.
        """
        batch = _batch_size(features)
        dtype = self.compute_dtype
        vectors, masks = [], []
        for aspect in ASPECTS:
            names = self.aspect_features[entity][aspect]
            if not names:
                vectors.append(tf.zeros([batch, self.config.embedding_dim], dtype))
                masks.append(tf.zeros([batch], tf.bool))
                continue
            encoded, present = [], []
            for name in names:
                encoder, value = self.feature_encoders[name], features[name]
                encoded.append(encoder(value, training=training))
                present.append(
                    encoder.presence(value)
                    if isinstance(encoder, AspectEncoder)
                    else tf.ones([batch], tf.bool)
                )
            weights = tf.cast(tf.stack(present, axis=1), dtype)  # [B, F]
            count = tf.reduce_sum(weights, axis=1)
            summed = tf.einsum("bf,bfh->bh", weights, tf.cast(tf.stack(encoded, axis=1), dtype))
            vectors.append(summed / tf.maximum(count, 1.0)[:, None])
            masks.append(count > 0)
        return tf.stack(vectors, axis=1), tf.stack(masks, axis=1)

    def _aspect_fields(
        self, aspect_vectors: Sequence[tf.Tensor], aspect_masks: Sequence[tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The unfused L0 aspect vectors as fields `([B, F, H], [B, F])`: one field per (entity, aspect)
        that has a feature in this model, in `ENTITIES` x `ASPECTS` order."""
        if self.interaction_fields != "aspects":
            raise ValueError(
                f"interaction_fields must be 'entities' or 'aspects', got {self.interaction_fields!r}"
            )
        pairs = [
            (i, j)
            for i, entity in enumerate(ENTITIES)
            for j, aspect in enumerate(ASPECTS)
            if self.aspect_features[entity][aspect]
        ]
        fields = tf.stack([aspect_vectors[i][:, j] for i, j in pairs], axis=1)
        return fields, tf.stack([aspect_masks[i][:, j] for i, j in pairs], axis=1)

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """The whole pass: the public outputs plus `"representation"` (what alignment acts on) and
        `"domain_ids"` `[B]` int32."""
        domain_ids = self.domain_ids(features["domain"])
        fused, present, aspect_vectors, aspect_masks, gate_weights = [], [], [], [], []
        for entity in ENTITIES:
            aspects, mask = self.encode_entity(features, entity, training)
            h, weights = self.fusions[entity](
                aspects, domain_ids=domain_ids, aspect_mask=mask, training=training
            )
            present.append(tf.reduce_any(mask, axis=1))
            fused.append(self.missing_entities[entity](h, present[-1]))
            aspect_vectors.append(aspects)
            aspect_masks.append(mask)
            gate_weights.append(weights)
        representation = tf.concat(fused, axis=1)
        if self.domain_adapter is not None:
            representation = self.domain_adapter(representation, domain_ids, training=training)
        expert_inputs, interaction_logit = representation, None
        if self.interactions is not None:
            if self.interaction_fields == "entities":
                fields, field_mask = tf.stack(fused, axis=1), tf.stack(present, axis=1)
            else:
                fields, field_mask = self._aspect_fields(aspect_vectors, aspect_masks)
            interactions = self.interactions(fields, field_mask, domain_ids, training=training)
            if "features" in interactions:
                expert_inputs = tf.concat([representation, interactions["features"]], axis=1)
            interaction_logit = interactions.get("logit")
        hidden = (
            expert_inputs
            if self.experts is None
            else self.experts(expert_inputs, domain_ids, training=training)
        )
        logit = tf.reshape(self.towers(hidden, domain_ids, training=training), [-1])
        if interaction_logit is not None:
            logit += interaction_logit
        logit = tf.cast(self.calibration(logit, domain_ids), tf.float32)
        return {
            "ctr": tf.sigmoid(logit),
            "logit": logit,
            "gate_weights": tf.cast(tf.stack(gate_weights, axis=1), tf.float32),
            "representation": representation,
            "domain_ids": domain_ids,
        }

    def call(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        outputs = self.forward(features, training=training)
        return {key: outputs[key] for key in OUTPUT_KEYS}

    # ------------------------------------------------------------------ training
    def alignment_loss(self, representation: tf.Tensor, domain_ids: tf.Tensor) -> tf.Tensor:
        """L_reg of `config.alignment` over the domains present in the batch (0 for "none")."""
        kind = self.config.alignment
        if kind == "none":
            return tf.constant(0.0)
        num_domains = len(self.domain_registry)
        if kind == "js":
            return ALIGNMENTS[kind](
                representation, domain_ids, num_domains, temperature=self.config.temperature
            )
        return ALIGNMENTS[kind](representation, domain_ids, num_domains, bandwidth=self.config.mmd_bandwidth)

    def compute_loss(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """`sum_d alpha_d * BCE_d + lambda * L_reg`; BCE_d is the mean over domain d's samples only."""
        if "label" not in inputs:
            raise ValueError(f"compute_loss needs a 'label' feature, got keys {sorted(inputs)}")
        outputs = self.forward(inputs, training=training)
        labels = tf.reshape(tf.cast(inputs["label"], tf.float32), [-1, 1])
        logits = outputs["logit"][:, None]
        domain_ids = outputs["domain_ids"]
        loss = tf.constant(0.0)
        for domain_id, (domain, task) in enumerate(zip(self.domain_registry, self.tasks, strict=True)):
            mask = tf.equal(domain_ids, domain_id)
            domain_loss = task(
                tf.boolean_mask(labels, mask), tf.boolean_mask(logits, mask), training=training
            )
            rows = tf.reduce_sum(tf.cast(mask, tf.float32))
            loss += self.config.loss_weight(domain.name) * tf.math.divide_no_nan(domain_loss, rows)
        self.overall_task(labels, logits, training=training)
        if self.config.alignment != "none":
            reg = self.alignment_loss(outputs["representation"], domain_ids)
            self.alignment_tracker.update_state(reg)
            loss += self.config.alignment_weight * reg
        return loss

    def train_step(self, inputs) -> dict[str, tf.Tensor]:
        """TFRS's step, checked and replica-safe (:mod:`tfsr.models.train_step`): a NaN / Inf input fails
        the step before any weight changes, and the loss is divided by the replicas under a strategy."""
        return train_step(self, inputs)

    def compile(self, optimizer=None, **kwargs):
        """Keras `compile`; without an optimizer, Adam with `config.learning_rate`."""
        if optimizer is None:
            optimizer = tf.keras.optimizers.Adam(self.config.learning_rate)
        super().compile(optimizer=optimizer, **kwargs)

    def _forget_traced_functions(self) -> None:
        """Drops the traced `train_function` & co. (public `tf.keras.Model` attributes; `compile()` drops
        them too), so that a model used without re-compiling after `freeze`/`add_domain` re-traces with
        its new variables instead of training a stale set."""
        self.train_function = self.test_function = self.predict_function = None

    # ------------------------------------------------------------------ transfer
    def freeze(self, *levels: str) -> None:
        """Makes the levels' weights non-trainable ("L0", "L1", "L2_shared"). Re-`compile()` afterwards.

        The aspect-gate rows of the domains added with :meth:`add_domain` stay trainable inside a frozen
        L1: a new domain has no pretrained gate to keep, and freezing its fresh gate would pin it at mean
        pooling. Every pretrained weight of the level stays frozen (bit-identical through fine-tuning), as
        in the paper's freeze-L0+L1 split; the new domain's adaptive-map correction stays at its start (the
        shared pretrained map). See :meth:`new_domain_trainable_layers` and :attr:`new_domain_variables`.
        """
        self._set_trainable(levels, False)

    def unfreeze(self, *levels: str) -> None:
        """Undoes `freeze`. Re-`compile()` afterwards."""
        self._set_trainable(levels, True)

    def _set_trainable(self, levels: Sequence[str], trainable: bool) -> None:
        if not levels:
            raise ValueError(f"name at least one level of {LEVELS}")
        layers = [layer for level in levels for layer in self.level_layers(level)]
        for layer in layers:
            layer.trainable = trainable
        self._forget_traced_functions()

    def new_domain_trainable_layers(self) -> list[tf.keras.layers.Layer]:
        """The layers whose rows for added domains stay trainable when their level is frozen.

        Default: the L1 fusion layers, i.e. the new domain's aspect gates (and gate temperatures). The
        Domain Adaptive layer's per-domain correction of an added domain stays frozen at its start (zero:
        the new domain uses the pretrained shared map, or `init_from`'s map): on the paper study's
        1,000-row cold-start slice, training that ~6k-parameter correction too cost ~0.02 AUC (3 seeds),
        while training the gates alone did not (docs/TRAINING.md, paper study). Override to choose others.
        """
        return list(self.fusions.values())

    @property
    def new_domain_variables(self) -> list[tf.Variable]:
        """The added domains' rows inside frozen `new_domain_trainable_layers()`; they stay trainable."""
        if not self.added_domain_ids:
            return []
        variables, seen = [], set()
        for parent in self.new_domain_trainable_layers():
            for layer in (parent, *parent.submodules):
                if isinstance(layer, DomainWeights) and not layer.trainable and id(layer) not in seen:
                    seen.add(id(layer))
                    for family in layer.families.values():
                        variables.extend(family[k] for k in self.added_domain_ids if k < len(family))
        return variables

    @property
    def trainable_weights(self) -> list[tf.Variable]:
        """Keras's, plus :attr:`new_domain_variables` (and `non_trainable_weights` less them).

        Kept as an override: Keras 2 freezes per layer (`layer.trainable`), and an added domain's rows live
        in the same :class:`DomainWeights` layer as the pretrained rows they must train beside. Moving
        them into a layer of their own changes their checkpoint paths: a fine-tuned model's checkpoint would
        no longer match the model `load_model` rebuilds (where the added domain is an ordinary one).
        """
        weights = super().trainable_weights
        if not self.trainable:
            return weights
        known = {v.ref() for v in weights}
        return weights + [v for v in self.new_domain_variables if v.ref() not in known]

    @property
    def non_trainable_weights(self) -> list[tf.Variable]:
        weights = super().non_trainable_weights
        if not self.trainable:
            return weights
        new = {v.ref() for v in self.new_domain_variables}
        return [v for v in weights if v.ref() not in new]

    def add_domain(
        self, domain: Domain, init_from: str | None = None, loss_weight: float | None = None
    ) -> Domain:
        """Adds a domain for cold-start fine-tuning, keeping every existing weight.

        Every per-domain parameter (gate vector, adaptive map, gate of the experts, tower, …: all
        :class:`~tfsr.layers.DomainWeights` of the model) gets a new entry, freshly initialised or
        copied from domain `init_from`; the domain gets its own Ranking task. The domain takes the
        next id (`len(registry)`) whatever `domain.id` says. Re-`compile()` with a new optimizer
        afterwards (the old one does not know the new variables).

        Fresh L1 rows start at the neutral point: the gate vector at zero (mean pooling, with
        `gate_init_stddev=0`) and the adaptive map's domain residual at zero (the shared map). The gate
        rows stay trainable when L1 is frozen (see :meth:`freeze`), so the new domain learns its own aspect
        weighting from its data while every pretrained weight stays fixed.

        Returns:
          the domain as registered (with its new id).
        """
        if domain.name in self.domain_registry:
            raise ValueError(f"domain {domain.name!r} is already one of {self.domain_registry.names}")
        source = None if init_from is None else self.domain_registry[init_from].id
        added = dataclasses.replace(domain, id=len(self.domain_registry))
        for layer in _unique(self.submodules):
            if isinstance(layer, DomainWeights):
                layer.add_domain(source)
        self.domain_registry = DomainRegistry([*self.domain_registry, added])
        self.added_domain_ids.append(added.id)
        weights = dict(self.config.domain_loss_weights)
        if loss_weight is not None:
            weights[added.name] = float(loss_weight)
        self.config = self.config.replace(domains=self.domain_registry.to_json(), domain_loss_weights=weights)
        self.domain_table = self._make_domain_table()
        self.tasks.append(self._make_task(added.name))
        self._forget_traced_functions()
        return added

    # ------------------------------------------------------------------ serialisation
    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "name": self.name,
            "config": self.config.to_json(),
            "spec": self.spec.to_json(),
            "vocabularies": {name: list(values) for name, values in self.vocabularies.items()},
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        return cls(
            ModelConfig.from_json(config.pop("config")),
            FeatureSpec.from_json(config.pop("spec")),
            config.pop("vocabularies"),
            **config,
        )


def _batch_size(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Rows of a batch: of `domain` when present (a context), else of its first feature (items alone)."""
    value = features["domain"] if "domain" in features else next(iter(features.values()))
    if isinstance(value, tf.RaggedTensor):
        return tf.cast(value.nrows(), tf.int32)
    return tf.shape(value)[0] if value.shape.rank else tf.shape(tf.reshape(value, [-1]))[0]


def _unique(modules) -> list:
    """`modules` without repeats (a layer reachable by two attributes is listed once), in order."""
    seen, unique = set(), []
    for module in modules:
        if id(module) not in seen:
            seen.add(id(module))
            unique.append(module)
    return unique
