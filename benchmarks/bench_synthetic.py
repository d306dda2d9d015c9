"""Benchmark: synthetic generic-log generator throughput and peak memory (a script, not a test).

    .venv/bin/python benchmarks/bench_synthetic.py --rows 1000000

Prints a table and writes benchmarks/results/bench_synthetic.json. Peak memory is the process's
maximum resident set size (ru_maxrss), interpreter and numpy included; the generator streams, so it
should not grow with --rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import shlex
import sys
import tempfile
import time

from tfsr.datasets import synthetic

RESULTS = pathlib.Path(__file__).parent / "results"


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"


def bench(rows: int, fmt: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        paths = synthetic.write_logs(rows, out, seed=seed, fmt=fmt)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in paths)
    return {
        "rows": rows,
        "format": fmt + ".gz",
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bytes_written": size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = [bench(rows, args.format, args.seed) for rows in sorted(args.rows)]
    report = {
        "benchmark": "synthetic generator (tfsr.datasets.synthetic.write_logs)",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }
    print(f"{'rows':>10} {'format':>9} {'seconds':>8} {'rows/s':>9} {'peak RSS MiB':>13} {'MB written':>11}")
    for r in results:
        print(
            f"{r['rows']:>10} {r['format']:>9} {r['seconds']:>8} {r['rows_per_s']:>9} {r['peak_rss_mib']:>13} "
            f"{r['bytes_written'] / 1e6:>11.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_synthetic.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
