"""L2 explicit feature interactions between field vectors (docs/MODEL.md, "Explicit interactions (L2)").

The S&R Foundation model's L2 (Gong et al., CIKM 2023, https://arxiv.org/abs/2309.08939) is an MMoE over
the adapted representation; these layers add explicit interactions beside it.

An MLP over a concatenation `[h_user; h_query; h_item]` has to learn a product such as `h_user · h_item`
from ReLUs, which takes many units and much data; these layers hand it the products directly.

* :class:`PairwiseDot` — the dot product of every pair of fields (user·item, query·item, user·query
  for the fused entities), 0 where either field is absent (the query of a rec sample).
* :class:`FactorizationMachine` — FM's first- and second-order terms over field vectors, the second
  order with the sum-square trick (Rendle 2010; DeepFM's FM component, Guo et al., IJCAI 2017).
* :class:`CrossNetwork` — a stack of TFRS's `tfrs.layers.dcn.Cross` (DCN-v2, Wang et al., WWW 2021),
  full-rank or low-rank (`projection_dim`).
* :class:`FeatureInteractions` — the L2 interaction block of :class:`~tfsr.models.MultiDomainModel`:
  any of the above over a set of fields, optionally with a learned per-domain embedding as one more
  field. Its `"features"` feed the experts beside the representation; its `"logit"` is added to
  the towers' logit.

Every layer takes `fields [B, F, H]` and `field_mask [B, F]` (True where the field is present);
absent fields are zeroed before any product, so they contribute nothing.
"""

from __future__ import annotations

import itertools

from tfsr.contract import check_positive_int
from tfsr.layers.domain import DomainWeights

import tensorflow as tf
import tensorflow_recommenders as tfrs

# Kinds of FeatureInteractions, in output order: pairwise dot products, the flattened fields themselves
# (DeepFM's deep input), a DCN-v2 cross network (features) and the FM term (a logit).
INTERACTIONS = ("dot", "fields", "cross", "fm")


def masked_fields(fields: tf.Tensor, field_mask: tf.Tensor | None, dtype=None) -> tf.Tensor:
    """`fields [B, F, H]` (cast to `dtype`, a layer's `compute_dtype`; None keeps theirs) with absent
    fields (`field_mask [B, F]` False) set to 0."""
    if dtype is not None:
        fields = tf.cast(fields, dtype)
    if field_mask is None:
        return fields
    return fields * tf.cast(field_mask, fields.dtype)[:, :, None]


def _known_dims(layer: str, fields_shape) -> tuple[int, int]:
    shape = tf.TensorShape(fields_shape)
    if shape.rank != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(f"{layer} needs fields of shape [B, F, H] with known F and H, got {shape}")
    return int(shape[1]), int(shape[2])


@tf.keras.utils.register_keras_serializable(package="tfsr")
class PairwiseDot(tf.keras.layers.Layer):
    """Dot products of every pair of fields `i < j`, in `itertools.combinations` order.

    For the fused entities `(user, query, item)` the outputs are `user·query, user·item, query·item`.
    A product involving an absent field is 0.

    Call args: `fields [B, F, H]`, `field_mask [B, F]` bool (None: all present).
    Output shape: `[B, F (F - 1) / 2]`.

    Example:
      >>> fields = tf.constant([[[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]])   # user, query, item
      >>> PairwiseDot()(fields, tf.constant([[True, False, True]]))      # [[0., 11., 0.]]
    """

    def build(self, input_shape):
        num_fields, _ = _known_dims("PairwiseDot", input_shape)
        if num_fields < 2:
            raise ValueError(f"PairwiseDot needs at least 2 fields, got {num_fields}")
        self.pairs = list(itertools.combinations(range(num_fields), 2))
        super().build(input_shape)

    def call(self, fields: tf.Tensor, field_mask: tf.Tensor | None = None) -> tf.Tensor:
        fields = masked_fields(fields, field_mask, self.compute_dtype)
        gram = tf.einsum("bfh,bgh->bfg", fields, fields)
        flat = tf.reshape(gram, [tf.shape(gram)[0], -1])
        num_fields = fields.shape[1]
        return tf.gather(flat, [i * num_fields + j for i, j in self.pairs], axis=1)


@tf.keras.utils.register_keras_serializable(package="tfsr")
class FactorizationMachine(tf.keras.layers.Layer):
    """The FM term over field vectors: `w · [e_1; …; e_F] + Σ_{i<j} <e_i, e_j>`.

    The second order uses the sum-square trick, `½ Σ_h ((Σ_i e_ih)² − Σ_i e_ih²)`, O(F·H) instead of
    O(F²·H). In DeepFM (Guo et al., IJCAI 2017, §2.1) a field's value enters the FM as `x_i · V_i`;
    here a field is a dense aspect vector, so the first order is a linear map of each field (for an id
    field, `w_f · e_id` is a learned scalar per id, like FM's `w_i`). The bias `w_0` is the towers'.

    Call args: `fields [B, F, H]`, `field_mask [B, F]` bool (None: all present).
    Output shape: `[B]`.

    Example:
      >>> fm = FactorizationMachine()
      >>> fm(tf.random.normal([8, 4, 16])).shape   # [8]
    """

    def build(self, input_shape):
        num_fields, width = _known_dims("FactorizationMachine", input_shape)
        self.linear = tf.keras.layers.Dense(1, use_bias=False, name="first_order", dtype=self.dtype_policy)
        self.linear.build((None, num_fields * width))
        super().build(input_shape)

    def call(self, fields: tf.Tensor, field_mask: tf.Tensor | None = None) -> tf.Tensor:
        fields = masked_fields(fields, field_mask, self.compute_dtype)
        first = self.linear(tf.reshape(fields, [tf.shape(fields)[0], -1]))[:, 0]
        summed = tf.reduce_sum(fields, axis=1)
        second = 0.5 * tf.reduce_sum(tf.square(summed) - tf.reduce_sum(tf.square(fields), axis=1), axis=1)
        return first + second


@tf.keras.utils.register_keras_serializable(package="tfsr")
class CrossNetwork(tf.keras.layers.Layer):
    """A DCN-v2 cross network: `x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`, `num_layers` times.

    Each layer is TFRS's `tfrs.layers.dcn.Cross` (Wang et al., WWW 2021, Eq. 1; low-rank `W = U V`,
    Eq. 2, when `projection_dim` is set). Layer l holds the products of degree up to l + 1.

    Args:
      num_layers: number of cross layers (>= 1).
      projection_dim: None for a full-rank `W` (`D × D`); else the rank of `U V`. The paper finds
        `D / 4` keeps the full-rank accuracy.
      diag_scale: added to W's diagonal (`tfrs.layers.dcn.Cross`), >= 0.

    Input shape: `[B, D]`. Output shape: `[B, D]`.

    Example:
      >>> CrossNetwork(2, projection_dim=8)(tf.random.normal([4, 32])).shape   # [4, 32]
    """

    def __init__(
        self, num_layers: int = 2, projection_dim: int | None = None, diag_scale: float = 0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.projection_dim = (
            None if projection_dim is None else check_positive_int("projection_dim", projection_dim)
        )
        if not diag_scale >= 0:
            raise ValueError(f"diag_scale must be >= 0, got {diag_scale!r}")
        self.diag_scale = float(diag_scale)

    def build(self, input_shape):
        width = tf.TensorShape(input_shape)[-1]
        if width is None:
            raise ValueError(f"CrossNetwork needs a known input width, got input shape {input_shape}")
        self.cross_layers = []
        for i in range(self.num_layers):
            layer = tfrs.layers.dcn.Cross(
                projection_dim=self.projection_dim,
                diag_scale=self.diag_scale,
                name=f"cross_{i}",
                dtype=self.dtype_policy,
            )
            layer.build(tf.TensorShape([None, int(width)]))
            self.cross_layers.append(layer)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x0 = tf.cast(inputs, self.compute_dtype)
        x = x0
        for layer in self.cross_layers:
            x = layer(x0, x)
        return x

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "projection_dim": self.projection_dim,
            "diag_scale": self.diag_scale,
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class FeatureInteractions(tf.keras.layers.Layer):
    """The L2 interaction block: explicit interactions of a set of fields, for the experts and the logit.

    Kinds (any non-empty subset of `INTERACTIONS`; outputs in this order):
      * `"dot"`: :class:`PairwiseDot` of the fields -> features `[B, F'(F'-1)/2]`, and
        `Σ_p a_p · dot_p` -> `"logit"`, with learned `a_p` starting at 1 (the FM's pairwise term): a
        product that decides the click, like user·item, then reaches the logit at once instead of
        through the ReLU experts, where small embedding products train slowly;
      * `"fields"`: the flattened, masked fields -> features `[B, F'·H]` (DeepFM's deep input);
      * `"cross"`: :class:`CrossNetwork` over the flattened, masked fields -> features `[B, F'·H]`;
      * `"fm"`: :class:`FactorizationMachine` of the fields -> `"logit"` `[B]`.
    `F' = F + 1` with a domain field, else F.

    Args:
      kinds: the interactions to compute.
      num_cross_layers: layers of the cross network.
      cross_projection_dim: rank of the cross layers' `W` (None: full rank).
      num_domains: when set, a learned per-domain embedding (width H, in a
        :class:`~tfsr.layers.DomainWeights`, so `add_domain` extends it) joins the fields, always present:
        the domain as a field, as a single multi-domain DeepFM / DCN would take it.

    Call args: `fields [B, F, H]`, `field_mask [B, F]` bool, `domain_ids [B]` int (needed with
    `num_domains`).
    Output: a dict with `"features"` `[B, P]` (when any of dot / fields / cross) and `"logit"` `[B]`
    (with dot or fm; their sum).

    Example:
      >>> block = FeatureInteractions(("dot", "cross"), num_cross_layers=2)
      >>> out = block(entities, entity_mask, domain_ids)    # entities [B, 3, H]
      >>> out["features"].shape                              # [B, 3 + 3H]
    """

    def __init__(
        self,
        kinds,
        num_cross_layers: int = 2,
        cross_projection_dim: int | None = None,
        num_domains: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in INTERACTIONS]
        if not kinds or unknown or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"kinds must be a non-empty subset of {INTERACTIONS} without repeats, got {kinds!r}"
            )
        self.kinds = tuple(k for k in INTERACTIONS if k in kinds)
        self.num_cross_layers = check_positive_int("num_cross_layers", num_cross_layers)
        self.cross_projection_dim = (
            None
            if cross_projection_dim is None
            else check_positive_int("cross_projection_dim", cross_projection_dim)
        )
        self.domain_weights = (
            None
            if num_domains is None
            else DomainWeights(
                check_positive_int("num_domains", num_domains), name="domain_field", dtype=self.dtype_policy
            )
        )
        self.dot = self.dot_logit = self.cross = self.fm = None  # built in build()

    @property
    def num_domains(self) -> int | None:
        return None if self.domain_weights is None else self.domain_weights.num_domains

    @property
    def shared_layers(self) -> list[tf.keras.layers.Layer]:
        """The sublayers with parameters shared by all domains (frozen by `freeze("L2_shared")`); the
        domain field's per-domain rows are not among them."""
        return [layer for layer in (self.dot_logit, self.cross, self.fm) if layer is not None]

    def build(self, input_shape):
        num_fields, width = _known_dims("FeatureInteractions", input_shape)
        if self.domain_weights is not None:
            self.domain_weights.add_family(
                "embedding", (width,), tf.keras.initializers.RandomNormal(stddev=0.05)
            )
            num_fields += 1
        field_shape = tf.TensorShape([None, num_fields, width])
        self.dot = PairwiseDot(name="dot", dtype=self.dtype_policy) if "dot" in self.kinds else None
        self.cross = (
            CrossNetwork(
                self.num_cross_layers, self.cross_projection_dim, name="cross", dtype=self.dtype_policy
            )
            if "cross" in self.kinds
            else None
        )
        self.fm = FactorizationMachine(name="fm", dtype=self.dtype_policy) if "fm" in self.kinds else None
        for layer in (self.dot, self.fm):
            if layer is not None:
                layer.build(field_shape)
        if self.dot is not None:
            self.dot_logit = tf.keras.layers.Dense(
                1, use_bias=False, kernel_initializer="ones", name="dot_logit", dtype=self.dtype_policy
            )
            self.dot_logit.build((None, len(self.dot.pairs)))
        if self.cross is not None:
            self.cross.build(tf.TensorShape([None, num_fields * width]))
        super().build(input_shape)

    def call(
        self, fields: tf.Tensor, field_mask: tf.Tensor, domain_ids: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        fields = masked_fields(fields, field_mask, self.compute_dtype)
        if self.domain_weights is not None:
            if domain_ids is None:
                raise ValueError("FeatureInteractions with num_domains needs domain_ids in call(), got None")
            domain = tf.gather(self.domain_weights.stacked("embedding"), tf.cast(domain_ids, tf.int32))
            fields = tf.concat([fields, domain[:, None, :]], axis=1)
        flat = tf.reshape(fields, [tf.shape(fields)[0], fields.shape[1] * fields.shape[2]])
        features, logits = [], []
        if self.dot is not None:
            dots = self.dot(fields)
            features.append(dots)
            logits.append(self.dot_logit(dots)[:, 0])
        if "fields" in self.kinds:
            features.append(flat)
        if self.cross is not None:
            features.append(self.cross(flat))
        outputs = {}
        if features:
            outputs["features"] = tf.concat(features, axis=1)
        if self.fm is not None:
            logits.append(self.fm(fields))
        if logits:
            outputs["logit"] = tf.add_n(logits)
        return outputs

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kinds": list(self.kinds),
            "num_cross_layers": self.num_cross_layers,
            "cross_projection_dim": self.cross_projection_dim,
            "num_domains": self.num_domains,
        }
