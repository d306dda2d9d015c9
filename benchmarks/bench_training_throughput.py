"""Training throughput: SRFoundation vs SharedBottom (and any other model type) in the same run.

Measures training examples/s at a given batch size on this machine's CPU (or GPU), the number of
parameters and each model's peak resident memory. Each model runs in its own child process, so its
peak memory is its own. Prints a markdown table and writes JSON.

  python benchmarks/bench_training_throughput.py --samples_dir artifacts/samples   # real TFRecords
  python benchmarks/bench_training_throughput.py                                   # synthetic records

With `--samples_dir`, the split is measured in each `--text_features` mode (issue 14): the same rows
written once carrying their texts only (``key``: embeddings looked up from ``text_embeddings/`` in the
input pipeline, :class:`tfsr.text.lookup.TextLookup`) and once carrying the vectors (``vector``), whatever
mode the directory was built in; the table adds bytes per sample on disk for each. Without `--samples_dir`
(or when it has no TFRecords for `--split`) it writes synthetic records of the default schema (384-wide
text vectors, like all-MiniLM-L6-v2; vector mode only) into a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfsr  # noqa: F401

TARGET_RATIO = 0.6


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples_dir", default=None, help="tfsr samples directory (output of `tfsr preprocess`)"
    )
    parser.add_argument("--split", default="pretrain_train")
    parser.add_argument("--models", nargs="+", default=["srfoundation", "shared_bottom"])
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--warmup_steps", type=int, default=5, help="steps before timing (tracing included)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--embedding_dim", type=int, default=32)
    parser.add_argument("--synthetic_rows", type=int, default=20_000)
    parser.add_argument(
        "--text_features",
        nargs="+",
        choices=("key", "vector"),
        default=["key", "vector"],
        help="sample modes to measure (with --samples_dir)",
    )
    parser.add_argument("--output", default="artifacts/bench_training_throughput.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="vector", help=argparse.SUPPRESS)
    return parser


def _inputs(args):
    """(spec, file pattern, vocabularies, source description)."""
    from tfsr import data, layout
    from tfsr.datasets.movielens import MOVIELENS_DOMAINS
    from tfsr.features import FeatureSpec

    if args.samples_dir:
        pattern = layout.split_pattern(args.samples_dir, args.split)
        if glob_exists(pattern):
            spec = layout.read_feature_spec(args.samples_dir)
            vocabularies = {}
            for f in spec.model_features:
                if f.aspect in ("id", "sparse"):
                    with contextlib.suppress(FileNotFoundError):  # no vocabulary: hashed
                        vocabularies[f.name] = layout.read_vocab(args.samples_dir, f.name)
            return spec, pattern, vocabularies, f"{args.samples_dir}/{args.split}"
        print(f"no TFRecords at {pattern}; using synthetic records", file=sys.stderr)
    spec = FeatureSpec.default(MOVIELENS_DOMAINS)
    directory = args.files or tempfile.mkdtemp(prefix="tfsr-bench-")
    pattern = os.path.join(directory, "part-*.tfrecord.gz")
    if not glob_exists(pattern):
        data.write_synthetic_samples(
            directory,
            spec,
            args.synthetic_rows,
            seed=0,
            num_shards=4,
            num_users=2000,
            num_items=3000,
            num_queries=300,
        )
    return spec, pattern, {}, f"synthetic ({args.synthetic_rows} rows, text_dim {spec.text_dim})"


def write_split_in_mode(samples_dir: str, split: str, mode: str, workdir: str) -> str:
    """Copies `split` of `samples_dir` into ``workdir/<mode>/`` as `tfsr preprocess --text_features mode` would
    write it (same rows, same shards): vectors looked up from the tables and added, or dropped."""
    from tfsr import layout
    from tfsr.features import RECORD_ROLES, ROLES
    from tfsr.text.lookup import samples_text_lookup

    import tensorflow as tf

    spec = layout.read_feature_spec(samples_dir)
    lookup = samples_text_lookup(samples_dir, spec)
    parse_spec = spec.parse_spec(roles=RECORD_ROLES if lookup is not None else ROLES)
    out = os.path.join(workdir, mode)
    os.makedirs(out)
    roles = RECORD_ROLES if mode == "key" else ROLES
    for path in sorted(glob.glob(layout.split_pattern(samples_dir, split))):
        with tf.io.TFRecordWriter(os.path.join(out, os.path.basename(path)), options="GZIP") as writer:
            for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").batch(1024):
                batch = tf.io.parse_example(serialized, parse_spec)
                batch = lookup(batch) if lookup is not None else batch
                values = {
                    k: v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy().tolist()
                    for k, v in batch.items()
                }
                for i in range(len(values["label"])):
                    record = {k: _decoded(v[i]) for k, v in values.items()}
                    writer.write(spec.to_example(record, roles=roles).SerializeToString())
    return out


def _decoded(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def split_bytes_per_sample(directory: str) -> float:
    import tensorflow as tf

    paths = glob.glob(os.path.join(directory, "part-*.tfrecord.gz"))
    rows = sum(1 for p in paths for _ in tf.data.TFRecordDataset(p, compression_type="GZIP"))
    return sum(os.path.getsize(p) for p in paths) / max(rows, 1)


def glob_exists(pattern: str) -> bool:
    return bool(glob.glob(pattern))


def _worker(args) -> dict:
    """Runs in a child process: trains one model type and reports its figures as JSON."""
    from tfsr import data
    from tfsr.models import ModelConfig, build_model
    from tfsr.text.lookup import TextLookup

    spec, pattern, vocabularies, _ = _inputs(args)
    if args.files and args.samples_dir:  # one mode's copy of the split
        pattern = os.path.join(args.files, "part-*.tfrecord.gz")
    lookup = TextLookup.from_samples(args.samples_dir, spec, missing="error") if args.mode == "key" else None
    dataset = data.make_dataset(
        pattern, spec, args.batch_size, repeat=True, drop_remainder=True, seed=0, text_lookup=lookup
    )
    iterator = iter(dataset)  # the input pipeline alone first: what the model step competes with
    for _ in range(args.warmup_steps):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(iterator)
    input_seconds = time.perf_counter() - start
    model = build_model(ModelConfig(args.worker, embedding_dim=args.embedding_dim), spec, vocabularies)
    model.compile()
    model.fit(iterator, steps_per_epoch=args.warmup_steps, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(iterator, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "model_type": args.worker,
        "text_features": args.mode,
        "examples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "input_examples_per_s": args.steps * args.batch_size / input_seconds,
        "params": int(model.count_params()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return {}
    _, pattern, _, source = _inputs(args)
    real = bool(args.samples_dir) and "synthetic" not in source
    # (mode, directory of its shards or None for the samples_dir split itself)
    modes = [(m, None) for m in args.text_features] if real else [("vector", os.path.dirname(pattern))]
    workdir = tempfile.mkdtemp(prefix="tfsr-bench-modes-")
    bytes_per_sample = {}
    if real:
        modes = [
            (m, write_split_in_mode(args.samples_dir, args.split, m, workdir)) for m in args.text_features
        ]
        bytes_per_sample = {m: split_bytes_per_sample(directory) for m, directory in modes}
        table_mib = sum(f.stat().st_size for f in pathlib.Path(args.samples_dir, "text_embeddings").glob("*"))
        bytes_per_sample["text_tables_mib"] = table_mib / 2**20
    results = []
    for mode, directory in modes:
        for model_type in args.models:
            command = [
                sys.executable,
                __file__,
                "--worker",
                model_type,
                "--mode",
                mode,
                "--batch_size",
                str(args.batch_size),
                "--warmup_steps",
                str(args.warmup_steps),
                "--steps",
                str(args.steps),
                "--embedding_dim",
                str(args.embedding_dim),
                "--split",
                args.split,
                "--synthetic_rows",
                str(args.synthetic_rows),
                "--files",
                directory,
            ]
            command += ["--samples_dir", args.samples_dir] if real else []
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    shutil.rmtree(workdir, ignore_errors=True)
    by_type = {r["model_type"]: r for r in results if r["text_features"] == modes[-1][0]}
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "data": source,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "embedding_dim": args.embedding_dim,
        "results": results,
        "bytes_per_sample": bytes_per_sample,
    }
    by_mode = {(r["text_features"], r["model_type"]): r["examples_per_s"] for r in results}
    speedups = {
        model: by_mode[("key", model)] / by_mode[("vector", model)]
        for model in args.models
        if ("key", model) in by_mode and ("vector", model) in by_mode
    }
    if speedups:
        report["key_vs_vector_examples_per_s"] = speedups
    if "srfoundation" in by_type and "shared_bottom" in by_type:
        ratio = by_type["srfoundation"]["examples_per_s"] / by_type["shared_bottom"]["examples_per_s"]
        report["srfoundation_vs_shared_bottom"] = ratio
        report["target_met"] = ratio >= TARGET_RATIO
    print(f"data: {source}; batch {args.batch_size}; {args.steps} timed steps\n")
    print(
        "| model | samples | train examples/s | ms/step | input pipeline alone, examples/s | params | peak RSS (MiB) |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['model_type']} | {r['text_features']} | {r['examples_per_s']:,.0f} | {r['step_ms']:.1f} | "
            f"{r['input_examples_per_s']:,.0f} | {r['params']:,} | {r['peak_rss_mib']:,.0f} |"
        )
    for mode in ("key", "vector"):
        if mode in bytes_per_sample:
            print(f"\n{mode} samples: {bytes_per_sample[mode]:,.0f} bytes/sample on disk (gzip)", end="")
    if bytes_per_sample:
        print(f"; text tables {bytes_per_sample['text_tables_mib']:.1f} MiB")
    for model, speedup in speedups.items():
        print(f"{model}: key / vector examples/s = {speedup:.2f}")
    if "srfoundation_vs_shared_bottom" in report:
        print(
            f"\nSRFoundation / SharedBottom throughput: {report['srfoundation_vs_shared_bottom']:.2f} "
            f"(target >= {TARGET_RATIO})"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
