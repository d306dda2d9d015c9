"""Vocabularies of ``build_samples``: ``vocab/<feature>.txt`` of the id and sparse features.

Which features have a vocabulary is the feature spec's to say (:attr:`tfsr.features.FeatureSpec.vocab_features`);
:data:`VOCAB_FEATURES` are those of tfsr's default features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from beam_jobs.sample_coder import SampleRecord
from tfsr import layout
from tfsr.features import default_features, vocab_features

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

VOCAB_FEATURES = tuple(f.name for f in vocab_features(default_features()))


def _vocab_values(record: SampleRecord, features: Sequence[str]) -> Iterator[tuple[str, str]]:
    for feature in features:
        value = record[feature]
        for item in value if isinstance(value, list) else [value]:
            if item:
                yield feature, item


class _WriteVocabFn(beam.DoFn):
    """Writes vocab/<feature>.txt, most frequent first (ties by value); emits the size for the manifest."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element):
        feature, entries = element
        ordered = sorted((e for e in entries if e is not None), key=lambda e: (-e[0], e[1]))
        path = str(layout.vocab_path(self.output_dir, feature))
        with FileSystems.create(path) as handle:
            handle.write("".join(f"{value}\n" for _, value in ordered).encode("utf-8"))
        logger.info("vocabulary %s: %d values", feature, len(ordered))
        yield ("vocab_size", feature), len(ordered)


class WriteVocabularies(beam.PTransform):
    """Vocabularies of the id and sparse features over pretrain_train samples, frequency-thresholded."""

    def __init__(self, output_dir: str, min_frequency: int, features: Sequence[str] = VOCAB_FEATURES):
        super().__init__()
        self.output_dir = output_dir
        self.min_frequency = min_frequency
        self.features = tuple(features)

    def expand(self, train_records):
        every_feature = train_records.pipeline | "VocabFeatures" >> beam.Create(
            [(f, None) for f in self.features]
        )
        counted = (
            train_records
            | "VocabValues" >> beam.FlatMap(_vocab_values, self.features)
            | "CountValues" >> beam.combiners.Count.PerElement()
            | "MinFrequency" >> beam.Filter(lambda fc, m: fc[1] >= m, self.min_frequency)
            | "ByFeature" >> beam.Map(lambda fc: (fc[0][0], (fc[1], fc[0][1])))
        )
        return (
            (counted, every_feature)
            | "WithEveryFeature" >> beam.Flatten()
            | "GroupVocab" >> beam.GroupByKey()
            | "WriteVocabFiles" >> beam.ParDo(_WriteVocabFn(self.output_dir))
        )
