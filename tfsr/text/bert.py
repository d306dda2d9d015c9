"""A BERT encoder in tf-keras that loads Hugging Face (PyTorch) checkpoints without PyTorch.

The layers follow ``transformers.BertModel`` exactly (post-LayerNorm, exact erf GELU, additive
attention mask), so a checkpoint such as all-MiniLM-L6-v2 reproduces the PyTorch forward pass to
~1e-6. Weights are read with :func:`safetensors.numpy.load_file`; PyTorch ``nn.Linear`` stores
``[out, in]`` and is transposed to Keras' ``[in, out]``. The query/key/value projections are fused
into one ``[hidden, 3*hidden]`` matrix: one matmul instead of three, which is faster on CPU.

The encoder is meant to be *frozen* (the paper's domain-invariant text features): variables are
created non-trainable unless ``trainable=True`` is passed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

import numpy as np
import tensorflow as tf

_SUPPORTED_ACTIVATIONS = ("gelu",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The subset of a Hugging Face BERT ``config.json`` that the forward pass needs."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in _SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; expected one of {_SUPPORTED_ACTIVATIONS}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_json_file(cls, path: str | pathlib.Path) -> BertConfig:
        """Reads a Hugging Face ``config.json``; fails for non-BERT-family checkpoints."""
        config = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        model_type = config.get("model_type", "bert")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"only absolute position embeddings are supported, got {config['position_embedding_type']!r}"
            )
        if model_type not in ("bert",):
            raise ValueError(f"{path}: model_type {model_type!r} is not a BERT checkpoint")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _init() -> tf.keras.initializers.Initializer:
    """BERT's initializer; a fresh instance per weight (real weights are assigned afterwards)."""
    return tf.keras.initializers.TruncatedNormal(stddev=0.02)


def _layer_norm(x: tf.Tensor, gamma: tf.Variable, beta: tf.Variable, epsilon: float) -> tf.Tensor:
    """LayerNorm over the last axis, computed like PyTorch (biased variance, eps inside the sqrt)."""
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


@tf.keras.utils.register_keras_serializable(package="tfsr")
class BertEmbeddings(tf.keras.layers.Layer):
    """Word + absolute position + token-type embeddings, then LayerNorm (BERT's embedding block).

    Args:
      vocab_size, hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps: as in BERT.

    Inputs: ``token_ids`` of any shape, int; ``position_ids`` of the same shape (default: the last
    axis is the sequence, positions ``0..seq-1``). Token types are all 0 (single-segment texts).
    Output: ``token_ids.shape + [hidden_size]`` float32.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps

    def build(self, input_shape: Any) -> None:
        h = self.hidden_size
        self.word_embeddings = self.add_weight(
            "word_embeddings", [self.vocab_size, h], initializer=_init(), trainable=self.trainable
        )
        self.position_embeddings = self.add_weight(
            "position_embeddings",
            [self.max_position_embeddings, h],
            initializer=_init(),
            trainable=self.trainable,
        )
        self.token_type_embeddings = self.add_weight(
            "token_type_embeddings", [self.type_vocab_size, h], initializer=_init(), trainable=self.trainable
        )
        self.ln_gamma = self.add_weight("layer_norm_gamma", [h], initializer="ones", trainable=self.trainable)
        self.ln_beta = self.add_weight("layer_norm_beta", [h], initializer="zeros", trainable=self.trainable)
        super().build(input_shape)

    def call(self, token_ids: tf.Tensor, position_ids: tf.Tensor | None = None) -> tf.Tensor:
        if position_ids is None:  # dense [batch, seq] ids: positions 0..seq-1 of every row
            position_ids = tf.range(tf.shape(token_ids)[-1])
        x = tf.gather(self.word_embeddings, token_ids) + tf.gather(self.position_embeddings, position_ids)
        x += self.token_type_embeddings[0]
        return _layer_norm(x, self.ln_gamma, self.ln_beta, self.layer_norm_eps)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class BertTransformerBlock(tf.keras.layers.Layer):
    """One post-LayerNorm BERT encoder layer: self-attention and a GELU feed-forward network.

    Operates on *packed* activations: the ``N`` real tokens of the batch, ``[N, hidden]``, without
    padding. Every dense product is a 2-D matmul over real tokens only; the tokens are scattered to
    ``[batch, seq]`` just for the attention scores (``positions`` says where each one goes). With
    batches in input order (e.g. titles of 5 to 60 tokens) this skips most of the padding work.

    Args:
      hidden_size: model width H.
      num_attention_heads: number of heads; must divide H.
      intermediate_size: feed-forward width.
      layer_norm_eps: LayerNorm epsilon (1e-12 in BERT).

    Inputs: ``x`` ``[N, H]``; ``positions`` ``[N, 2]`` int64 (batch row, sequence index) of each
    token, as ``tf.where(mask)`` gives them; ``attention_bias`` ``[batch, 1, 1, seq]`` (0 for real
    tokens, a large negative number for padding). Output: ``[N, H]``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        layer_norm_eps: float = 1e-12,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
            )
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.layer_norm_eps = layer_norm_eps
        self.head_size = hidden_size // num_attention_heads

    def build(self, input_shape: Any) -> None:
        h, i = self.hidden_size, self.intermediate_size
        self.qkv_kernel = self.add_weight(
            "qkv_kernel", [h, 3 * h], initializer=_init(), trainable=self.trainable
        )
        self.qkv_bias = self.add_weight("qkv_bias", [3 * h], initializer="zeros", trainable=self.trainable)
        self.attn_out_kernel = self.add_weight(
            "attention_output_kernel", [h, h], initializer=_init(), trainable=self.trainable
        )
        self.attn_out_bias = self.add_weight(
            "attention_output_bias", [h], initializer="zeros", trainable=self.trainable
        )
        self.attn_ln_gamma = self.add_weight(
            "attention_layer_norm_gamma", [h], initializer="ones", trainable=self.trainable
        )
        self.attn_ln_beta = self.add_weight(
            "attention_layer_norm_beta", [h], initializer="zeros", trainable=self.trainable
        )
        self.ffn_in_kernel = self.add_weight(
            "intermediate_kernel", [h, i], initializer=_init(), trainable=self.trainable
        )
        self.ffn_in_bias = self.add_weight(
            "intermediate_bias", [i], initializer="zeros", trainable=self.trainable
        )
        self.ffn_out_kernel = self.add_weight(
            "output_kernel", [i, h], initializer=_init(), trainable=self.trainable
        )
        self.ffn_out_bias = self.add_weight("output_bias", [h], initializer="zeros", trainable=self.trainable)
        self.ffn_ln_gamma = self.add_weight(
            "output_layer_norm_gamma", [h], initializer="ones", trainable=self.trainable
        )
        self.ffn_ln_beta = self.add_weight(
            "output_layer_norm_beta", [h], initializer="zeros", trainable=self.trainable
        )
        super().build(input_shape)

    def call(self, x: tf.Tensor, positions: tf.Tensor, attention_bias: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(attention_bias, out_type=tf.int64)
        batch, seq = shape[0], shape[3]
        heads, head_size = self.num_attention_heads, self.head_size

        qkv = tf.matmul(x, self.qkv_kernel) + self.qkv_bias  # [N, 3H]
        qkv = tf.scatter_nd(positions, qkv, tf.stack([batch, seq, 3 * self.hidden_size]))  # padded
        qkv = tf.reshape(qkv, [batch, seq, 3, heads, head_size])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, heads, T, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(head_size)) + attention_bias
        probs = tf.nn.softmax(scores, axis=-1)
        context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])  # [B, T, heads, d]
        context = tf.reshape(tf.gather_nd(context, positions), [-1, self.hidden_size])  # [N, H]

        attn = tf.matmul(context, self.attn_out_kernel) + self.attn_out_bias
        x = _layer_norm(attn + x, self.attn_ln_gamma, self.attn_ln_beta, self.layer_norm_eps)
        hidden = tf.nn.gelu(tf.matmul(x, self.ffn_in_kernel) + self.ffn_in_bias, approximate=False)
        out = tf.matmul(hidden, self.ffn_out_kernel) + self.ffn_out_bias
        return _layer_norm(out + x, self.ffn_ln_gamma, self.ffn_ln_beta, self.layer_norm_eps)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
        }


@tf.keras.utils.register_keras_serializable(package="tfsr")
class BertEncoder(tf.keras.layers.Layer):
    """BERT's embedding block and transformer stack (no pooler): ids + mask → token vectors.

    Example:

    >>> bert = BertEncoder(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
    ...                               intermediate_size=64).to_dict())
    >>> out = bert(tf.constant([[101, 7592, 102]]), tf.constant([[1, 1, 1]]))   # [1, 3, 32]

    Args:
      config: a :class:`BertConfig` as a dict (so that ``get_config`` round-trips through JSON).
      trainable: False by default: this is the frozen text encoder.

    Inputs: ``token_ids`` ``[batch, seq]`` int and ``mask`` ``[batch, seq]`` (1 = token, 0 = pad).
    Output: ``[batch, seq, hidden_size]`` float32, the last hidden state (zeros at padding, where
    Hugging Face returns unused values). :meth:`call_packed` returns the real tokens only.

    Padding costs (almost) nothing: embeddings, projections and feed-forward layers run on the real
    tokens only; only the attention scores see the padded ``[batch, seq]`` layout.
    """

    def __init__(self, config: dict[str, Any], trainable: bool = False, **kwargs: Any):
        super().__init__(trainable=trainable, **kwargs)
        self.bert_config = BertConfig(**config)
        c = self.bert_config
        self.embeddings = BertEmbeddings(
            c.vocab_size,
            c.hidden_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.layer_norm_eps,
            trainable=trainable,
            name="embeddings",
        )
        self.blocks = [
            BertTransformerBlock(
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.layer_norm_eps,
                trainable=trainable,
                name=f"layer_{i}",
            )
            for i in range(c.num_hidden_layers)
        ]

    def build(self, input_shape: Any = None) -> None:
        h = self.bert_config.hidden_size
        self.embeddings.build(tf.TensorShape([None, None]))
        for block in self.blocks:
            block.build(tf.TensorShape([None, h]))
        super().build(input_shape)

    def call(self, token_ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(token_ids, out_type=tf.int64)
        hidden, positions = self.call_packed(token_ids, mask)
        return tf.scatter_nd(positions, hidden, tf.stack([shape[0], shape[1], self.bert_config.hidden_size]))

    def call_packed(self, token_ids: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The last hidden state of the real tokens only: ``([N, H], positions [N, 2] int64)``.

        ``positions`` are ``tf.where(mask)``: (row, index) pairs in row-major order, so
        ``positions[:, 0]`` are sorted segment ids for pooling.
        """
        positions = tf.where(tf.not_equal(mask, 0))  # [N, 2]
        x = self.embeddings(tf.gather_nd(token_ids, positions), tf.cast(positions[:, 1], tf.int32))
        # HF: (1 - mask) * finfo(float32).min added to the attention scores.
        attention_bias = (1.0 - tf.cast(mask, tf.float32)) * tf.float32.min
        attention_bias = attention_bias[:, tf.newaxis, tf.newaxis, :]
        for block in self.blocks:
            x = block(x, positions, attention_bias)
        return x, positions

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.bert_config.to_dict()}

    # ---------------------------------------------------------------- weights

    def load_hf_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Assigns weights from a Hugging Face ``BertModel`` state dict (numpy arrays).

        Accepts keys with or without a ``bert.`` prefix; ignores the pooler and other heads.
        Raises ``ValueError`` naming the key on a missing weight or a shape mismatch.
        """
        if not self.built:
            self.build()
        state = {k.removeprefix("bert."): v for k, v in state.items()}

        def get(key: str) -> np.ndarray:
            if key not in state:
                raise ValueError(f"checkpoint has no weight {key!r}; is it a BERT-family model?")
            return np.asarray(state[key], dtype=np.float32)

        def assign(var: tf.Variable, value: np.ndarray, key: str) -> None:
            if tuple(var.shape) != value.shape:
                raise ValueError(
                    f"weight {key!r} has shape {value.shape}, the model expects {tuple(var.shape)}"
                )
            var.assign(value)

        e = self.embeddings
        assign(
            e.word_embeddings, get("embeddings.word_embeddings.weight"), "embeddings.word_embeddings.weight"
        )
        assign(e.position_embeddings, get("embeddings.position_embeddings.weight"), "position_embeddings")
        assign(
            e.token_type_embeddings, get("embeddings.token_type_embeddings.weight"), "token_type_embeddings"
        )
        assign(e.ln_gamma, get("embeddings.LayerNorm.weight"), "embeddings.LayerNorm.weight")
        assign(e.ln_beta, get("embeddings.LayerNorm.bias"), "embeddings.LayerNorm.bias")
        for i, block in enumerate(self.blocks):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate(
                [get(p + f"attention.self.{n}.weight").T for n in ("query", "key", "value")], 1
            )
            qkv_b = np.concatenate([get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            assign(block.qkv_kernel, qkv_w, p + "attention.self.{query,key,value}.weight")
            assign(block.qkv_bias, qkv_b, p + "attention.self.{query,key,value}.bias")
            pairs = [
                (block.attn_out_kernel, "attention.output.dense.weight", True),
                (block.attn_out_bias, "attention.output.dense.bias", False),
                (block.attn_ln_gamma, "attention.output.LayerNorm.weight", False),
                (block.attn_ln_beta, "attention.output.LayerNorm.bias", False),
                (block.ffn_in_kernel, "intermediate.dense.weight", True),
                (block.ffn_in_bias, "intermediate.dense.bias", False),
                (block.ffn_out_kernel, "output.dense.weight", True),
                (block.ffn_out_bias, "output.dense.bias", False),
                (block.ffn_ln_gamma, "output.LayerNorm.weight", False),
                (block.ffn_ln_beta, "output.LayerNorm.bias", False),
            ]
            for var, name, transpose in pairs:
                value = get(p + name)
                assign(var, value.T if transpose else value, p + name)


def random_hf_state_dict(config: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A randomly initialised BERT state dict in Hugging Face naming (PyTorch ``[out, in]`` layout).

    Deterministic under ``seed``; used by the tiny test encoder so that it goes through the same
    loading path as a real checkpoint.
    """
    rng = np.random.default_rng(seed)
    h, i = config.hidden_size, config.intermediate_size

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def near_one(n: int) -> np.ndarray:
        return (1.0 + rng.standard_normal(n) * 0.02).astype(np.float32)

    state = {
        "embeddings.word_embeddings.weight": normal(config.vocab_size, h),
        "embeddings.position_embeddings.weight": normal(config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": normal(config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": near_one(h),
        "embeddings.LayerNorm.bias": normal(h),
    }
    for layer in range(config.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        for n in ("query", "key", "value"):
            state[p + f"attention.self.{n}.weight"] = normal(h, h)
            state[p + f"attention.self.{n}.bias"] = normal(h)
        state[p + "attention.output.dense.weight"] = normal(h, h)
        state[p + "attention.output.dense.bias"] = normal(h)
        state[p + "attention.output.LayerNorm.weight"] = near_one(h)
        state[p + "attention.output.LayerNorm.bias"] = normal(h)
        state[p + "intermediate.dense.weight"] = normal(i, h)
        state[p + "intermediate.dense.bias"] = normal(i)
        state[p + "output.dense.weight"] = normal(h, i)
        state[p + "output.dense.bias"] = normal(h)
        state[p + "output.LayerNorm.weight"] = near_one(h)
        state[p + "output.LayerNorm.bias"] = normal(h)
    return state
