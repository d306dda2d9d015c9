"""Text features of ``build_samples``: each unique text embedded once by the frozen text encoder, and the
keyed join that attaches the vectors to the samples that carry them (``--text_features vector``).

Which text features get an embedding, and the derived feature that holds it, is the feature spec's to
say (:attr:`tfsr.features.FeatureSpec.text_embeddings`); :data:`TEXT_FEATURES` are those of tfsr's
default features.

The join is a shuffle keyed by the text (:class:`JoinTextEmbedding`), never a side input: a side input
holding every distinct text's vector would have to fit on every worker (1M titles and 10M queries are
~15 GB with a 384-wide encoder).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from beam_jobs.sample_coder import EmbeddedRecord
from beam_jobs.text_inference import TextEncoderModelHandler
from tfsr import layout
from tfsr.features import default_features, text_embeddings

import apache_beam as beam
from apache_beam import typehints
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

TEXT_FEATURES = tuple(text_embeddings(default_features()))


def _embedding_example(text: str, vector) -> bytes:
    from tfsr.text.cache import EMBEDDING_KEY, TEXT_KEY

    import tensorflow as tf

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                TEXT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])),
                EMBEDDING_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=vector.tolist())),
            }
        )
    ).SerializeToString()


def float_feature(vector) -> bytes:
    """A vector as a serialized `tf.train.Feature` (float_list): what each sample carries for its text."""
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=vector)).SerializeToString()


class EmbedTexts(beam.PTransform):
    """Unique texts of each text feature -> RunInference (batched) -> text_embeddings/<feature>.tfrecord.gz,
    and per feature a table PCollection[(text, serialized float Feature)], one element per distinct text:
    what :class:`JoinTextEmbedding` joins into vector-carrying samples (and the ledger counts)."""

    def __init__(
        self, encoder_dir: str, output_dir: str, text_dim: int, text_features: Sequence[str] = TEXT_FEATURES
    ):
        super().__init__()
        self.encoder_dir = encoder_dir
        self.output_dir = output_dir
        self.text_dim = text_dim
        self.text_features = tuple(text_features)

    def expand(self, records):
        unique = (
            records
            | "TextValues" >> beam.FlatMap(lambda r, fs: [(f, r[f]) for f in fs if r[f]], self.text_features)
            | "UniqueTexts" >> beam.Distinct()
        )
        embedded = (
            unique
            | "RunTextEncoder" >> RunInference(KeyedModelHandler(TextEncoderModelHandler(self.encoder_dir)))
            | "CheckWidth" >> beam.Map(self._checked)
        )
        out = {}
        for feature in self.text_features:
            table = embedded | f"Select_{feature}" >> beam.FlatMap(
                lambda kv, f: [kv[1]] if kv[0] == f else [], feature
            )
            prefix = str(layout.text_embeddings_path(self.output_dir, feature)).removesuffix(
                layout.TFRECORD_SUFFIX
            )
            _ = (
                table
                | f"Serialize_{feature}" >> beam.MapTuple(_embedding_example)
                | f"Write_{feature}"
                >> beam.io.WriteToTFRecord(
                    prefix, file_name_suffix=layout.TFRECORD_SUFFIX, num_shards=1, shard_name_template=""
                )
            )
            out[feature] = table | f"AsFeature_{feature}" >> beam.MapTuple(
                lambda text, vector: (text, float_feature(vector))
            )
        return out

    def _checked(self, keyed):
        feature, result = keyed
        if result.inference.shape != (self.text_dim,):
            raise ValueError(
                f"text encoder returned shape {result.inference.shape}, the FeatureSpec expects "
                f"({self.text_dim},): pass a FeatureSpec text_dim equal to the encoder's dim"
            )
        return feature, (result.example, result.inference)


# The split of the table's entry in a join group: (TABLE_ENTRY, {}, (vector,)). No sample has an empty split.
TABLE_ENTRY = ""


def _with_vector_of_text(element, feature: str) -> Iterator[tuple]:
    """(text, its rows (split, record, embeddings) and the table's entry) -> the rows, the text's vector
    appended to their embeddings.

    The grouped values are read twice, lazily: up to the table's entry, then row by row. Beam's grouped
    values can be iterated again (runners page large groups in from the shuffle), so a popular title's
    rows are never copied into a list, as Beam's own CoGroupByKey would.
    """
    text, values = element
    vector = next((emb[0] for split, _, emb in values if split == TABLE_ENTRY), None)
    if vector is None:  # the tables are built from every sample's texts: a bug, not a bad row
        raise ValueError(f"{feature} {text!r} has no embedding in its text table")
    for split, record, embeddings in values:
        if split != TABLE_ENTRY:
            yield split, record, (*embeddings, vector)


class JoinTextEmbedding(beam.PTransform):
    """(split, record, embeddings) -> the same rows with the embedding of ``record[feature]`` appended:
    a keyed shuffle join of the rows with `table` (text, serialized float Feature), on the text.

    Rows with an empty text skip the shuffle and get b"" (the writer writes zeros): they would all share
    one key. Nothing is broadcast: each text's vector meets its rows in one group, so a worker holds a
    vector per group it processes, never the table.
    """

    def __init__(self, feature: str, table):
        super().__init__()
        self.feature = feature
        self.table = table

    def expand(self, rows):
        feature = self.feature

        def keyed_by_text(row) -> Iterable[tuple]:
            return [(row[1][feature], row)] if row[1][feature] else []

        def empty_text(row) -> Iterable[tuple]:
            return [] if row[1][feature] else [(row[0], row[1], (*row[2], b""))]

        keyed = rows | "KeyByText" >> beam.FlatMap(keyed_by_text).with_output_types(
            typehints.Tuple[str, EmbeddedRecord]
        )
        entries = self.table | "TableEntries" >> beam.MapTuple(
            lambda text, vector: (text, (TABLE_ENTRY, {}, (vector,)))
        ).with_output_types(typehints.Tuple[str, EmbeddedRecord])
        joined = (
            (keyed, entries)
            | "RowsAndVectors" >> beam.Flatten()
            | "GroupByText" >> beam.GroupByKey()
            | "AppendVector" >> beam.FlatMap(_with_vector_of_text, feature).with_output_types(EmbeddedRecord)
        )
        empty = rows | "EmptyText" >> beam.FlatMap(empty_text).with_output_types(EmbeddedRecord)
        return (joined, empty) | "AllRows" >> beam.Flatten()
