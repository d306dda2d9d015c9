"""L0 aspect encoders: one feature -> one H-wide vector (Gong et al., CIKM 2023, §3.2,
https://arxiv.org/abs/2309.08939; docs/MODEL.md, "Architecture").

Each entity (user, query, item) is described by up to three *aspects*: `id` (an embedding of the
entity's id), `text` (a trainable projection of a frozen language model's embedding) and `sparse`
(pooled embeddings of multi-valued categorical features). Every encoder also says, per sample,
whether its feature is *present* (`presence()`): an empty id, an all-zero text vector or an empty
list is absent, and the fusion layer excludes absent aspects from its softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfsr.contract import check_positive_int

import tensorflow as tf


class AspectEncoder(tf.keras.layers.Layer):
    """Base class of aspect encoders: `call(inputs) -> [B, H]` and `presence(inputs) -> [B] bool`.

    A team's own encoder (say, of a new user feature) subclasses this and overrides `call` and,
    where a value can be missing, `presence`.
    """

    def presence(self, inputs) -> tf.Tensor:
        """`[B]` bool: True where the sample carries a value. Default: always present."""
        batch = inputs.nrows() if isinstance(inputs, tf.RaggedTensor) else tf.shape(inputs)[0]
        return tf.ones([batch], tf.bool)


def _clean_vocabulary(vocabulary: Sequence[str]) -> list[str]:
    """Drops the empty string (it means "absent") and duplicates, keeping order."""
    return list(dict.fromkeys(str(v) for v in vocabulary if v != ""))


@tf.keras.utils.register_keras_serializable(package="tfsr")
class IdEncoder(AspectEncoder):
    """Embedding of a categorical id, looked up in a vocabulary or hashed.

    Out-of-vocabulary ids share `num_oov_buckets` hashed OOV rows. The empty string is absent.

    Args:
      embedding_dim: H, the output width.
      vocabulary: the known ids (most frequent first); or None to hash.
      num_hash_bins: number of hash buckets when `vocabulary` is None.
      num_oov_buckets: OOV rows added to a vocabulary (>= 1).
      embeddings_initializer: initializer of the embedding table.

    Input shape: `[B]` string (or int64, converted to strings).
    Output shape: `[B, H]`.

    Example:
      >>> encoder = IdEncoder(16, vocabulary=["u1", "u2"])
      >>> encoder(tf.constant(["u2", "unseen"])).shape      # [2, 16]
    """

    def __init__(
        self,
        embedding_dim: int,
        vocabulary: Sequence[str] | None = None,
        num_hash_bins: int | None = None,
        num_oov_buckets: int = 1,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        if (vocabulary is None) == (num_hash_bins is None):
            raise ValueError(
                f"give exactly one of vocabulary and num_hash_bins, got vocabulary="
                f"{'None' if vocabulary is None else f'<{len(vocabulary)} values>'} and num_hash_bins={num_hash_bins!r}"
            )
        self.vocabulary = None if vocabulary is None else _clean_vocabulary(vocabulary)
        self.num_hash_bins = (
            None if num_hash_bins is None else check_positive_int("num_hash_bins", num_hash_bins)
        )
        self.num_oov_buckets = check_positive_int("num_oov_buckets", num_oov_buckets)
        self.embeddings_initializer = tf.keras.initializers.get(embeddings_initializer)
        # Lookup tables are stateful resources: create them eagerly, not while tracing `build`.
        if self.vocabulary is not None:
            self.lookup = tf.keras.layers.StringLookup(
                vocabulary=self.vocabulary, num_oov_indices=self.num_oov_buckets, mask_token=None
            )
            self.input_dim = len(self.vocabulary) + self.num_oov_buckets
        else:
            self.lookup = tf.keras.layers.Hashing(num_bins=self.num_hash_bins)
            self.input_dim = self.num_hash_bins

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.input_dim, self.embedding_dim),
            initializer=self.embeddings_initializer,
        )
        super().build(input_shape)

    def embed_values(self, values: tf.Tensor) -> tf.Tensor:
        """Embeds a tensor of id values of any shape: `[...]` -> `[..., H]`."""
        if values.dtype != tf.string:
            values = tf.strings.as_string(values)
        return tf.gather(self.embeddings, self.lookup(values))

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.embed_values(inputs)

    def presence(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs != "" if inputs.dtype == tf.string else super().presence(inputs)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "embedding_dim": self.embedding_dim,
            "vocabulary": self.vocabulary,
            "num_hash_bins": self.num_hash_bins,
            "num_oov_buckets": self.num_oov_buckets,
            "embeddings_initializer": tf.keras.initializers.serialize(self.embeddings_initializer),
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class SparseEncoder(IdEncoder):
    """Mean- or sum-pooled embeddings of a multi-valued categorical feature (the `sparse` aspect).

    Takes the same lookup arguments as :class:`IdEncoder`. Empty strings inside a list are ignored;
    a sample with no value gets a zero vector and is absent.

    Args:
      embedding_dim, vocabulary, num_hash_bins, num_oov_buckets, embeddings_initializer: as IdEncoder.
      combiner: "mean" or "sum".

    Input shape: `[B, None]` ragged string (a list per sample) or `[B]` string (one value per sample).
    Output shape: `[B, H]`.
    """

    COMBINERS = ("mean", "sum")

    def __init__(self, embedding_dim: int, combiner: str = "mean", **kwargs):
        if combiner not in self.COMBINERS:
            raise ValueError(f"combiner must be one of {self.COMBINERS}, got {combiner!r}")
        super().__init__(embedding_dim, **kwargs)
        self.combiner = combiner

    @staticmethod
    def _as_ragged(inputs) -> tf.RaggedTensor:
        if isinstance(inputs, tf.RaggedTensor):
            return inputs
        if inputs.shape.rank == 1:
            inputs = tf.expand_dims(inputs, -1)
        return tf.RaggedTensor.from_tensor(inputs)

    def _value_weights(self, ragged: tf.RaggedTensor) -> tf.Tensor:
        values, dtype = ragged.flat_values, self.compute_dtype
        return tf.cast(values != "", dtype) if values.dtype == tf.string else tf.ones_like(values, dtype)

    def call(self, inputs) -> tf.Tensor:
        ragged = self._as_ragged(inputs)
        weights = self._value_weights(ragged)
        embedded = self.embed_values(ragged.flat_values) * weights[:, None]
        rows = tf.cast(ragged.value_rowids(), tf.int32)
        nrows = tf.cast(ragged.nrows(), tf.int32)
        pooled = tf.math.unsorted_segment_sum(embedded, rows, nrows)
        if self.combiner == "sum":
            return pooled
        counts = tf.math.unsorted_segment_sum(weights, rows, nrows)
        return pooled / tf.maximum(counts, 1.0)[:, None]

    def presence(self, inputs) -> tf.Tensor:
        ragged = self._as_ragged(inputs)
        counts = tf.math.unsorted_segment_sum(
            self._value_weights(ragged),
            tf.cast(ragged.value_rowids(), tf.int32),
            tf.cast(ragged.nrows(), tf.int32),
        )
        return counts > 0

    def get_config(self) -> dict:
        return {**super().get_config(), "combiner": self.combiner}


@tf.keras.utils.register_keras_serializable(package="tfsr")
class TextEncoder(AspectEncoder):
    """Trainable projection of a frozen text encoder's vector (the `text` aspect).

    The language model itself stays frozen and outside the model (its vectors are computed upstream,
    or in the serving graph); only this projection into the common width H is learned. An all-zero
    vector (empty text) is absent.

    Args:
      embedding_dim: H, the output width.
      use_bias: whether the projection has a bias.
      kernel_initializer: initializer of the projection.

    Input shape: `[B, T]` float.
    Output shape: `[B, H]` (in the layer's `compute_dtype`).
    """

    def __init__(
        self, embedding_dim: int, use_bias: bool = True, kernel_initializer="glorot_uniform", **kwargs
    ):
        super().__init__(**kwargs)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        input_dim = tf.TensorShape(input_shape)[-1]
        if input_dim is None:
            raise ValueError(f"TextEncoder needs a known last input dimension, got input shape {input_shape}")
        self.kernel = self.add_weight(
            name="kernel", shape=(int(input_dim), self.embedding_dim), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.embedding_dim,), initializer="zeros")
            if self.use_bias
            else None
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        outputs = tf.matmul(tf.cast(inputs, self.compute_dtype), self.kernel)
        return outputs if self.bias is None else outputs + self.bias

    def presence(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.reduce_any(inputs != 0, axis=-1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "embedding_dim": self.embedding_dim,
            "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class MissingEntityVector(tf.keras.layers.Layer):
    """A learned vector standing in for an entity a sample does not have (e.g. "no query").

    Rec-domain samples carry no query: rather than a zero vector, the query slot gets a learned
    "no query" embedding (docs/MODEL.md, "Architecture").

    Args:
      embedding_dim: H.

    Call args:
      inputs: `[B, H]` the entity's fused vector.
      present: `[B]` bool, whether the sample has the entity.

    Output shape: `[B, H]`: `inputs` where present, the learned vector elsewhere.
    """

    def __init__(self, embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)

    def build(self, input_shape):
        self.vector = self.add_weight(
            name="vector",
            shape=(self.embedding_dim,),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
        return tf.where(present[:, None], inputs, self.vector[None, :])

    def get_config(self) -> dict:
        return {**super().get_config(), "embedding_dim": self.embedding_dim}
