"""Scale benchmark: synthetic logs → `tfsr preprocess` → one epoch of `tfsr train`, at several sizes.

For each size it runs every stage as its own `tfsr` process and records wall time, rows/s and that
process's peak RSS, so one can see how time and memory grow with the data (issue 8, part 5). Training
streams from the TFRecords, so its memory should stay flat as the data grows; the local Beam runner
keeps intermediate collections in memory, so its peak grows with the input.

    python benchmarks/bench_scale.py --rows 500000 1000000 --out benchmarks/results/scale.json

Text-feature scale at one row count (distinct titles and queries, not rows, grow):

    python benchmarks/bench_scale.py --rows 1000000 --out benchmarks/results/scale_texts.json \
        --synth_flags "--num_items 100000 --popularity_exponent 0" \
                      "--num_items 1000000 --popularity_exponent 0 --search_fraction 1 --impressions_per_search 1 --query_tail 10000000"

`--text_features {key,vector}` is passed to `tfsr preprocess` (default key, its default): samples that
carry their texts only, or their embedding vectors too (issue 14). Each result records the mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from tfsr import layout
from tfsr.cli import subprocess_command

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_stage(args: list[str]) -> dict:
    """Runs `tfsr ARGS` in a child process: wall seconds and the child's own peak RSS (MiB)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    proc = subprocess.Popen(
        subprocess_command(*args),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stderr = proc.stderr.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tfsr {args[0]} failed:\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def train_samples(samples_dir: pathlib.Path) -> int:
    """Rows of pretrain_train: what one training epoch reads."""
    manifest = json.loads((samples_dir / "manifest.json").read_text())
    return sum(v["samples"] for v in manifest["counts"]["pretrain_train"].values())


def measure(
    rows: int,
    workdir: pathlib.Path,
    seed: int,
    synth_flags: list[str] = (),
    text_features: str = layout.TEXT_KEYS,
) -> dict:
    """One size end to end; `synth_flags` are extra `tfsr synth` flags (catalogue size, query tail...),
    `text_features` the samples' text-feature mode (`tfsr preprocess --text_features`)."""
    logs, samples, run = workdir / "logs", workdir / "samples", workdir / "run"
    result = {"rows": rows, "synth_flags": " ".join(synth_flags), "text_features": text_features}
    result["synth"] = run_stage(
        ["synth", "--rows", str(rows), "--out", str(logs), "--seed", str(seed), *synth_flags]
    )
    result["preprocess"] = run_stage(
        [
            "preprocess",
            "--logs",
            str(logs / "*"),
            "--output_dir",
            str(samples),
            "--text_encoder",
            "tiny",
            "--text_features",
            text_features,
        ]
    )
    result["preprocess"]["samples_mib"] = round(
        sum(p.stat().st_size for p in samples.glob(f"*/*{layout.TFRECORD_SUFFIX}")) / 2**20, 1
    )
    result["train_samples"] = train_samples(samples)
    result["distinct_texts"] = json.loads((samples / "manifest.json").read_text())["text_embeddings"]
    result["preprocess"]["input_shards"] = len(list(logs.iterdir()))
    result["preprocess"]["output_shards"] = len(list(samples.glob(f"*/*{layout.TFRECORD_SUFFIX}")))
    train = [
        "train",
        "--samples_dir",
        str(samples),
        "--output_dir",
        str(run),
        "--epochs",
        "1",
        "--batch_size",
        "1024",
        "--log_every",
        "200",
    ]
    try:
        result["train_1_epoch"] = run_stage(train)
    except SystemExit as err:  # keep the preprocess figures of a variant whose training fails
        result["train_1_epoch"] = {"wall_s": None, "peak_rss_mib": None, "error": str(err)[-2000:]}
    for stage, n in (("synth", rows), ("preprocess", rows), ("train_1_epoch", result["train_samples"])):
        wall = result[stage]["wall_s"]
        result[stage]["rows_per_s"] = round(n / wall) if wall else None
    return result


def _slope(small: dict, large: dict, stage: str, key: str, scale: float, per: int) -> float | None:
    if large[stage][key] is None or small[stage][key] is None:  # a failed stage
        return None
    return round((large[stage][key] - small[stage][key]) * scale / per, 3)


def marginal_costs(results: list[dict]) -> list[dict]:
    """Per extra row between consecutive sizes: the slope of time and peak memory (fixed costs cancel)."""
    costs = []
    for small, large in zip(results, results[1:], strict=False):
        rows, train = large["rows"] - small["rows"], large["train_samples"] - small["train_samples"]
        costs.append(
            {
                "from_rows": small["rows"],
                "to_rows": large["rows"],
                "preprocess_us_per_row": _slope(small, large, "preprocess", "wall_s", 1e6, rows),
                "preprocess_kib_per_row": _slope(small, large, "preprocess", "peak_rss_mib", 1024, rows),
                "train_us_per_row": _slope(small, large, "train_1_epoch", "wall_s", 1e6, train),
                "train_kib_per_row": _slope(small, large, "train_1_epoch", "peak_rss_mib", 1024, train),
            }
        )
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[500_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    parser.add_argument(
        "--synth_flags",
        nargs="+",
        default=[""],
        help="one quoted set of extra `tfsr synth` flags per variant, each run at every --rows, e.g. "
        "'--num_items 100000 --popularity_exponent 0' '--num_items 1000000 --popularity_exponent 0': "
        "text-feature scale at the same row count",
    )
    parser.add_argument(
        "--text_features",
        choices=layout.TEXT_FEATURE_MODES,
        default=layout.TEXT_KEYS,
        help="passed to `tfsr preprocess`: samples that carry their texts only (key) or their vectors too",
    )
    args = parser.parse_args(argv)

    results = []
    for rows in args.rows:
        for flags in args.synth_flags:
            workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"tfsr_scale_{rows}_"))
            try:
                results.append(measure(rows, workdir, args.seed, flags.split(), args.text_features))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            r = results[-1]
            print(
                f"{rows:>10,} rows {r['synth_flags']} ({r['text_features']} samples, "
                f"{r['preprocess']['samples_mib']} MiB): distinct texts {r['distinct_texts']}; synth "
                f"{r['synth']['wall_s']} s, preprocess {r['preprocess']['wall_s']} s "
                f"({r['preprocess']['peak_rss_mib']} MiB), train {r['train_1_epoch']['wall_s']} s "
                f"({r['train_1_epoch']['peak_rss_mib']} MiB)",
                flush=True,
            )

    print("\n| rows | synth flags | distinct texts | stage | wall s | rows/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        texts = ", ".join(f"{k} {v:,}" for k, v in sorted(r["distinct_texts"].items()))
        for stage in ("synth", "preprocess", "train_1_epoch"):
            s = r[stage]
            print(
                f"| {r['rows']:,} | {r['synth_flags'] or '-'} | {texts} | {stage} | {s['wall_s']} | "
                f"{s['rows_per_s'] or 0:,} | {s['peak_rss_mib'] or 0:,} |"
            )
    # per extra row: between consecutive sizes of the same synth variant
    growth = [
        cost
        for flags in args.synth_flags
        for cost in marginal_costs([r for r in results if r["synth_flags"] == " ".join(flags.split())])
    ]
    for g in growth:
        print(
            f"{g['from_rows']:,} -> {g['to_rows']:,} rows: preprocess {g['preprocess_us_per_row']} us and "
            f"{g['preprocess_kib_per_row']} KiB per extra row; training {g['train_us_per_row']} us and "
            f"{g['train_kib_per_row']} KiB per extra row"
        )
    report = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "text_features": args.text_features,
        "results": results,
        "marginal_costs": growth,
    }
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
