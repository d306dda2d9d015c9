"""Training throughput: SRFoundation vs SharedBottom (and any other model type) in the same run.

Measures training examples/s at a given batch size on this machine's CPU (or GPU), the number of
parameters and each model's peak resident memory. Each model runs in its own child process, so its
peak memory is its own. Prints a markdown table and writes JSON.

  python benchmarks/bench_training_throughput.py --samples_dir artifacts/samples   # real TFRecords
  python benchmarks/bench_training_throughput.py                                   # synthetic records

Without `--samples_dir` (or when it has no TFRecords for `--split`) it writes synthetic records of the
default schema (384-wide text vectors, like all-MiniLM-L6-v2) into a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
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
    parser.add_argument("--output", default="artifacts/bench_training_throughput.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", default=None, help=argparse.SUPPRESS)
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


def glob_exists(pattern: str) -> bool:
    import glob

    return bool(glob.glob(pattern))


def _worker(args) -> dict:
    """Runs in a child process: trains one model type and reports its figures as JSON."""
    from tfsr import data
    from tfsr.models import ModelConfig, build_model

    spec, pattern, vocabularies, _ = _inputs(args)
    dataset = data.make_dataset(pattern, spec, args.batch_size, repeat=True, drop_remainder=True, seed=0)
    model = build_model(ModelConfig(args.worker, embedding_dim=args.embedding_dim), spec, vocabularies)
    model.compile()
    iterator = iter(dataset)
    model.fit(iterator, steps_per_epoch=args.warmup_steps, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(iterator, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "model_type": args.worker,
        "examples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "params": int(model.count_params()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return {}
    _, pattern, _, source = _inputs(args)
    files = None if args.samples_dir and "synthetic" not in source else os.path.dirname(pattern)
    results = []
    for model_type in args.models:
        command = [
            sys.executable,
            __file__,
            "--worker",
            model_type,
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
        ]
        command += ["--files", files] if files else ["--samples_dir", args.samples_dir]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    by_type = {r["model_type"]: r for r in results}
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
    }
    if "srfoundation" in by_type and "shared_bottom" in by_type:
        ratio = by_type["srfoundation"]["examples_per_s"] / by_type["shared_bottom"]["examples_per_s"]
        report["srfoundation_vs_shared_bottom"] = ratio
        report["target_met"] = ratio >= TARGET_RATIO
    print(f"data: {source}; batch {args.batch_size}; {args.steps} timed steps\n")
    print("| model | examples/s | ms/step | params | peak RSS (MiB) |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model_type']} | {r['examples_per_s']:,.0f} | {r['step_ms']:.1f} | {r['params']:,} | "
            f"{r['peak_rss_mib']:,.0f} |"
        )
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
