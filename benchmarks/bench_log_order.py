"""Does the order of the logs change what the model learns? The same MovieLens rows, two orders.

    .venv/bin/python benchmarks/bench_log_order.py              # MiniLM, 3 seeds, the study's budget
    .venv/bin/python benchmarks/bench_log_order.py --seeds 2 --epochs 2
    .venv/bin/python benchmarks/bench_log_order.py --quick      # smoke run: tiny encoder, few steps, 1 seed

1. builds the MovieLens samples once (tiny encoder: only the rows matter here) and writes every sample
   back as a generic-format log row (``tfsr.datasets.logs.format_log_line``) in two orders:
   **domain-sorted** (one file per domain, each in time order: how real logs arrive, one file per
   service) and **shuffled** (rows in random order over a few files);
2. preprocesses both with ``tfsr preprocess --logs`` (``beam_jobs.build_samples``) and the benchmark's
   text encoder (the real all-MiniLM-L6-v2 by default, as ``make demo`` and the paper study use);
3. checks that both give the same split membership (rows per split and domain, the manifest's cutoffs);
4. trains SRFoundation on each with the paper study's training and evaluation functions
   (``benchmarks/paper_study.py``: ``Study.pretrain``), several seeds, and reports warm-domain AUC / GAUC
   and search AUC on ``pretrain_eval`` per order (mean ± std) in a table and in
   ``benchmarks/results/log_order.json``.

Issue 12's target: the two orders within 2 std of each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import os
import pathlib
import platform
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import tfsr  # noqa: E402, F401  (Keras 2 before TensorFlow)

import numpy as np  # noqa: E402
import paper_study  # noqa: E402

log = logging.getLogger("bench_log_order")
ORDERS = ("domain_sorted", "shuffled")
LOG_COLUMNS = ("domain", "user_id", "query_text", "item_id", "item_title", "item_genres", "item_decade")


def sample_rows(samples_dir: pathlib.Path) -> list[dict]:
    """Every sample of a samples directory as a generic-log record (all splits)."""
    from tfsr import data, layout
    from tfsr.text.lookup import samples_text_lookup

    spec = layout.read_feature_spec(samples_dir)
    lookup = samples_text_lookup(samples_dir, spec)
    rows = []
    for split in layout.SPLITS:
        for batch in data.make_dataset((samples_dir, split), spec, 4096, shuffle=False, text_lookup=lookup):
            columns = {f: batch[f] for f in (*LOG_COLUMNS, "label", "timestamp")}
            genres = columns["item_genres"].to_list()
            values = {f: columns[f].numpy() for f in columns if f != "item_genres"}
            for i in range(len(genres)):
                row = {f: values[f][i].decode("utf-8") for f in LOG_COLUMNS if f != "item_genres"}
                row["item_genres"] = [g.decode("utf-8") for g in genres[i]]
                row["label"], row["timestamp"] = int(values["label"][i]), int(values["timestamp"][i])
                rows.append(row)
    return rows


def write_logs(rows: list[dict], directory: pathlib.Path, order: str, seed: int = 0) -> str:
    """`rows` as gzip JSONL logs in one order; returns the glob of the files."""
    import gzip

    from tfsr.datasets.logs import format_log_line

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    files: dict[str, list[dict]] = {}
    if order == "domain_sorted":
        for row in sorted(rows, key=lambda r: (r["domain"], r["timestamp"])):
            files.setdefault(row["domain"], []).append(row)
    else:
        permutation = np.random.default_rng(seed).permutation(len(rows))
        for n, i in enumerate(permutation):
            files.setdefault(f"part{n % 4}", []).append(rows[i])
    for name, part in files.items():
        with gzip.open(directory / f"{name}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(format_log_line(r, "jsonl") + "\n" for r in part)
    return str(directory / "*.jsonl.gz")


def preprocess_logs(pattern: str, out: pathlib.Path, text_encoder: str) -> float:
    from beam_jobs import build_samples

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    rc = build_samples.run(["--logs", pattern, "--output_dir", str(out), "--text_encoder", text_encoder])
    if rc:
        raise RuntimeError(f"preprocessing {pattern} failed (exit {rc})")
    return time.perf_counter() - t0


def _summary(rows: list[dict], warm: list[str]) -> dict:
    """Warm macro AUC / GAUC (mean over the warm domains) and search AUC per run, then mean ± std."""
    search = [d for d in warm if d.startswith("search")]
    per_run = [
        {
            "seed": r["seed"],
            "warm_macro_auc": float(np.mean([r["domains"][d]["auc"] for d in warm])),
            "warm_macro_gauc": float(np.nanmean([r["domains"][d].get("gauc", np.nan) for d in warm])),
            "search_auc": float(np.mean([r["domains"][d]["auc"] for d in search])) if search else None,
            "per_domain_auc": {d: r["domains"][d]["auc"] for d in warm},
            "seconds": r["seconds"],
        }
        for r in rows
    ]
    out = {"runs": per_run}
    for metric in ("warm_macro_auc", "warm_macro_gauc", "search_auc"):
        values = [p[metric] for p in per_run if p[metric] is not None]
        out[metric] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-latest-small"))
    parser.add_argument("--work_dir", default=str(REPO / "artifacts" / "log_order"))
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny encoder, few steps, 1 seed")
    parser.add_argument("--text_encoder", choices=("minilm", "tiny"), help="override the budget's encoder")
    parser.add_argument("--seeds", type=int, help="number of seeds per order (default: the study's 3)")
    parser.add_argument("--epochs", type=int, help="override pretraining epochs")
    parser.add_argument("--results_json", default=str(REPO / "benchmarks" / "results" / "log_order.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    budget = paper_study.budget_from_args(args)
    work = pathlib.Path(args.work_dir)
    if args.quick and args.results_json == parser.get_default("results_json"):
        args.results_json = str(work / "log_order_quick.json")
    started = time.perf_counter()

    from tfsr import layout

    reference = paper_study.preprocess(pathlib.Path(args.data_dir), work / "movielens_rows", "tiny")
    rows = sample_rows(reference)
    log.info("%d MovieLens samples as log rows", len(rows))
    samples, preprocess_s, manifests = {}, {}, {}
    for order in ORDERS:
        pattern = write_logs(rows, work / f"logs_{order}", order)
        samples[order] = work / f"samples_{order}"
        preprocess_s[order] = round(preprocess_logs(pattern, samples[order], budget.text_encoder), 1)
        manifests[order] = layout.read_manifest(samples[order])
        log.info("preprocessed %s logs in %.0f s", order, preprocess_s[order])
    same_splits = all(
        manifests[ORDERS[0]][key] == manifests[ORDERS[1]][key]
        for key in ("counts", "split_cutoffs", "shards")
    )

    results = {}
    for order in ORDERS:
        study = paper_study.Study(samples[order], work / order, budget, base_model={})
        runs = [
            study.pretrain(f"{order}@seed{seed}", order, {"model_type": paper_study.MAIN_MODEL}, seed=seed)
            for seed in budget.seeds
        ]
        results[order] = _summary(runs, study.warm)

    a, b = (results[o] for o in ORDERS)
    within = {
        metric: abs(a[metric]["mean"] - b[metric]["mean"]) <= 2 * max(a[metric]["std"], b[metric]["std"])
        for metric in ("warm_macro_auc", "warm_macro_gauc", "search_auc")
    }
    lines = [
        "| logs | warm macro AUC | warm macro GAUC | search AUC | preprocess s |",
        "|---|---:|---:|---:|---:|",
    ]
    for order in ORDERS:
        r = results[order]
        cells = [
            f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}"
            for m in ("warm_macro_auc", "warm_macro_gauc", "search_auc")
        ]
        lines.append(f"| {order} | {' | '.join(cells)} | {preprocess_s[order]} |")
    table = "\n".join(lines)
    print(table)
    print(f"same split membership: {same_splits}; within 2 std: {within}")
    output = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_log_order.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "budget": dataclasses.asdict(budget),
        "rows": len(rows),
        "same_split_membership": same_splits,
        "counts": manifests[ORDERS[0]]["counts"],
        "split_cutoffs": manifests[ORDERS[0]]["split_cutoffs"],
        "shards": manifests[ORDERS[0]]["shards"],
        "preprocess_seconds": preprocess_s,
        "results": results,
        "within_2_std": within,
        "table": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = pathlib.Path(args.results_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return 0 if same_splits else 1


if __name__ == "__main__":
    sys.exit(main())
