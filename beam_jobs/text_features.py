"""Text features of ``build_samples``: each unique text embedded once by the frozen text encoder.

Which text features get an embedding, and the derived feature that holds it, is the feature spec's to
say (:attr:`tfsr.features.FeatureSpec.text_embeddings`); :data:`TEXT_FEATURES` are those of tfsr's
default features.
"""

from __future__ import annotations

from collections.abc import Sequence

from beam_jobs.text_inference import TextEncoderModelHandler
from tfsr import layout
from tfsr.features import default_features, text_embeddings

import apache_beam as beam
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
    and per feature a small table PCollection[(text, serialized float Feature)] to join into samples."""

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
