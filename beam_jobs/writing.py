"""Writing ``build_samples``' splits: gzip TFRecord shards, rows spread over shards by a seeded key.

Raw, label and meta features are encoded by the feature spec. Samples carry their texts (raw features);
with ``--text_features vector`` they also carry the derived text embeddings, joined into the rows by a
keyed shuffle on each text (:class:`beam_jobs.text_features.JoinTextEmbedding`). With ``key`` (the
default) nothing is joined: readers look the vectors up in ``text_embeddings/``.

The one side input is the shard count of each split (one number per split, whatever the data size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from beam_jobs.sample_coder import EmbeddedRecord, SampleRecord
from beam_jobs.text_features import JoinTextEmbedding, float_feature
from tfsr import layout
from tfsr.datasets.splits import sample_key
from tfsr.features import RECORD_ROLES, FeatureSpec

import apache_beam as beam
from apache_beam import typehints
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

ROWS_PER_SHARD = 25_000


MIN_SHARDS = 8


MIN_ROWS_PER_SHARD = 1_000


MAX_SHARDS = 1_024


def num_shards(rows: int) -> int:
    """Shards of a split of `rows` rows: about ROWS_PER_SHARD rows each, at least MIN_SHARDS when there
    are MIN_ROWS_PER_SHARD rows for each, at most MAX_SHARDS (beyond that the shards grow)."""
    wanted = max(math.ceil(rows / ROWS_PER_SHARD), min(MIN_SHARDS, math.ceil(rows / MIN_ROWS_PER_SHARD)))
    return max(1, min(MAX_SHARDS, wanted))


def shard_of(key: int, shards: int) -> int:
    """The shard of a 63-bit sample key: contiguous key ranges, so the shards in turn hold the rows in
    key order."""
    return (key * shards) >> 63


def shard_path(output_dir: str, split: str, shard: int, shards: int) -> str:
    return f"{output_dir}/{split}/part-{shard:05d}-of-{shards:05d}{layout.TFRECORD_SUFFIX}"


def _shard_keyed(row, seed: int, shards: dict):
    split, record, embeddings = row
    key = sample_key(record, seed)
    return (split, shard_of(key, shards[split])), (key, record, embeddings)


def _without_embeddings(split_record) -> tuple:
    split, record = split_record
    return split, record, ()


class _WriteShardFn(beam.DoFn):
    """((split, shard), [(key, record, embeddings)]) -> one gzip TFRecord file of tf.train.Examples in key
    order.

    Raw, label and meta features go through ``spec.to_example`` (validated); the joined embeddings (their
    width was checked once per text) are merged in as the `derived` features, in order, zeros for an empty
    text. One shard (about ROWS_PER_SHARD rows) is held while it is written. The file name is fixed by
    (split, shard) and its bytes by its rows (features serialized in name order), so a retried bundle, or
    another run, rewrites the same file. Emits the ledger row ("shards", split) -> 1.
    """

    def __init__(self, spec: FeatureSpec, output_dir: str, derived: tuple[str, ...] = ()):
        self.spec = spec
        self.output_dir = output_dir
        self.derived = tuple(derived)
        self.zeros = float_feature([0.0] * spec.text_dim)  # the embedding of an empty text

    def _example(self, record: dict, embeddings: tuple[bytes, ...]) -> bytes:
        example = self.spec.to_example(record, roles=RECORD_ROLES)
        for derived, vector in zip(self.derived, embeddings, strict=True):
            example.features.feature[derived].MergeFromString(vector or self.zeros)
        # features in name order: the default order of a protobuf map is seeded per process
        return example.SerializeToString(deterministic=True)

    def process(self, element, shards: dict):
        (split, shard), keyed = element
        path = shard_path(self.output_dir, split, shard, shards[split])
        with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as handle:
            for _, record, embeddings in sorted(keyed, key=lambda row: row[0]):
                _TFRecordUtil.write_record(handle, self._example(record, embeddings))
        yield ("shards", split), 1


class WriteShuffledSplits(beam.PTransform):
    """(split, record) -> <output_dir>/<split>/part-SSSSS-of-NNNNN.tfrecord.gz, shuffled across shards.

    Every row gets a seeded key (`sample_key`, its content only); a split of n rows gets
    `num_shards(n)` shards, each a contiguous key range written in key order. So every shard, and any
    interleaving of shards, mixes domains and users however the logs were ordered (domain-sorted logs
    would otherwise train the domains one after another), and the same rows give the same files.

    `tables` (``--text_features vector``): for every text feature of the spec, its (text, serialized
    float Feature) table from :class:`beam_jobs.text_features.EmbedTexts`; each is joined into the rows
    by key before the shards are grouped, and the samples carry the derived embedding features. None
    (``key``): the samples carry raw, label and meta features only. The only side input is the shard
    count per split. Returns the ledger rows ("shards", split) -> 1 per file written.
    """

    def __init__(self, spec: FeatureSpec, output_dir: str, seed: int, tables: Mapping | None = None):
        super().__init__()
        tables = dict(tables or {})
        if tables and set(tables) != set(spec.text_embeddings):
            raise ValueError(
                f"vector samples need a text table for each of {sorted(spec.text_embeddings)}, "
                f"got {sorted(tables)}"
            )
        self.spec = spec
        self.output_dir = output_dir
        self.seed = seed
        self.tables = {source: tables[source] for source in spec.text_embeddings if source in tables}

    def expand(self, split_records):
        shards = beam.pvalue.AsDict(
            split_records
            | "RowsPerSplit" >> beam.combiners.Count.PerKey()
            | "ShardsPerSplit" >> beam.MapTuple(lambda split, rows: (split, num_shards(rows)))
        )
        rows = split_records | "NoEmbeddingsYet" >> beam.Map(_without_embeddings).with_output_types(
            EmbeddedRecord
        )
        for source, table in self.tables.items():  # the spec's order: the order the features are merged
            rows = rows | f"JoinEmbeddings_{source}" >> JoinTextEmbedding(source, table)
        derived = tuple(self.spec.text_embeddings[source] for source in self.tables)
        return (
            rows
            | "ShardKeys"
            >> beam.Map(_shard_keyed, self.seed, shards).with_output_types(
                typehints.Tuple[
                    typehints.Tuple[str, int], typehints.Tuple[int, SampleRecord, typehints.Tuple[bytes, ...]]
                ]
            )
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardFn(self.spec, self.output_dir, derived), shards)
        )
