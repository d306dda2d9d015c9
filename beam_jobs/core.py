"""The shared Beam core of tfsr's jobs (``build_samples``, ``batch_score``): what both need, owned once.

* the local runner and the pipeline options both jobs start from (:func:`pipeline_options`);
* row steps whose failures become dead letters, never job failures (:class:`RowStep`);
* the ledger: counting rows per key so every job reconciles rows read = used + dead + filtered
  (:func:`count`), and which dead-letter reasons mean input was lost (:func:`lost_inputs`);
* writing the dead letters (:class:`WriteDeadLetters`).

Reading input files row by row (numbered lines, checked decompression) is :mod:`beam_jobs.reading`.
Neither job imports the other: both import these.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from beam_jobs.reading import DEAD, RAW_SNIPPET_CHARS, dead_letter
from tfsr.contract import RowError
from tfsr.layout import DEAD_LETTERS_DIR

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "tfsr_beam"
# The DirectRunner's local engine, named explicitly: Beam's DirectRunner first tries to download and start
# the Prism runner binary, which must not happen on offline or locked-down machines.
LOCAL_RUNNER = "FnApiRunner"
ROW_EXCEPTION = "row_exception"


def pipeline_options(pipeline_args: list[str], save_main_session: bool) -> PipelineOptions:
    """Beam options from the command line's remaining arguments; the runner defaults to :data:`LOCAL_RUNNER`."""
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = LOCAL_RUNNER
    return options


ROW_EXCEPTION = "row_exception"


class RowStep(beam.DoFn):
    """Applies a row-level function to (LineRef, value); a RowError becomes a dead letter with its reason.

    Any other exception of the function is a bug for that row, not for the job: it becomes a dead letter
    with reason ``row_exception`` (type and message in its detail, logged), so no line can crash the job.
    """

    def __init__(self, fn: Callable[..., Any], name: str, namespace: str = METRICS_NAMESPACE):
        self.fn = fn
        self.name = name
        self.dead = Metrics.counter(namespace, f"dead_letters_{name}")

    def process(self, element, *args, **kwargs):
        ref, value = element
        try:
            result = self.fn(value, *args, **kwargs)
        except RowError as err:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, err.reason, err.detail))
        except Exception as err:  # noqa: BLE001  (one row's unexpected error must not fail the job)
            self.dead.inc()
            detail = f"{type(err).__name__}: {str(err)[:RAW_SNIPPET_CHARS]}"
            logger.warning("%s: %s line %d: unexpected %s", self.name, ref.path, ref.line, detail)
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(ref, ROW_EXCEPTION, detail))
        else:
            yield ref, result


def row_step(
    fn: Callable[..., Any], name: str, *args, namespace: str = METRICS_NAMESPACE, **kwargs
) -> beam.ParDo:
    """`RowStep` as a ParDo with a DEAD output (dead letters) beside the main "rows" output."""
    return beam.ParDo(RowStep(fn, name, namespace), *args, **kwargs).with_outputs(DEAD, main="rows")


def count(pcolls, label: str, key_fn: Callable[[Any], tuple[str, ...]]):
    """(ledger key, count) pairs of one or more PCollections.

    Counting happens before the ledger's Flatten so the combine is lifted into the producing stage: only
    per-key partial sums cross stage boundaries, never one element per row (the local runner buffers
    whatever crosses a boundary in memory).
    """
    pcolls = pcolls if isinstance(pcolls, list) else [pcolls]
    counts = [
        pc | f"{label}_Key{i}" >> beam.Map(key_fn) | f"{label}_{i}" >> beam.combiners.Count.PerElement()
        for i, pc in enumerate(pcolls)
    ]
    return counts | label >> beam.Flatten()


class WriteDeadLetters(beam.PTransform):
    """Dead-letter dicts -> ``<output_dir>/dead_letters/dead_letters*.jsonl`` (one JSON object a line)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, dead):
        return (
            dead
            | "DeadLetterJson" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False))
            | "WriteDeadLetters"
            >> beam.io.WriteToText(
                f"{self.output_dir}/{DEAD_LETTERS_DIR}/dead_letters", file_name_suffix=".jsonl", num_shards=1
            )
        )


def lost_inputs(dead_lettered: Mapping[str, int], reasons: Iterable[str]) -> dict[str, int]:
    """The dead-letter counts whose reason means rows were lost before they could be counted (the job fails)."""
    reasons = frozenset(reasons)
    return {reason: n for reason, n in dead_lettered.items() if reason in reasons}
