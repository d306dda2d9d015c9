"""Throughput of the frozen text encoder (all-MiniLM-L6-v2) on MovieLens titles and tags.

Measures sentences/s of ``TextEncoder.encode`` (length-sorted batches, dynamic padding) and of the
in-graph call on batches in input order (what a serving request sees), tokenization alone, the
load time, peak resident memory and the exported SavedModel's size. Prints a table; writes JSON.

    .venv/bin/python benchmarks/bench_text_encoder.py --out benchmarks/results/text_encoder.json

The machine is shared: the load average before and after the run is recorded with the results.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.text import export_text_encoder, load_text_encoder

import tensorflow as tf

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def _column(path: pathlib.Path, name: str, n: int) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row[name] for _, row in zip(range(n), csv.DictReader(f), strict=False)]


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds (all threads) of ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _dir_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=pathlib.Path, default=DEFAULT_DATA, help="ml-latest-small directory"
    )
    parser.add_argument("--n", type=int, default=2000, help="texts per corpus")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    start = time.perf_counter()
    encoder = load_text_encoder(args.weights_dir)
    load_s = time.perf_counter() - start

    corpora = {
        "titles": _column(args.data_dir / "movies.csv", "title", args.n),
        "tags": _column(args.data_dir / "tags.csv", "tag", args.n),
    }
    encoder.encode(corpora["titles"][: args.batch_size])  # trace once, outside the timings

    rows = []
    for name, texts in corpora.items():
        tokens = encoder.tokenize(tf.constant(texts)).row_lengths().numpy()
        sorted_s, sorted_cpu = _timed(
            lambda t=texts: encoder.encode(t, batch_size=args.batch_size), args.repeats
        )

        def in_order(t=texts):
            for i in range(0, len(t), args.batch_size):
                encoder(tf.constant(t[i : i + args.batch_size])).numpy()

        in_order()  # warm-up
        in_order_s, _ = _timed(in_order, args.repeats)
        tok_s, _ = _timed(lambda t=texts: encoder.tokenize(tf.constant(t)), args.repeats)
        rows.append(
            {
                "corpus": name,
                "texts": len(texts),
                "mean_tokens": float(tokens.mean()),
                "max_tokens": int(tokens.max()),
                "encode_sorted_per_s": len(texts) / sorted_s,
                "encode_sorted_cpu_s": sorted_cpu,
                # what the CPU work would give if every core were ours (derived, not measured)
                "encode_sorted_per_s_if_idle": len(texts) / sorted_cpu * (os.cpu_count() or 1),
                "call_in_order_per_s": len(texts) / in_order_s,
                "tokenize_only_per_s": len(texts) / tok_s,
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        export_dir = pathlib.Path(tmp) / "text_encoder"
        export_text_encoder(encoder, export_dir)
        saved_model_bytes = _dir_size(export_dir)

    results = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "encoder": encoder.identity,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "load_s": load_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "saved_model_mib": saved_model_bytes / 2**20,
        "corpora": rows,
    }

    print(
        f"{'corpus':<8} {'texts':>6} {'tokens':>7} {'encode()/s':>11} {'CPU s':>6} {'/s if idle':>11} "
        f"{'call in order/s':>16} {'tokenize/s':>11}"
    )
    for r in rows:
        print(
            f"{r['corpus']:<8} {r['texts']:>6} {r['mean_tokens']:>7.1f} {r['encode_sorted_per_s']:>11.0f} "
            f"{r['encode_sorted_cpu_s']:>6.2f} {r['encode_sorted_per_s_if_idle']:>11.0f} "
            f"{r['call_in_order_per_s']:>16.0f} {r['tokenize_only_per_s']:>11.0f}"
        )
    print(
        f"load {load_s:.1f} s | peak RSS {results['peak_rss_mib']:.0f} MiB | SavedModel {results['saved_model_mib']:.1f} MiB"
        f" | loadavg before {load_before[0]:.2f}, after {results['machine']['loadavg_after'][0]:.2f}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
