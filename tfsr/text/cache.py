"""A text → embedding cache: each distinct text goes through the frozen encoder once.

Query texts and item titles repeat massively across samples (a title appears in every rating of
its movie), so the Beam job embeds the *unique* texts and the exporter builds its in-graph lookup
table from the same cache. :meth:`EmbeddingCache.save_tfrecord` writes the
``text_embeddings/<feature>.tfrecord.gz`` format of :mod:`tfsr.layout` (one ``tf.train.Example``
``{text: bytes, embedding: float[dim]}`` per text), and :meth:`EmbeddingCache.load_tfrecord` reads it.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.text.encoder import to_string_list

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

TEXT_KEY = "text"
EMBEDDING_KEY = "embedding"


class SupportsEncode(Protocol):
    dim: int

    def encode(self, texts: Sequence[str | bytes], batch_size: int = 256) -> np.ndarray: ...


class EmbeddingCache:
    """Maps texts (as UTF-8 bytes) to their embedding; encodes only what it has not seen.

    Example:

    >>> cache = EmbeddingCache(load_text_encoder())
    >>> vectors = cache.get_or_encode(["Toy Story (1995)", "Toy Story (1995)", "dark comedy"])
    >>> cache.stats   # {'size': 2, 'hits': 0, 'misses': 3, 'encoded': 2}

    Args:
      encoder: anything with ``dim`` and ``encode(texts, batch_size)`` (a :class:`TextEncoder`,
        an :class:`~tfsr.text.export.ExportedTextEncoder`), or None for a read-only cache (e.g. one
        loaded from TFRecords): then a miss raises ``KeyError``.
      batch_size: batch size used for the misses.
      dim: embedding width; required when ``encoder`` is None.

    ``str`` and ``bytes`` keys are the same text (str is UTF-8 encoded). Not thread-safe: use one
    cache per worker thread (e.g. per Beam ``DoFn`` instance, created in ``setup``).
    """

    def __init__(self, encoder: SupportsEncode | None = None, batch_size: int = 256, dim: int | None = None):
        if encoder is None and dim is None:
            raise ValueError("give an encoder or, for a read-only cache, the embedding dim")
        if encoder is not None and dim is not None and dim != encoder.dim:
            raise ValueError(f"dim {dim} does not match the encoder's dim {encoder.dim}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.encoder = encoder
        self.batch_size = batch_size
        self.dim = int(encoder.dim if encoder is not None else dim)  # type: ignore[arg-type]
        self._vectors: dict[bytes, np.ndarray] = {}
        self.hits = 0
        self.misses = 0
        self.encoded = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, text: object) -> bool:
        key = text.encode("utf-8") if isinstance(text, str) else text
        return key in self._vectors

    @property
    def stats(self) -> dict[str, int]:
        """Size; hits and misses per text occurrence; distinct texts sent to the encoder."""
        return {"size": len(self), "hits": self.hits, "misses": self.misses, "encoded": self.encoded}

    def get_or_encode(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """``[len(texts), dim]`` float32 embeddings; unseen distinct texts are encoded once, together."""
        keys = to_string_list(texts)
        unseen = [k for k in keys if k not in self._vectors]
        self.misses += len(unseen)
        self.hits += len(keys) - len(unseen)
        missing = list(dict.fromkeys(unseen))  # dedupe, keep first-seen order
        if missing:
            if self.encoder is None:
                raise KeyError(f"{len(missing)} texts are not in this read-only cache, e.g. {missing[0]!r}")
            vectors = self.encoder.encode(missing, batch_size=self.batch_size)
            self.add(missing, vectors)
            self.encoded += len(missing)
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = self._vectors[key]
        return out

    def add(self, texts: Sequence[str | bytes], vectors: np.ndarray) -> None:
        """Inserts precomputed embeddings (e.g. from a Beam side output)."""
        keys = to_string_list(texts)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected {(len(keys), self.dim)}")
        for key, vector in zip(keys, vectors, strict=True):
            self._vectors[key] = vector

    def items(self) -> Iterable[tuple[bytes, np.ndarray]]:
        return self._vectors.items()

    def as_arrays(self) -> tuple[list[bytes], np.ndarray]:
        """All texts (insertion order) and a ``[n, dim]`` matrix: the exporter's lookup table."""
        keys = list(self._vectors)
        matrix = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        return keys, matrix

    # ------------------------------------------------------------------ files

    def save_tfrecord(self, path: str | pathlib.Path) -> int:
        """Writes every entry as a ``tf.train.Example`` (GZIP if the name ends in .gz); returns the count."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        options = tf.io.TFRecordOptions(compression_type="GZIP" if path.suffix == ".gz" else "")
        with tf.io.TFRecordWriter(str(path), options=options) as writer:
            for key, vector in self._vectors.items():
                writer.write(make_example(key, vector).SerializeToString())
        logger.info("wrote %d text embeddings to %s", len(self), path)
        return len(self)

    @classmethod
    def load_tfrecord(
        cls,
        path: str | pathlib.Path,
        encoder: SupportsEncode | None = None,
        dim: int | None = None,
        **kwargs: Any,
    ) -> EmbeddingCache:
        """Reads a file written by :meth:`save_tfrecord`; with an encoder, misses are encoded."""
        path = pathlib.Path(path)
        compression = "GZIP" if path.suffix == ".gz" else ""
        keys: list[bytes] = []
        vectors: list[np.ndarray] = []
        for record in tf.data.TFRecordDataset(str(path), compression_type=compression).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            feature = example.features.feature
            keys.append(feature[TEXT_KEY].bytes_list.value[0])
            vectors.append(np.asarray(feature[EMBEDDING_KEY].float_list.value, dtype=np.float32))
        file_dim = len(vectors[0]) if vectors else dim
        if file_dim is None and encoder is None:
            raise ValueError(f"{path} is empty: pass dim or an encoder")
        if encoder is not None and file_dim is not None and file_dim != encoder.dim:
            raise ValueError(f"{path} holds {file_dim}-d embeddings, the encoder gives {encoder.dim}-d")
        cache = cls(encoder, dim=file_dim if encoder is None else None, **kwargs)
        if vectors:
            cache.add(keys, np.stack(vectors))
        return cache


def make_example(text: str | bytes, vector: np.ndarray) -> tf.train.Example:
    """One ``{text, embedding}`` record of the ``text_embeddings`` files."""
    key = text.encode("utf-8") if isinstance(text, str) else text
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                TEXT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[key])),
                EMBEDDING_KEY: tf.train.Feature(
                    float_list=tf.train.FloatList(value=np.asarray(vector).ravel())
                ),
            }
        )
    )
