"""The item catalogue of ``build_samples``: ``items/part-SSSSS-of-NNNNN.tfrecord.gz`` (:mod:`tfsr.layout`).

Every distinct ``item_id`` of the written samples (all splits: positives and negatives, warm and
cold-start domains) once, as a ``tf.train.Example`` of the spec's raw item features only
(``spec.select(["raw"], entity="item")``: item_id, item_title, item_genres, item_decade for the default
spec). No embeddings, in either text-feature mode: readers look ``item_title`` up in ``text_embeddings/``.
Two-tower retrieval scores a query against this catalogue (:func:`tfsr.data.make_items_dataset`).

An item whose rows disagree on its features (generic logs may) keeps the smallest of its feature-value
tuples, so the choice does not depend on the order of the rows. Nothing is collected into one element or
side input: rows meet in a per-item combine (lifted: only one candidate per item and bundle crosses the
shuffle) and items in per-shard groups; the one side input is the shard count. Items are spread over
``num_shards(items)`` shards by a hash of their id, each shard is written in item_id order, features in
name order, so the same samples give the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from beam_jobs.writing import num_shards, shard_of, shard_path
from tfsr import layout
from tfsr.features import FeatureSpec

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

ITEM_ID = "item_id"
RAW = ("raw",)


def item_features(spec: FeatureSpec) -> tuple[str, ...]:
    """The features the catalogue holds: the spec's raw item-entity features, in spec order."""
    names = tuple(f.name for f in spec.select(RAW, entity="item"))
    if ITEM_ID not in names:
        raise ValueError(f"the item catalogue needs a raw item feature {ITEM_ID!r}, the spec has {names}")
    return names


def item_key(item_id: str) -> int:
    """A 63-bit hash of an item id (not seeded, not Python's per-process ``hash``): the item's shard."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _sortable(value):
    return tuple(value) if isinstance(value, list) else value


def _item_candidate(split_record, item_names: Sequence[str], raw_names: Sequence[str]):
    """(split, record) -> (item_id, (its item-feature values, its raw features)): one candidate row."""
    _, record = split_record
    values = tuple(_sortable(record[name]) for name in item_names)
    return record[ITEM_ID], (values, {name: record[name] for name in raw_names})


class _SmallestItemFeatures(beam.CombineFn):
    """The candidate with the smallest item-feature values; candidates that tie have the same item
    features, so which of them is kept does not show in the catalogue."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, candidate):
        return candidate if accumulator is None or candidate[0] < accumulator[0] else accumulator

    def merge_accumulators(self, accumulators):
        kept = None
        for candidate in accumulators:
            if candidate is not None:
                kept = self.add_input(kept, candidate)
        return kept

    def extract_output(self, accumulator):
        return accumulator[1]


def _encode_item(item, spec: FeatureSpec, item_names: frozenset):
    """(item_id, raw features) -> (item_id, deterministic tf.train.Example bytes of its item features)."""
    item_id, record = item
    # the raw features are validated (the other entities' too: to_example checks what its roles require),
    # then only the item's are kept
    example = spec.to_example(record, roles=RAW)
    for name in [n for n in example.features.feature if n not in item_names]:
        del example.features.feature[name]
    # features in name order: the default order of a protobuf map is seeded per process
    return item_id, example.SerializeToString(deterministic=True)


class _WriteItemShardFn(beam.DoFn):
    """(shard, [(item_id, example bytes)]) -> one gzip TFRecord file in item_id order; emits the ledger row
    ("items",) -> its item count. One shard (about ROWS_PER_SHARD items) is held while it is written."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element, shards: int):
        shard, items = element
        items = sorted(items)
        path = shard_path(self.output_dir, layout.ITEMS_DIR, shard, shards)
        with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as handle:
            for _, serialized in items:
                _TFRecordUtil.write_record(handle, serialized)
        yield ("items",), len(items)


def _write_empty_catalogue(items: int, output_dir: str) -> None:
    """No item: one empty shard, so readers see an empty catalogue, not a missing one."""
    if not items:
        FileSystems.create(shard_path(output_dir, layout.ITEMS_DIR, 0, 1)).close()


class WriteItemCatalogue(beam.PTransform):
    """(split, record) of every written sample -> ``<output_dir>/items/part-SSSSS-of-NNNNN.tfrecord.gz``.

    One ``tf.train.Example`` per distinct item_id with the spec's raw item features (:func:`item_features`),
    chosen deterministically among the item's rows (the smallest feature values). Returns the ledger rows
    ("items",) -> items per shard written (the manifest's ``"items"``).
    """

    def __init__(self, spec: FeatureSpec, output_dir: str):
        super().__init__()
        self.spec = spec
        self.output_dir = output_dir
        self.item_names = item_features(spec)
        self.raw_names = tuple(f.name for f in spec.select(RAW))

    def expand(self, split_records):
        items = (
            split_records
            | "ItemCandidates" >> beam.Map(_item_candidate, self.item_names, self.raw_names)
            | "OnePerItem" >> beam.CombinePerKey(_SmallestItemFeatures())
            | "EncodeItems" >> beam.Map(_encode_item, self.spec, frozenset(self.item_names))
        )
        item_count = items | "CountItems" >> beam.combiners.Count.Globally()
        _ = item_count | "EmptyCatalogue" >> beam.Map(_write_empty_catalogue, self.output_dir)
        shards = beam.pvalue.AsSingleton(item_count | "ItemShards" >> beam.Map(num_shards))
        return (
            items
            | "ItemShardKeys" >> beam.Map(lambda item, n: (shard_of(item_key(item[0]), n), item), shards)
            | "GroupItemShards" >> beam.GroupByKey()
            | "WriteItemShards" >> beam.ParDo(_WriteItemShardFn(self.output_dir), shards)
        )
