"""A compact Beam coder for sample records, so the local runner buffers less per row.

Sample records are plain dicts keyed by feature name (raw, label and meta features, in FeatureSpec
order). Beam's default coder writes every key with every element: a typical sample encodes to ~220
bytes, of which ~120 are the keys. The local FnApiRunner keeps every collection that crosses a stage
boundary (shuffles, side-input waits, unfusable Flattens) in memory as encoded bytes, often twice while a
stage reads it, so the encoding size is the per-row memory cost of `build_samples` on one machine.

`SampleCoder` writes only the values, in the default schema's field order, behind a one-byte tag;
records with any other key layout (a team's extended FeatureSpec) fall back to the full dict encoding,
so nothing is lost. A PCollection uses it when its element type is declared as `SampleRecord` (or a
tuple containing it), e.g. ``beam.Map(fn).with_output_types(SampleRecord)``.
"""

from __future__ import annotations

from typing import Any

from tfsr.features import RECORD_ROLES, default_features

import apache_beam as beam
from apache_beam import typehints

DEFAULT_FIELDS = tuple(f.name for f in default_features() if f.role in RECORD_ROLES)

_VALUES, _DICT = 0, 1


class SampleRecord(dict):
    """A sample record: feature name -> value, in FeatureSpec order.

    The element type of every sample-record PCollection of ``build_samples``, and the records themselves:
    the job turns each source's parsed rows into `SampleRecord`s, transforms that change a record build a
    new one, and `SampleCoder` decodes into one, so Beam's pipeline type check sees what really flows
    (it does not accept a plain ``dict`` for this type, nor this type for a ``dict`` annotation).
    """


class SampleCoder(beam.coders.Coder):
    """Encodes sample dicts as their values in `DEFAULT_FIELDS` order; any other layout as a dict."""

    def __init__(self, fields: tuple[str, ...] = DEFAULT_FIELDS):
        self.fields = tuple(fields)
        self._values = beam.coders.FastPrimitivesCoder()

    def encode(self, record: dict) -> bytes:
        if tuple(record) == self.fields:
            return self._values.encode((_VALUES, tuple(record.values())))
        return self._values.encode((_DICT, record))

    def decode(self, encoded: bytes) -> SampleRecord:
        tag, payload = self._values.decode(encoded)
        return SampleRecord(zip(self.fields, payload, strict=True) if tag == _VALUES else payload)

    def is_deterministic(self) -> bool:
        return False  # never used as a grouping key

    def to_type_hint(self) -> Any:
        return SampleRecord

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash((type(self), self.fields))


beam.coders.registry.register_coder(SampleRecord, SampleCoder)

# (split name, record): what the split transforms emit
SplitRecord = typehints.Tuple[str, SampleRecord]

# (split name, record, text embeddings joined so far): what `WriteShuffledSplits` writes, one serialized
# float `tf.train.Feature` per joined text feature (b"" for an empty text), in the spec's order
EmbeddedRecord = typehints.Tuple[str, SampleRecord, typehints.Tuple[bytes, ...]]
