"""The splits of ``build_samples`` as Beam transforms: pretraining (per-user or global time), cold start,
and the item cold-start markers.

The rules are the split policy of every source, :mod:`tfsr.datasets.splits`; this module applies them to
PCollections without collecting the samples (per-user groups, timestamp counts and small side inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from beam_jobs.reading import FILTERED
from beam_jobs.sample_coder import SampleRecord, SplitRecord
from tfsr import layout
from tfsr.datasets.splits import (
    cold_bounds,
    is_cold_item,
    sample_key,
    time_quantile,
    user_eval_cutoff,
    warm_split_of,
)

import apache_beam as beam
from apache_beam import typehints

HELD_OUT_SPLITS = (layout.PRETRAIN_VALID, layout.PRETRAIN_EVAL, layout.COLDSTART_VALID, layout.COLDSTART_EVAL)


COLDSTART_HELD_OUT = (layout.COLDSTART_VALID, layout.COLDSTART_EVAL)


COLDSTART_FILTER_REASON = "coldstart_before_finetune_window"


def _per_user_split(
    element: tuple[str, Iterable[SampleRecord]], eval_fraction: float, valid_fraction: float
) -> Iterator[tuple[str, SampleRecord]]:
    _, records = element
    records = list(records)
    timestamps = [r["timestamp"] for r in records]
    eval_cutoff = user_eval_cutoff(timestamps, eval_fraction)
    valid_cutoff = user_eval_cutoff(timestamps, eval_fraction + valid_fraction)
    for record in records:
        yield warm_split_of(record["timestamp"], eval_cutoff, valid_cutoff), record


class _CountTimestamps(beam.PTransform):
    """Records -> one list of (timestamp, row count) pairs: the input of the exact `_quantile`."""

    def expand(self, records):
        return (
            records
            | "Timestamps" >> beam.Map(lambda r: (r["timestamp"], 1))
            | "CountPerTimestamp" >> beam.CombinePerKey(sum)
            | "AllTimestampCounts" >> beam.combiners.ToList()
        )


def _cutoff_stats(cutoffs: dict, group: str) -> Iterator[tuple[tuple[str, ...], int]]:
    """Ledger rows ("cutoff", group, name) -> timestamp, for the manifest (boundary keys are dropped)."""
    for name, value in cutoffs.items():
        if value is not None:
            yield ("cutoff", group, name), value[0] if isinstance(value, tuple) else value


def _check_fraction(name: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:
        raise ValueError(f"{name} must be in [{low}, {high}), got {value}")


class SplitWarm(beam.PTransform):
    """Pretraining splits by time: train, then validation (the end of the training period), then eval.

    per_user (default): each user's latest `eval_fraction` of rows is pretrain_eval and the
    `valid_fraction` just before it pretrain_valid. global: one exact time quantile cutoff for eval
    (1 - eval_fraction) and one for validation (1 - eval_fraction - valid_fraction). Rows sharing a
    boundary timestamp stay in the earlier split. The result is the same for the same rows in any
    order. Returns {"rows": (split, record), "cutoffs": ledger rows of the global cutoffs}.
    """

    def __init__(self, mode: str, eval_fraction: float, valid_fraction: float = 0.0):
        super().__init__()
        _check_fraction("eval_fraction", eval_fraction, 0.0, 1.0)
        _check_fraction("valid_fraction", valid_fraction, 0.0, 1.0 - eval_fraction)
        self.mode = mode
        self.eval_fraction = eval_fraction
        self.valid_fraction = valid_fraction

    def expand(self, records):
        if self.mode == "per_user":
            rows = (
                records
                | "KeyByUser"
                >> beam.Map(lambda r: (r["user_id"], r)).with_output_types(typehints.Tuple[str, SampleRecord])
                | "GroupByUser" >> beam.GroupByKey()
                | "SplitEachUserByTime"
                >> beam.FlatMap(_per_user_split, self.eval_fraction, self.valid_fraction).with_output_types(
                    SplitRecord
                )
            )
            return {"rows": rows, "cutoffs": records.pipeline | "NoGlobalCutoffs" >> beam.Create([])}
        eval_at, valid_at = 1.0 - self.eval_fraction, 1.0 - self.eval_fraction - self.valid_fraction
        cutoffs = (
            records
            | "WarmTimestampCounts" >> _CountTimestamps()
            | "GlobalCutoffs"
            >> beam.Map(
                lambda c: {
                    "eval_cutoff": time_quantile(c, eval_at),
                    "valid_cutoff": time_quantile(c, valid_at),
                }
            )
        )
        rows = records | "SplitByGlobalTime" >> beam.Map(
            lambda r, c: (warm_split_of(r["timestamp"], c["eval_cutoff"], c["valid_cutoff"]), r),
            beam.pvalue.AsSingleton(cutoffs),
        ).with_output_types(SplitRecord)
        return {
            "rows": rows,
            "cutoffs": cutoffs | "WarmCutoffStats" >> beam.FlatMap(_cutoff_stats, "pretrain"),
        }


def _cold_split(
    record: SampleRecord, seed: int, cutoff: dict, bounds: dict
) -> Iterator[tuple[str, SampleRecord] | beam.pvalue.TaggedOutput]:
    timestamp = record["timestamp"]
    order = (timestamp, sample_key(record, seed))
    eval_cutoff, valid_start, finetune_start = (
        cutoff["eval_cutoff"],
        bounds["valid_start"],
        bounds["finetune_start"],
    )
    if eval_cutoff is not None and timestamp > eval_cutoff:
        yield layout.COLDSTART_EVAL, record
    elif valid_start is not None and order >= valid_start:
        yield layout.COLDSTART_VALID, record
    elif finetune_start is not None and order >= finetune_start:
        yield layout.COLDSTART_FINETUNE, record
    else:
        yield beam.pvalue.TaggedOutput(FILTERED, COLDSTART_FILTER_REASON)


class SplitCold(beam.PTransform):
    """Cold-start domains: the latest `eval_fraction` by time (exact quantile) is coldstart_eval; the
    `valid_rows` rows just before it coldstart_valid, the `finetune_rows` rows before those
    coldstart_finetune (a new domain has little data); older rows are filtered, counted.

    Rows are ordered by (timestamp, `sample_key`), so ties at a slice boundary are broken by content,
    never by input order. Returns {"rows", FILTERED, "cutoffs"}.
    """

    def __init__(self, eval_fraction: float, finetune_rows: int, valid_rows: int = 0, seed: int = 0):
        super().__init__()
        _check_fraction("eval_fraction", eval_fraction, 0.0, 1.0)
        if finetune_rows < 1 or valid_rows < 0:
            raise ValueError(
                f"need finetune_rows >= 1 and valid_rows >= 0, got {finetune_rows}, {valid_rows}"
            )
        self.eval_fraction = eval_fraction
        self.finetune_rows = finetune_rows
        self.valid_rows = valid_rows
        self.seed = seed

    def expand(self, records):
        eval_cutoff = (
            records
            | "ColdTimestampCounts" >> _CountTimestamps()
            | "ColdEvalCutoff"
            >> beam.Map(lambda c, f: {"eval_cutoff": time_quantile(c, f)}, 1.0 - self.eval_fraction)
        )
        # keys first, then the filter: a side-input Filter straight on `records` would be fused with
        # SplitColdByTime, whose side input it feeds, and the FnApiRunner never runs the stage
        bounds = (
            records
            | "OrderKeys" >> beam.Map(lambda r, s: (r["timestamp"], sample_key(r, s)), self.seed)
            | "BeforeCutoff"
            >> beam.Filter(
                lambda order, c: c["eval_cutoff"] is not None and order[0] <= c["eval_cutoff"],
                beam.pvalue.AsSingleton(eval_cutoff),
            )
            | "LatestBeforeCutoff" >> beam.combiners.Top.Largest(self.valid_rows + self.finetune_rows)
            | "ValidAndFinetuneStart" >> beam.Map(cold_bounds, self.valid_rows, self.finetune_rows)
        )
        split = records | "SplitColdByTime" >> beam.FlatMap(
            _cold_split, self.seed, beam.pvalue.AsSingleton(eval_cutoff), beam.pvalue.AsSingleton(bounds)
        ).with_output_types(SplitRecord).with_outputs(FILTERED, main="rows")
        cutoffs = (eval_cutoff, bounds) | "ColdCutoffs" >> beam.Flatten()
        return {
            "rows": split.rows,
            FILTERED: split[FILTERED],
            "cutoffs": cutoffs | "ColdCutoffStats" >> beam.FlatMap(_cutoff_stats, "coldstart"),
        }


def _mark_cold_items(element, max_train_count: int) -> Iterator[tuple[str, SampleRecord]]:
    _, grouped = element
    pretrain = sum(grouped["pretrain"])
    finetune = sum(grouped["finetune"])
    for split, record in grouped["held_out"]:
        seen = pretrain + (finetune if split in COLDSTART_HELD_OUT else 0)
        yield split, SampleRecord(record, is_cold_item=is_cold_item(seen, max_train_count))


class MarkColdItems(beam.PTransform):
    """Sets is_cold_item on validation and evaluation rows whose item has few training samples (a
    per-item join).

    Training samples seen by the model: pretrain_train for pretrain_valid / pretrain_eval;
    pretrain_train plus coldstart_finetune for coldstart_valid / coldstart_eval.
    """

    def __init__(self, max_train_count: int):
        super().__init__()
        self.max_train_count = max_train_count

    def expand(self, split_records):
        def item_counts(split: str, label: str):
            return (
                split_records
                | f"Items_{label}"
                >> beam.FlatMap(lambda sr: [(sr[1]["item_id"], 1)] if sr[0] == split else [])
                | f"Count_{label}" >> beam.CombinePerKey(sum)
            )

        held_out = split_records | "HeldOutRowsByItem" >> beam.FlatMap(
            lambda sr: [(sr[1]["item_id"], sr)] if sr[0] in HELD_OUT_SPLITS else []
        ).with_output_types(typehints.Tuple[str, SplitRecord])
        train_rows = split_records | "TrainRows" >> beam.Filter(lambda sr: sr[0] not in HELD_OUT_SPLITS)
        marked = (
            {
                "held_out": held_out,
                "pretrain": item_counts(layout.PRETRAIN_TRAIN, "pretrain"),
                "finetune": item_counts(layout.COLDSTART_FINETUNE, "finetune"),
            }
            | "JoinTrainCounts" >> beam.CoGroupByKey()
            | "SetIsColdItem"
            >> beam.FlatMap(_mark_cold_items, self.max_train_count).with_output_types(SplitRecord)
        )
        return (train_rows, marked) | "AllSplitRows" >> beam.Flatten()
