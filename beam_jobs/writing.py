"""Writing ``build_samples``' splits: gzip TFRecord shards, rows spread over shards by a seeded key.

Raw, label and meta features are encoded by the feature spec; the derived text embeddings are joined from
the unique-text tables of :mod:`beam_jobs.text_features`.
"""

from __future__ import annotations

import math

from beam_jobs.sample_coder import SampleRecord
from beam_jobs.text_features import float_feature
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


def _shard_keyed(split_record, seed: int, shards: dict):
    split, record = split_record
    key = sample_key(record, seed)
    return (split, shard_of(key, shards[split])), (key, record)


class _WriteShardFn(beam.DoFn):
    """((split, shard), [(key, record)]) -> one gzip TFRecord file of tf.train.Examples in key order.

    Raw, label and meta features go through ``spec.to_example`` (validated); the derived embedding
    features are appended from the unique-text tables (their width was checked once per text). One
    shard (about ROWS_PER_SHARD rows) is held while it is written. The file name is fixed by (split,
    shard) and its bytes by its rows, so a retried bundle rewrites the same file. Emits the ledger row
    ("shards", split) -> 1.
    """

    def __init__(self, spec: FeatureSpec, output_dir: str):
        self.spec = spec
        self.output_dir = output_dir
        self.zeros = float_feature([0.0] * spec.text_dim)  # the embedding of an empty text

    def _example(self, record: dict, tables: dict) -> bytes:
        example = self.spec.to_example(record, roles=RECORD_ROLES)
        for source, derived in self.spec.text_embeddings.items():
            text = record[source]
            example.features.feature[derived].MergeFromString(tables[source][text] if text else self.zeros)
        return example.SerializeToString()

    def process(self, element, shards: dict, **tables):
        (split, shard), keyed = element
        path = shard_path(self.output_dir, split, shard, shards[split])
        with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as handle:
            for _, record in sorted(keyed, key=lambda key_record: key_record[0]):
                _TFRecordUtil.write_record(handle, self._example(record, tables))
        yield ("shards", split), 1


class WriteShuffledSplits(beam.PTransform):
    """(split, record) -> <output_dir>/<split>/part-SSSSS-of-NNNNN.tfrecord.gz, shuffled across shards.

    Every row gets a seeded key (`sample_key`, its content only); a split of n rows gets
    `num_shards(n)` shards, each a contiguous key range written in key order. So every shard, and any
    interleaving of shards, mixes domains and users however the logs were ordered (domain-sorted logs
    would otherwise train the domains one after another), and the same rows give the same files.
    Returns the ledger rows ("shards", split) -> 1 per file written.
    """

    def __init__(self, spec: FeatureSpec, output_dir: str, seed: int, tables: dict):
        super().__init__()
        self.spec = spec
        self.output_dir = output_dir
        self.seed = seed
        self.tables = tables

    def expand(self, split_records):
        shards = beam.pvalue.AsDict(
            split_records
            | "RowsPerSplit" >> beam.combiners.Count.PerKey()
            | "ShardsPerSplit" >> beam.MapTuple(lambda split, rows: (split, num_shards(rows)))
        )
        return (
            split_records
            | "ShardKeys"
            >> beam.Map(_shard_keyed, self.seed, shards).with_output_types(
                typehints.Tuple[typehints.Tuple[str, int], typehints.Tuple[int, SampleRecord]]
            )
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards"
            >> beam.ParDo(
                _WriteShardFn(self.spec, self.output_dir),
                shards,
                **{f: beam.pvalue.AsDict(t) for f, t in self.tables.items()},
            )
        )
