"""Export of the text encoder alone as a SavedModel (strings → embeddings), and its reloading.

The SavedModel is what Beam workers and the serving side load: no tfsr code is needed to run it,
only ``import tensorflow_text`` (which registers the tokenizer ops) before
``tf.saved_model.load``. Layout::

    <export_dir>/saved_model.pb, variables/
    <export_dir>/assets.extra/identity.json     TextEncoder.identity (name, weights sha256, dim, ...)

Signatures: ``serving_default`` (input ``texts`` ``[None]`` tf.string → output ``embeddings``
``[None, dim]`` float32). The reloaded object is also callable (``loaded(texts)``) and keeps the
``tokenize`` and ``embed_token_ids`` functions used for length-sorted batch encoding.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.text.encoder import _TEXTS_SPEC, TextEncoder, encode_sorted

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops the SavedModel uses)

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "texts"
OUTPUT_NAME = "embeddings"


def export_text_encoder(encoder: TextEncoder, export_dir: str | pathlib.Path) -> str:
    """Saves ``encoder`` as a SavedModel at ``export_dir``; returns the directory as a string.

    The directory must not exist or be empty (we never overwrite an export silently).
    """
    if not isinstance(encoder, TextEncoder):
        raise TypeError(f"expected a TextEncoder, got {type(encoder).__name__}")
    path = pathlib.Path(export_dir)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"export directory {path} exists and is not empty")

    @tf.function(input_signature=[_TEXTS_SPEC])
    def serve(texts: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: encoder(texts)}

    tf.saved_model.save(encoder, str(path), signatures={SIGNATURE_NAME: serve})
    extra = path / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / IDENTITY_FILE).write_text(
        json.dumps(encoder.identity, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    logger.info("exported text encoder %s to %s", encoder.identity.get("name"), path)
    return str(path)


def read_identity(export_dir: str | pathlib.Path) -> dict[str, Any]:
    """The identity of an exported encoder (``assets.extra/identity.json``)."""
    path = pathlib.Path(export_dir) / "assets.extra" / IDENTITY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; was {export_dir} written by export_text_encoder?")
    return json.loads(path.read_text(encoding="utf-8"))


class ExportedTextEncoder:
    """A reloaded text-encoder SavedModel with the :class:`TextEncoder` interface.

    ``__call__`` (a ``[batch]`` string tensor → ``[batch, dim]``), ``encode`` (Python list → numpy,
    length-sorted batches), ``dim``, ``max_length`` and ``identity``. The Beam job and the exporter
    use it when they hold an export rather than the weights.
    """

    def __init__(self, export_dir: str | pathlib.Path):
        self.export_dir = str(export_dir)
        self.identity = read_identity(export_dir)
        self.module = tf.saved_model.load(self.export_dir)
        self.dim = int(self.identity["dim"])
        self.max_length = int(self.identity["max_length"])

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        return self.module(texts)

    def encode(self, texts: Sequence[str | bytes], batch_size: int = 256) -> np.ndarray:
        """Same contract as :meth:`TextEncoder.encode`."""
        return encode_sorted(self.module.tokenize, self.module.embed_token_ids, self.dim, texts, batch_size)


def load_exported_text_encoder(export_dir: str | pathlib.Path) -> ExportedTextEncoder:
    """Loads a directory written by :func:`export_text_encoder`."""
    return ExportedTextEncoder(export_dir)
