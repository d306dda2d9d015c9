"""Benchmark: the build_samples Beam job on the DirectRunner (a script, not a test).

    .venv/bin/python benchmarks/bench_build_samples.py --movielens_dir ../shared/data/ml-latest-small
    .venv/bin/python benchmarks/bench_build_samples.py --synthetic_rows 500000 1000000 --text_encoder tiny

Each case runs `tfsr preprocess` in its own process; wall time and that process's peak resident
memory (os.wait4 ru_maxrss) are recorded. Prints a table and writes
benchmarks/results/bench_build_samples.json (merged with earlier cases of other sizes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shlex
import sys
import tempfile

from tfsr.datasets import synthetic

from bench_scale import run_stage
from bench_synthetic import RESULTS, machine


def run_case(name: str, preprocess_args: list[str], rows: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = ["preprocess", *preprocess_args, "--output_dir", f"{out}/samples", *extra]
        measured = run_stage(args)
        manifest = json.loads(pathlib.Path(f"{out}/samples/manifest.json").read_text())
    written = manifest["reconciliation"]["samples"]["written"]
    return {
        "case": name,
        "input_rows": rows,
        "samples_written": written,
        "seconds": measured["wall_s"],
        "input_rows_per_s": round(rows / measured["wall_s"]),
        "peak_rss_mib": measured["peak_rss_mib"],
        "text_encoder": manifest["text_encoder"].get("name"),
        "command": shlex.join(["tfsr", *args]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movielens_dir", help="benchmark the whole ml-latest-small")
    parser.add_argument("--synthetic_rows", type=int, nargs="*", default=[], help="synthetic log sizes")
    parser.add_argument("--text_encoder", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument(
        "--runner_args", default="", help="extra pipeline flags, e.g. '--direct_num_workers 2'"
    )
    args = parser.parse_args(argv)
    extra = ["--text_encoder", args.text_encoder, *shlex.split(args.runner_args)]
    results = []
    if args.movielens_dir:
        folder = pathlib.Path(args.movielens_dir)
        rows = sum(
            len((folder / f"{name}.csv").read_bytes().splitlines()) for name in ("movies", "ratings", "tags")
        )
        results.append(run_case("movielens", ["--movielens_dir", args.movielens_dir], rows, extra))
    for n in args.synthetic_rows:
        with tempfile.TemporaryDirectory() as logs:
            synthetic.write_logs(n, logs, seed=0)
            results.append(run_case(f"synthetic_{n}", ["--logs", f"{logs}/*.jsonl.gz"], n, extra))
    path = RESULTS / "bench_build_samples.json"
    previous = json.loads(path.read_text())["results"] if path.exists() else []
    merged = {r["case"]: r for r in previous} | {r["case"]: r for r in results}
    report = {
        "benchmark": "beam_jobs.build_samples on the DirectRunner",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "shared 2-core machine: other engineers' jobs were loading the CPU during these runs",
        "results": list(merged.values()),
    }
    print(
        f"{'case':>20} {'input rows':>11} {'samples':>9} {'seconds':>8} {'rows/s':>7} {'peak RSS MiB':>13} encoder"
    )
    for r in results:
        print(
            f"{r['case']:>20} {r['input_rows']:>11} {r['samples_written']:>9} {r['seconds']:>8} "
            f"{r['input_rows_per_s']:>7} {r['peak_rss_mib']:>13} {r['text_encoder']}"
        )
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
