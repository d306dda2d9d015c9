"""build_samples: raw search / recommendation logs -> multi-domain TFRecord samples (Apache Beam).

Inputs: the MovieLens ml-latest-small layout (``--movielens_dir``) or generic-format logs
(``--logs GLOB``, :mod:`tfsr.datasets.logs`; the synthetic generator writes that format). Output: the
samples directory of :mod:`tfsr.layout`. Steps, each a labelled transform:

  read (numbered lines) -> parse -> join item metadata -> assign domains / construct search
  impressions -> validate (FeatureSpec) -> splits by time (per-user or global exact quantiles: train /
  valid / eval; cold-start fine-tune / valid / eval) -> item-cold-start markers -> vocabularies ->
  text features (unique texts -> RunInference -> text_embeddings/; with ``--text_features vector``
  joined back into the samples by key) -> gzip TFRecords shuffled across many shards by a seeded key +
  the item catalogue (``items/``: every distinct item of the written samples once, its raw item
  features only) + manifest.json (with the split cutoffs, the text-feature mode and the item count) +
  feature_spec.json

``--text_features key`` (the default) writes samples that carry their texts only (raw, label and meta
features); readers look the vectors up in ``text_embeddings/``. ``vector`` also writes each sample's
derived text embeddings (zeros for an empty text), joined by a shuffle keyed by the text
(:class:`beam_jobs.text_features.JoinTextEmbedding`). The item catalogue is the same in both modes: raw
item features, no embeddings (:class:`beam_jobs.catalogue.WriteItemCatalogue`).

Every unusable input row becomes a dead letter (``dead_letters/*.jsonl``) with its reason and is
counted (Beam metrics and the manifest's reconciliation: rows read = used + dead-lettered + filtered).
Nothing collects the samples, the distinct texts or the items into one element or side input: samples
and texts meet in per-user groups, per-item joins and combines, per-text joins and per-shard groups. The
side inputs are tables that stay small whatever the number of rows, items or distinct texts:

* the shard count of each split (``WriteSplits``) and of the item catalogue (``ItemCatalogue``), the
  split cutoffs (the global time cutoffs, the cold-start eval cutoff and slice starts) and the ledger
  (``StatsTable``): a few numbers each;
* the (timestamp, row count) list behind each exact time quantile (cold-start domains; the warm domains
  with ``--split_mode global``): one pair per distinct timestamp, bounded by the seconds the logs span;
* MovieLens input only: the movies table, and the tag search index with its inputs (the tags, each
  movie's sorted rating times). They grow with the MovieLens files (~10k movies, ~100k timestamps for
  ml-latest-small), a fixed reference data set; generic logs, the input that scales, have none of them;
* inside Beam's file sinks (dead letters, ``text_embeddings/``): the names of the files written.

The text tables (one vector per distinct text) are never a side input:
``tests/test_build_samples.py::test_no_side_input_is_built_from_the_text_tables`` checks the graph.

The pipeline is this module (with its command line); each step is a module of its own:
:mod:`beam_jobs.sources` (reading and parsing the inputs), :mod:`beam_jobs.splits`,
:mod:`beam_jobs.vocabularies`, :mod:`beam_jobs.text_features`, :mod:`beam_jobs.writing` (shards),
:mod:`beam_jobs.catalogue` (the item catalogue) and :mod:`beam_jobs.manifest`, over the shared Beam
core (:mod:`beam_jobs.core`, :mod:`beam_jobs.reading`) that ``batch_score`` uses too.

Local run::

  tfsr preprocess --movielens_dir ../shared/data/ml-latest-small --output_dir artifacts/samples

Dataflow (see docs/BEAM.md)::

  tfsr preprocess --logs 'gs://bucket/logs/*.jsonl.gz' --output_dir gs://bucket/samples \\
      --text_encoder_dir gs://bucket/text_encoder --runner DataflowRunner --project P --region R \\
      --temp_location gs://bucket/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from typing import Any

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from beam_jobs import manifest as manifest_lib
from beam_jobs import sources, splits
from beam_jobs.catalogue import WriteItemCatalogue
from beam_jobs.core import WriteDeadLetters, count, lost_inputs, pipeline_options
from beam_jobs.reading import FILTERED, TRUNCATED_INPUT
from beam_jobs.sample_coder import SampleRecord
from beam_jobs.text_features import EmbedTexts
from beam_jobs.text_inference import saved_model_dim
from beam_jobs.vocabularies import WriteVocabularies
from beam_jobs.writing import WriteShuffledSplits
from tfsr import layout
from tfsr.cli import UsageError
from tfsr.datasets import logs as logfmt
from tfsr.datasets import movielens as ml
from tfsr.datasets import search_impressions as si
from tfsr.features import DomainRegistry, FeatureSpec

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

# dead-letter reasons that mean rows were lost before they could be counted: the job fails (run() -> 1)
INPUT_ERROR_REASONS = frozenset({TRUNCATED_INPUT})


# ------------------------------------------------------------------------------------ the pipeline
def _sample_records(row: tuple[Any, list[dict]]) -> list[SampleRecord]:
    """A used source row (its line, the records it made) -> its records as the job's `SampleRecord`s."""
    return [SampleRecord(record) for record in row[1]]


def build_pipeline(
    p: beam.Pipeline,
    args: argparse.Namespace,
    spec: FeatureSpec,
    encoder_dir: str,
    identity: dict,
    command: str,
) -> None:
    """Adds the whole build_samples graph to `p` (separate from run() so tests can drive it)."""
    out = args.output_dir.rstrip("/")
    if args.movielens_dir:
        branches = sources.read_movielens(
            p, args.movielens_dir.rstrip("/"), spec, args.num_negatives, args.seed, args.search_impressions
        )
    else:
        branches = sources.read_logs(p, args.logs, spec)

    ledger, dead_letters, samples = [], [], []
    for b in branches:
        if b.source != "movies":  # movies are reference data: used as item metadata, not samples
            samples.append(
                b.used
                | f"Samples_{b.source}" >> beam.FlatMap(_sample_records).with_output_types(SampleRecord)
            )
        dead = b.dead | f"Dead_{b.source}" >> beam.Flatten()
        dead_letters.append(dead)
        ledger += [
            count(dead, f"CountDead_{b.source}", lambda d: ("dead_lettered", d["source"], d["reason"])),
            count(b.filtered, f"CountFiltered_{b.source}", lambda f: ("filtered", f[0].source, f[1])),
            count(b.used, f"CountUsed_{b.source}", lambda row, s=b.source: ("used", s)),
        ]
        ledger.append(count(b.read, f"CountRead_{b.source}", lambda _, s=b.source: ("read", s)))

    records = samples | "AllSamples" >> beam.Flatten()
    ledger.append(count(records, "CountSamplesBuilt", lambda _: ("samples_built",)))
    cold_names = {d.name for d in spec.domains.cold()}
    # two Filters rather than a Partition: Partition's outputs lose the SampleRecord type (and its coder)
    warm = records | "WarmDomains" >> beam.Filter(lambda r: r["domain"] not in cold_names)
    cold = records | "ColdStartDomains" >> beam.Filter(lambda r: r["domain"] in cold_names)
    warm_split = warm | "PretrainSplits" >> splits.SplitWarm(
        args.split_mode, args.eval_fraction, args.valid_fraction
    )
    cold_split = cold | "ColdStartSplits" >> splits.SplitCold(
        args.coldstart_eval_fraction,
        args.coldstart_finetune_rows,
        args.coldstart_valid_rows,
        args.shuffle_seed,
    )
    ledger += [
        count(cold_split[FILTERED], "CountSamplesFiltered", lambda reason: ("samples_filtered", reason)),
        warm_split["cutoffs"],
        cold_split["cutoffs"],
    ]
    split_records = (
        (warm_split["rows"], cold_split["rows"])
        | "AllSplits" >> beam.Flatten()
        | "ItemColdStart" >> splits.MarkColdItems(args.cold_item_max_train)
    )

    vocab_sizes = (
        split_records
        | "PretrainTrainRows" >> beam.FlatMap(lambda sr: [sr[1]] if sr[0] == layout.PRETRAIN_TRAIN else [])
        | "Vocabularies" >> WriteVocabularies(out, args.min_frequency, [f.name for f in spec.vocab_features])
    )
    tables = records | "TextFeatures" >> EmbedTexts(encoder_dir, out, spec.text_dim, spec.text_embeddings)
    for feature, table in tables.items():
        ledger.append(count(table, f"CountTexts_{feature}", lambda _, f=feature: ("unique_texts", f)))
    # key mode: the samples carry their texts only; vector mode: the tables are joined in by text
    vectors = tables if args.text_features == layout.TEXT_VECTORS else None
    # the shard files join the ledger, so the manifest (and any empty-split file) comes after them
    ledger.append(split_records | "WriteSplits" >> WriteShuffledSplits(spec, out, args.shuffle_seed, vectors))
    # every item of the written samples once, raw item features only (both text-feature modes)
    ledger.append(split_records | "ItemCatalogue" >> WriteItemCatalogue(spec, out))
    _ = dead_letters | "AllDeadLetters" >> beam.Flatten() | "DeadLetters" >> WriteDeadLetters(out)
    sample_stats = (
        split_records
        | "SampleStats" >> beam.Map(manifest_lib.sample_stats)
        | "SumSampleStats" >> beam.CombinePerKey(manifest_lib.sum_columns)
        | "SampleStatRows" >> beam.FlatMap(manifest_lib.flatten_sample_stats)
    )
    options = {k: v for k, v in vars(args).items() if k not in ("output_dir",)}
    stats = (
        (*ledger, sample_stats, vocab_sizes)
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(sum)
        | "StatsTable" >> beam.combiners.ToDict()
    )
    _ = stats | "WriteEmptySplits" >> beam.Map(manifest_lib.write_empty_splits, out)
    _ = stats | "WriteManifest" >> beam.Map(
        manifest_lib.write_manifest, out, spec, identity, command, options
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfsr preprocess", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--movielens_dir",
        help="an ml-latest-small directory (movies.csv, ratings.csv, tags.csv); with neither this nor --logs, "
        "MovieLens from $TFSR_DATA_HOME / the cache, else the checked download (tfsr.datasets.locate)",
    )
    source.add_argument("--logs", help="glob of generic-format logs (*.jsonl / *.csv, optionally .gz)")
    parser.add_argument("--output_dir", required=True, help="the samples directory to write (tfsr.layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing samples directory")
    encoder = parser.add_mutually_exclusive_group()
    encoder.add_argument(
        "--text_encoder",
        choices=("minilm", "tiny"),
        default="minilm",
        help="build the frozen text encoder here (local runs)",
    )
    encoder.add_argument(
        "--text_encoder_dir",
        help="an exported encoder SavedModel (tfsr.text.export_text_encoder); "
        "needed on Dataflow, where workers must read it",
    )
    parser.add_argument(
        "--text_features",
        choices=layout.TEXT_FEATURE_MODES,
        default=layout.TEXT_KEYS,
        help="what samples hold of their texts: the text only, its vector looked up in text_embeddings/ "
        "when read (key, the default; smaller samples), or also the embedding vectors (vector)",
    )
    parser.add_argument("--domains", help="JSON file of the domain registry (default: the MovieLens domains)")
    parser.add_argument(
        "--split_mode",
        choices=("per_user", "global"),
        default="per_user",
        help="pretraining split: each user's latest rows (default) or one global time cutoff",
    )
    parser.add_argument(
        "--eval_fraction",
        type=float,
        default=0.2,
        help="latest share of rows in pretrain_eval: of each user's rows (per_user) or of all rows by time "
        "(global)",
    )
    parser.add_argument(
        "--coldstart_eval_fraction",
        type=float,
        default=0.3,
        help="latest share (by time) of each cold-start domain in coldstart_eval",
    )
    parser.add_argument(
        "--coldstart_finetune_rows",
        type=int,
        default=1000,
        help="size of the fine-tune slice just before the cold-start validation slice",
    )
    parser.add_argument(
        "--valid_fraction",
        type=float,
        default=0.1,
        help="share of rows (per user, or of time with --split_mode global) just before pretrain_eval "
        "in pretrain_valid (eval_fraction + valid_fraction < 1)",
    )
    parser.add_argument(
        "--coldstart_valid_rows",
        type=int,
        default=200,
        help="size of coldstart_valid: the latest cold-start rows before the cold-start eval cutoff",
    )
    parser.add_argument(
        "--shuffle_seed",
        type=int,
        default=0,
        help="seed of the sample keys that spread each split's rows over shards in random order",
    )
    parser.add_argument(
        "--cold_item_max_train",
        type=int,
        default=2,
        help="eval rows whose item has at most this many training samples get is_cold_item=1",
    )
    parser.add_argument(
        "--num_negatives", type=int, default=4, help="constructed negatives per MovieLens tag"
    )
    parser.add_argument(
        "--search_impressions",
        choices=si.SEARCH_CONSTRUCTIONS,
        default=si.SEARCH_CONSTRUCTIONS[0],
        help="MovieLens search negatives: what a search engine showed at the tag's time (engine) or "
        "other movies tagged like the click (same_tag, the hardest); see docs/DATA.md",
    )
    parser.add_argument("--min_frequency", type=int, default=1, help="vocabulary frequency threshold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the constructed negatives")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not args.logs and not args.movielens_dir:
        from tfsr.datasets.locate import find_movielens

        args.movielens_dir = str(find_movielens(None))
    if not 0.0 < args.eval_fraction < 1.0 or not 0.0 < args.coldstart_eval_fraction < 1.0:
        raise UsageError("--eval_fraction and --coldstart_eval_fraction must be in (0, 1)")
    for name in ("coldstart_finetune_rows", "min_frequency"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.logs:
        paths = [m.path for r in FileSystems.match([args.logs]) for m in r.metadata_list]
        if not paths:
            raise UsageError(f"--logs {args.logs!r} matches no file")
        for path in paths:
            try:
                logfmt.log_format(path)
            except ValueError as err:
                raise UsageError(str(err)) from None
    out = args.output_dir.rstrip("/")
    # Stale shards of an earlier (possibly failed) run would be globbed with the new ones. Only a
    # directory that looks like samples is ever deleted.
    if any(FileSystems.exists(f"{out}/{name}") for name in (layout.MANIFEST, *layout.SPLITS)):
        if not args.overwrite:
            raise UsageError(f"{args.output_dir} already holds samples; pass --overwrite to replace them")
        FileSystems.delete([out])


def _prepare_encoder(args: argparse.Namespace, workdir: str) -> tuple[str, dict]:
    """(SavedModel dir, identity) of the text encoder the pipeline will run."""
    from tfsr import text

    if args.text_encoder_dir:
        try:
            identity = text.read_identity(args.text_encoder_dir)
        except FileNotFoundError:
            identity = {"saved_model": args.text_encoder_dir}
        return args.text_encoder_dir, identity
    encoder = text.load_text_encoder() if args.text_encoder == "minilm" else text.tiny_text_encoder()
    return text.export_text_encoder(encoder, f"{workdir}/text_encoder"), encoder.identity


def run(argv: list[str] | None = None, save_main_session: bool = True) -> int:
    """Runs build_samples; returns 0 when the manifest's reconciliation balances, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, pipeline_args = _parser().parse_known_args(argv)
    _check_args(args)
    options = pipeline_options(pipeline_args, save_main_session)
    domains = ml.MOVIELENS_DOMAINS
    if args.domains:
        with FileSystems.open(args.domains) as handle:
            domains = DomainRegistry.from_json(json.load(handle))
    workdir = tempfile.mkdtemp(prefix="tfsr_preprocess_")
    # Written next to the output and moved into place only when the job succeeds: a crash or a failed
    # reconciliation never leaves a half-written samples directory where readers look for one.
    staging = f"{args.output_dir.rstrip('/')}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        encoder_dir, identity = _prepare_encoder(args, workdir)
        spec = FeatureSpec.default(domains, text_dim=saved_model_dim(encoder_dir))
        command = "tfsr preprocess " + shlex.join(argv)
        logger.info(
            "building samples into %s via %s (text encoder %s, dim %d)",
            args.output_dir,
            staging,
            identity.get("name", encoder_dir),
            spec.text_dim,
        )
        with beam.Pipeline(options=options) as p:
            build_pipeline(
                p,
                argparse.Namespace(**{**vars(args), "output_dir": staging}),
                spec,
                encoder_dir,
                identity,
                command,
            )
    except BaseException:
        if FileSystems.exists(staging):
            FileSystems.delete([staging])
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    layout.remove_temp_dirs(staging)  # the empty temp folders Beam's file sinks can leave behind
    manifest = layout.read_manifest(staging)
    _log_summary(manifest)
    failure = _failure(manifest)
    if failure:
        logger.error(
            "%s: %s is NOT written; the incomplete output is kept at %s", failure, args.output_dir, staging
        )
        return 1
    _move_into_place(staging, args.output_dir.rstrip("/"))
    return 0


def _failure(manifest: dict) -> str | None:
    """Why a finished job failed (its ledger does not balance, or input was lost), or None."""
    rec = manifest["reconciliation"]
    if not rec["balanced"]:
        return "the reconciliation does not balance"
    lost = {
        reason: n
        for ledger in rec["rows"].values()
        for reason, n in lost_inputs(ledger["dead_lettered"], INPUT_ERROR_REASONS).items()
    }
    return f"input files could not be read to their end {lost} (see the dead letters)" if lost else None


def _move_into_place(staging: str, out: str) -> None:
    """Moves the finished output from `staging` to `out` (renames; into `out` when it is a directory)."""
    if FileSystems.get_scheme(out) in (None, "file"):  # local: rename the directory
        if not os.path.isdir(out):
            os.rename(staging, out)
            return
        for name in os.listdir(staging):  # _check_args has refused (or deleted) earlier samples
            os.rename(os.path.join(staging, name), os.path.join(out, name))
        os.rmdir(staging)
        return
    sources = [m.path for r in FileSystems.match([f"{staging}/**"]) for m in r.metadata_list]
    FileSystems.rename(sources, [out + path[len(staging) :] for path in sources])
    FileSystems.delete([staging])


def _log_summary(manifest: dict) -> None:
    for split, per_domain in manifest["counts"].items():
        total = sum(e["samples"] for e in per_domain.values())
        logger.info("%-20s %8d samples in %d domains", split, total, len(per_domain))
    rec = manifest["reconciliation"]
    for source, ledger in rec["rows"].items():
        logger.info(
            "%-8s read %d = used %d + dead-lettered %d + filtered %d %s",
            source,
            ledger["read"],
            ledger["used"],
            sum(ledger["dead_lettered"].values()),
            sum(ledger["filtered"].values()),
            "(balanced)" if ledger["balanced"] else "(DOES NOT BALANCE)",
        )
    if not rec["balanced"]:
        logger.error("reconciliation does not balance: %s", json.dumps(rec))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(run())
