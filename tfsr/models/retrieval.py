"""Two-tower retrieval on the foundation's encoders: candidates from the whole catalogue, for every domain.

The ranker scores candidates a caller already has; :class:`RetrievalModel` finds them. Its two towers
sit on the same L0 aspect encoders and L1 Aspect Gating Fusion as the S&R Foundation model (Gong et al.,
CIKM 2023, §3.2-3.3, https://arxiv.org/abs/2309.08939), so a search domain retrieves from the query's
text and id, a recommendation domain from the user, and a new (cold-start) domain gets retrieval from
the same pretrained encoders (docs/MODEL.md, "Retrieval"):

```
context:   user aspects ─► domain-gated fusion ─┐
           query aspects ─► domain-gated fusion ─┼─► [h_user; h_query] ─► shared MLP ─► the domain's layer ─► u
candidate: item aspects ─► [CLS]-gated fusion (one gate: one index serves every domain) ─► MLP ─────► v
(u, v L2-normalised)
score(context, item) = <u, v> / temperature
```

Training is a `tfrs.tasks.Retrieval` in-batch softmax over the clicked items of every domain (each row's
other rows' items are its negatives, accidental hits removed), with the sampling-bias correction of
Yi et al. (RecSys 2019): `log q(item)` subtracted from the logits, `q` the item's share of the training
clicks, given per row as the `candidate_probability` feature (`tfsr.training.retrieval` adds it). With
mixed negative sampling (Yang et al., WWW 2020; `ModelConfig.catalogue_negatives`) items drawn uniformly
from the whole catalogue join the candidates (features prefixed ``negative_``, their `q` the uniform
draw's share), so rarely clicked items, and a new domain's items against all others, are pushed away too.
Rows with `label == 0` weigh nothing; each row weighs its domain's `alpha_d`
(`ModelConfig.domain_loss_weights`).

As a :class:`~tfsr.models.base.MultiDomainModel` subclass it keeps the harness's `add_domain`, `freeze`,
`save_model` / `load_model` and the checked train step; `freeze("L2_shared")` freezes the towers' shared
layers, leaving a new domain its gates and its own output layer of the context tower.
"""

from __future__ import annotations

from collections.abc import Mapping

from tfsr.layers import AspectGatingFusion, RetrievalTower
from tfsr.models.base import MultiDomainModel
from tfsr.models.registry import register_model

import tensorflow as tf
import tensorflow_recommenders as tfrs

CANDIDATE_PROBABILITY = "candidate_probability"
# prefix of the item features (and their candidate_probability) of the catalogue items sampled as negatives
NEGATIVE_PREFIX = "negative_"
CONTEXT_ENTITIES = ("user", "query")
CANDIDATE_ENTITY = "item"


@register_model("retrieval")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class RetrievalModel(MultiDomainModel):
    """Two-tower retrieval over the foundation's L0/L1 (see the module docstring).

    Call: `model(features)` -> `{"context": [B, D], "candidate": [B, D]}` float32 (the candidate only when
    the batch has the item features). :meth:`context_embeddings` and :meth:`candidate_embeddings` compute
    one tower each: the first needs `domain` and the user / query features, the second only the item's.

    Class attributes: `sampling_bias_correction` (use `candidate_probability` when a batch has it and
    `config.sampling_bias_correction` is on),
    `normalize` (L2-normalised embeddings, scaled by `config.retrieval_temperature` in the loss).
    """

    default_gating = "domain"
    default_alignment = "none"
    default_interactions: tuple[str, ...] = ()
    sampling_bias_correction = True
    normalize = True

    @property
    def catalogue_negatives(self) -> int:
        """Catalogue items sampled as extra negatives per batch (`config.catalogue_negatives`)."""
        return self.config.catalogue_negatives

    def __init__(self, config, spec, vocabularies=None, **kwargs):
        super().__init__(config, spec, vocabularies, **kwargs)
        if self.config.alignment != "none":
            raise ValueError(
                f"a retrieval model has no alignment loss, got alignment={self.config.alignment!r}"
            )
        self.candidate_tower = self.build_candidate_tower()
        # The ranking harness's calibration has no role here; frozen so that no optimizer sees it.
        self.calibration.trainable = False

    # ------------------------------------------------------------------ hooks
    def build_fusion(self, entity: str) -> tf.keras.layers.Layer:
        """The context entities keep the configured (domain) gating; the item gets one gate for every
        domain ([CLS]-gating; "mean" stays mean), since one index of item vectors serves all domains."""
        if entity != CANDIDATE_ENTITY or self.config.gating == "mean":
            return super().build_fusion(entity)
        c = self.config
        return AspectGatingFusion(
            "cls",
            gate_scale=c.gate_scale,
            gate_init_stddev=c.gate_init_stddev,
            learn_gate_scale=c.learn_gate_scale,
            name=f"{entity}_fusion",
        )

    def build_towers(self) -> tf.keras.layers.Layer:
        """The context tower: `[h_user; h_query]` -> shared hidden layers -> the domain's own output layer."""
        return RetrievalTower(
            self.config.tower_units,
            num_domains=len(self.domain_registry),
            domain_mode="output",
            normalize=self.normalize,
            name="context_tower",
        )

    def build_candidate_tower(self) -> tf.keras.layers.Layer:
        """The candidate tower: `h_item` -> the embedding."""
        return RetrievalTower(self.config.tower_units, normalize=self.normalize, name="candidate_tower")

    def _make_task(self, domain: str | None):
        """One in-batch softmax over every domain's rows (per-domain tasks: None; rows are weighted)."""
        if domain is not None:
            return None
        return tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            ),
            temperature=self.config.retrieval_temperature if self.normalize else None,
            remove_accidental_hits=True,
            name="retrieval_task",
        )

    def level_layers(self, level: str) -> list[tf.keras.layers.Layer]:
        """As the harness's, with the towers' shared layers as "L2_shared" (the per-domain weights apart)."""
        if level == "L2_shared":
            return [*self.towers.shared_layers, *self.candidate_tower.shared_layers]
        return super().level_layers(level)

    def new_domain_trainable_layers(self) -> list[tf.keras.layers.Layer]:
        """The new domain's gates and its own output layer of the context tower."""
        return [*super().new_domain_trainable_layers(), self.towers]

    # ------------------------------------------------------------------ towers
    def _fused(self, features: Mapping[str, tf.Tensor], entity: str, domain_ids, training: bool):
        aspects, mask = self.encode_entity(features, entity, training)
        h, _ = self.fusions[entity](aspects, domain_ids=domain_ids, aspect_mask=mask, training=training)
        return self.missing_entities[entity](h, tf.reduce_any(mask, axis=1))

    def context_embeddings(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """`[B, D]` float32 embeddings of (domain, user, query) contexts; an unknown domain fails."""
        domain_ids = self.domain_ids(features["domain"])
        fused = [self._fused(features, e, domain_ids, training) for e in CONTEXT_ENTITIES]
        return self.towers(tf.concat(fused, axis=1), domain_ids, training=training)

    def candidate_embeddings(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """`[N, D]` float32 embeddings of items (their id, text and sparse features; no domain)."""
        return self.candidate_tower(
            self._fused(features, CANDIDATE_ENTITY, None, training), training=training
        )

    def call(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        out = {"context": self.context_embeddings(features, training=training)}
        if "item_id" in features:
            out["candidate"] = self.candidate_embeddings(features, training=training)
        return out

    # ------------------------------------------------------------------ training
    def compute_loss(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """The mean over the clicked rows of `alpha_d * softmax cross-entropy` against the batch's items."""
        if "label" not in inputs:
            raise ValueError(f"compute_loss needs a 'label' feature, got keys {sorted(inputs)}")
        context = self.context_embeddings(inputs, training=training)
        candidates = self.candidate_embeddings(inputs, training=training)
        domain_ids = self.domain_ids(inputs["domain"])
        alphas = tf.constant([self.config.loss_weight(d.name) for d in self.domain_registry], tf.float32)
        clicked = tf.cast(tf.reshape(inputs["label"], [-1]) > 0, tf.float32)
        weights = clicked * tf.gather(alphas, domain_ids)
        correct = self.sampling_bias_correction and self.config.sampling_bias_correction
        probability = inputs.get(CANDIDATE_PROBABILITY) if correct else None
        ids = tf.reshape(inputs["item_id"], [-1])
        negatives = {k[len(NEGATIVE_PREFIX) :]: v for k, v in inputs.items() if k.startswith(NEGATIVE_PREFIX)}
        if negatives:
            candidates = tf.concat([candidates, self.candidate_embeddings(negatives, training=training)], 0)
            ids = tf.concat([ids, tf.reshape(negatives["item_id"], [-1])], 0)
            if probability is not None:
                probability = tf.concat([probability, negatives[CANDIDATE_PROBABILITY]], 0)
        loss = self.overall_task(
            context,
            candidates,
            sample_weight=weights,
            candidate_sampling_probability=probability,
            candidate_ids=ids,
            compute_metrics=False,
            compute_batch_metrics=False,
        )
        return tf.math.divide_no_nan(loss, tf.reduce_sum(clicked))

    # ------------------------------------------------------------------ transfer
    def init_from_ranker(self, ranker: MultiDomainModel) -> list[str]:
        """Copies a pretrained ranker's L0 encoders, missing-entity vectors and context fusions (same
        features, vocabularies and domains; shapes checked); returns the copied layers' names."""
        if list(ranker.domain_registry.names) != list(self.domain_registry.names):
            raise ValueError(
                f"the ranker's domains {ranker.domain_registry.names} differ from this model's "
                f"{self.domain_registry.names}"
            )
        pairs = [(self.feature_encoders[n], ranker.feature_encoders.get(n)) for n in self.feature_encoders]
        pairs += [(self.missing_entities[e], ranker.missing_entities[e]) for e in self.missing_entities]
        pairs += [
            (self.fusions[e], ranker.fusions[e])
            for e in CONTEXT_ENTITIES
            if ranker.fusions[e].strategy == self.fusions[e].strategy
        ]
        copied = []
        for mine, theirs in pairs:
            if theirs is None:
                continue
            source = theirs.get_weights()
            if [w.shape for w in source] != [w.shape for w in mine.get_weights()]:
                raise ValueError(f"layer {mine.name}: the ranker's weights have other shapes")
            mine.set_weights(source)
            copied.append(mine.name)
        return copied


@register_model("id_two_tower")
@tf.keras.utils.register_keras_serializable(package="tfsr")
class IdTwoTowerModel(RetrievalModel):
    """Baseline: the plain id two-tower of the TFRS retrieval tutorial, in the same harness.

    Ids only (user, query id, item id: no text, no sparse features), mean fusion, one linear layer per
    tower (no hidden layers), no normalisation, no temperature, in-batch negatives only and no sampling-bias
    correction; the domain
    still joins the context (as a learned vector), so the comparison with :class:`RetrievalModel` isolates what the text and
    sparse aspects, the gates, the towers and the correction add.
    """

    default_gating = "mean"
    sampling_bias_correction = False
    normalize = False
    catalogue_negatives = 0  # in-batch negatives only, as the tutorial

    def _aspect_features(self) -> dict[str, dict[str, list[str]]]:
        table = super()._aspect_features()
        return {
            e: {a: (names if a == "id" else []) for a, names in aspects.items()}
            for e, aspects in table.items()
        }

    def build_towers(self) -> tf.keras.layers.Layer:
        return RetrievalTower(
            (self.config.embedding_dim,),
            num_domains=len(self.domain_registry),
            domain_mode="vector",
            domain_dim=self.config.embedding_dim,
            normalize=False,
            name="context_tower",
        )

    def build_candidate_tower(self) -> tf.keras.layers.Layer:
        return RetrievalTower((self.config.embedding_dim,), normalize=False, name="candidate_tower")
