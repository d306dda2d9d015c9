"""SampleCoder: sample dicts round-trip exactly, in about half the bytes of Beam's default dict encoding;
other key layouts (a team's extended schema) fall back to the dict encoding and still round-trip."""

from beam_jobs.sample_coder import DEFAULT_FIELDS, SampleCoder, SampleRecord, SplitRecord
from tfsr.datasets import logs
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec

import apache_beam as beam
import pytest

LINE = (
    '{"domain":"rec_children","user_id":"u3914","item_id":"i8314","item_title":"Day Fairy Unicorn (1993)",'
    '"item_genres":["Fantasy","Children"],"item_decade":"1990s","label":1,"timestamp":1500000105}'
)


@pytest.fixture(scope="module")
def record():
    return logs.parse_log_line(LINE, "jsonl", FeatureSpec.default(MOVIELENS_DOMAINS))


def test_parsed_records_have_the_default_field_layout(record):
    assert tuple(record) == DEFAULT_FIELDS


def test_round_trip_in_half_the_bytes(record):
    coder = SampleCoder()
    encoded = coder.encode(record)
    decoded = coder.decode(encoded)
    assert decoded == record and tuple(decoded) == tuple(record)
    assert isinstance(decoded["item_genres"], list) and isinstance(decoded["timestamp"], int)
    assert len(encoded) < 0.55 * len(beam.coders.FastPrimitivesCoder().encode(record))


def test_other_layouts_fall_back_to_the_dict_encoding(record):
    coder = SampleCoder()
    extended = {**record, "team_feature": [1.5, 2.5]}
    reordered = dict(reversed(list(record.items())))
    for other in (extended, reordered, {}):
        assert coder.decode(coder.encode(other)) == other
    assert tuple(coder.decode(coder.encode(reordered))) == tuple(reordered)


def test_registry_picks_it_for_the_record_types():
    registry = beam.coders.registry
    assert registry.get_coder(SampleRecord) == SampleCoder()
    assert registry.get_coder(SplitRecord) == beam.coders.TupleCoder(
        [beam.coders.StrUtf8Coder(), SampleCoder()]
    )
