"""Text -> frozen-encoder embedding, looked up in the graph: one code path for training and serving.

``tfsr preprocess`` embeds every distinct text once and writes ``text_embeddings/<feature>.tfrecord.gz``
(:mod:`tfsr.layout`). Key-mode samples (the default) carry only the texts; :class:`TextLookup` turns
the texts of a batch into the spec's derived embedding features, in the input pipeline of training
(:func:`tfsr.data.make_dataset`'s ``text_lookup``) and inside the exported SavedModel
(:mod:`tfsr.export`), so the two cannot drift apart.

Each table is a pair of variables, not graph constants: a ``MutableHashTable`` text -> row and a
``[n, text_dim]`` matrix, both saved in the checkpoint (``variables/``), so a table can grow past the
2 GB protobuf limit of a graph. An empty text embeds to zeros (a recommendation sample has no query).
A non-empty text the table lacks goes through the text encoder when there is one (serving: a new item
or query), else it embeds to zeros (``missing="zeros"``) or fails the step naming the text
(``missing="error"``, training: every text of a sample is in its own samples' table, so a miss means
the table and the samples do not belong together).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence

from tfsr import layout
from tfsr.features import FeatureSpec
from tfsr.text.cache import EMBEDDING_KEY, TEXT_KEY

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

MISSING_POLICIES = ("zeros", "error")


def read_text_embeddings(path: str | os.PathLike, text_dim: int) -> tuple[list[bytes], np.ndarray]:
    """Reads a ``text_embeddings/<feature>.tfrecord.gz`` table: (unique texts, ``[n, text_dim]`` float32 array).

    Duplicate texts keep their first embedding. Raises ``ValueError`` naming the file when an embedding does
    not have ``text_dim`` values.
    """
    spec = {TEXT_KEY: tf.io.FixedLenFeature([], tf.string), EMBEDDING_KEY: tf.io.VarLenFeature(tf.float32)}
    texts: list[bytes] = []
    blocks: list[np.ndarray] = []
    seen: set[bytes] = set()
    dataset = tf.data.TFRecordDataset(str(path), compression_type="GZIP").batch(4096)
    for batch in dataset:
        parsed = tf.io.parse_example(batch, spec)
        emb = tf.sparse.to_dense(parsed[EMBEDDING_KEY]).numpy()
        if emb.shape[1] != text_dim:
            raise ValueError(
                f"{path}: embeddings have {emb.shape[1]} values, the feature spec's text_dim is {text_dim}"
            )
        keep = []
        for i, text in enumerate(parsed[TEXT_KEY].numpy().tolist()):
            if text not in seen:
                seen.add(text)
                texts.append(text)
                keep.append(i)
        blocks.append(emb[keep])
    matrix = np.concatenate(blocks, axis=0) if blocks else np.zeros([0, text_dim], np.float32)
    return texts, matrix.astype(np.float32, copy=False)


class TextEmbedder(tf.Module):
    """Texts of one feature -> embeddings: a precomputed table, with a fallback for texts it lacks.

    Args:
      text_dim: embedding width.
      texts: texts of the precomputed table (may be empty).
      matrix: ``[len(texts), text_dim]`` embeddings of `texts`.
      encoder: callable ``[K] string -> [K, text_dim]`` for non-empty texts missing from the table, or None.
      missing: without an encoder, what a missing non-empty text gets: "zeros", or "error" (an
        ``InvalidArgumentError`` naming the text).

    Input ``[B]`` tf.string, output ``[B, text_dim]`` float32. Texts are deduplicated within a batch, so
    the encoder runs at most once per distinct unseen text, and not at all when the table holds them all.
    """

    def __init__(
        self,
        text_dim: int,
        texts: Sequence[bytes] = (),
        matrix=None,
        encoder=None,
        missing: str = "zeros",
        name: str | None = None,
    ):
        super().__init__(name=name)
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.text_dim = int(text_dim)
        self.table_size = len(texts)
        self.missing = missing
        self.encoder = encoder
        self.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=-1)
        if texts:
            self.table.insert(tf.constant(list(texts), tf.string), tf.range(len(texts), dtype=tf.int64))
        rows = np.asarray(matrix if texts else [], np.float32).reshape(len(texts), self.text_dim)
        # one more row, of zeros, at index table_size: where texts that are not in the table look
        padded = np.concatenate([rows, np.zeros([1, self.text_dim], np.float32)])
        self.matrix = tf.Variable(padded, trainable=False, dtype=tf.float32, name="embeddings")

    def __call__(self, texts):
        texts = tf.reshape(texts, [-1])
        unique, index = tf.unique(texts)
        rows = tf.reshape(self.table.lookup(unique), [-1])  # a mutable table's lookup has no static shape
        found = rows >= 0
        emb = tf.gather(self.matrix, tf.where(found, rows, self.table_size))
        nonempty = tf.strings.length(unique) > 0
        missing = tf.logical_and(tf.logical_not(found), nonempty)
        if self.encoder is not None:
            positions = tf.where(missing)[:, 0]
            encoded = tf.cond(
                tf.size(positions) > 0,
                lambda: tf.reshape(
                    tf.cast(self.encoder(tf.gather(unique, positions)), tf.float32), [-1, self.text_dim]
                ),
                lambda: tf.zeros([0, self.text_dim], tf.float32),
            )
            emb = tf.tensor_scatter_nd_update(emb, positions[:, None], encoded)
        elif self.missing == "error":
            check = tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(missing)),
                [
                    f"{self.name}: texts missing from its text_embeddings table:",
                    tf.boolean_mask(unique, missing),
                ],
                summarize=5,
            )
            with tf.control_dependencies([check]):
                emb = tf.identity(emb)
        return tf.gather(emb * tf.cast(nonempty, tf.float32)[:, None], index)


class TextLookup(tf.Module):
    """Raw features -> the same features plus the spec's derived text embeddings (one TextEmbedder each).

    ``lookup(features)`` reads each derived feature's ``source`` text (``[B]`` strings) and adds the
    derived feature (``[B, text_dim]``); other features pass through. A source absent from `features`
    adds nothing (the item catalogue, :func:`tfsr.data.make_items_dataset`, has no query text).
    """

    def __init__(self, spec: FeatureSpec, embedders: Mapping[str, TextEmbedder]):
        super().__init__(name="text_lookup")
        self.sources = {f.name: f.source for f in spec.select(["derived"])}
        missing = sorted(set(self.sources) - set(embedders))
        if missing:
            raise ValueError(f"no text embedder for derived features {missing}")
        self.embedders = {name: embedders[name] for name in self.sources}

    @classmethod
    def from_samples(
        cls,
        samples_dir: str | os.PathLike | None,
        spec: FeatureSpec,
        encoder=None,
        missing: str = "zeros",
    ) -> TextLookup:
        """The tables of ``<samples_dir>/text_embeddings`` (none when `samples_dir` is None or a table is
        absent: every text then takes the fallback), with `encoder` / `missing` as in TextEmbedder."""
        if encoder is not None and getattr(encoder, "dim", spec.text_dim) != spec.text_dim:
            raise ValueError(f"text encoder dim {encoder.dim} != feature spec text_dim {spec.text_dim}")
        embedders = {}
        for f in spec.select(["derived"]):
            texts, matrix = [], None
            if samples_dir is not None:
                path = layout.text_embeddings_path(samples_dir, f.source)
                if path.exists():
                    texts, matrix = read_text_embeddings(path, spec.text_dim)
                else:
                    log.warning("no precomputed embeddings for %s at %s", f.source, path)
            embedders[f.name] = TextEmbedder(
                spec.text_dim, texts, matrix, encoder, missing, name=f"{f.name}_embedder"
            )
        return cls(spec, embedders)

    @property
    def table_sizes(self) -> dict[str, int]:
        return {name: e.table_size for name, e in self.embedders.items()}

    def __call__(self, features: Mapping[str, tf.Tensor]) -> dict:
        out = dict(features)
        for name, source in self.sources.items():
            if source in features:
                out[name] = self.embedders[name](features[source])
        return out


@functools.lru_cache(maxsize=2)
def _cached_lookup(samples_dir: str, spec_json: str) -> TextLookup:
    return TextLookup.from_samples(samples_dir, FeatureSpec.loads(spec_json), missing="error")


def samples_text_lookup(samples_dir: str | os.PathLike, spec: FeatureSpec) -> TextLookup | None:
    """What a reader of `samples_dir` needs to get the derived text features: a TextLookup over its
    tables (``missing="error"``) for key-mode samples, None for samples that carry the vectors. The last
    two are cached, so a run's training and validation datasets share one copy of the tables."""
    if layout.text_features_mode(samples_dir) != layout.TEXT_KEYS:
        return None
    return _cached_lookup(str(pathlib.Path(samples_dir).resolve()), spec.dumps())
