"""Serving latency: one query x 64 candidates over local gRPC vs the same call in process.

Starts ``tfsr serve`` in a subprocess (its own interpreter, as in production), drives it with
``--clients`` concurrent clients for ``--duration`` seconds, then calls the same SavedModel signature in
this process with the same requests and concurrency. Reports p50/p90/p99 latency, QPS and errors for both,
and the gRPC overhead at p50 (targets on 2 cores: p50 <= 15 ms, p99 <= 40 ms, zero errors, overhead <= 3 ms).

    .venv/bin/python benchmarks/bench_serving.py                      # 30 s per phase, S&R model export
    .venv/bin/python benchmarks/bench_serving.py --duration 5         # quick look
    .venv/bin/python benchmarks/bench_serving.py --model_base_path saved_models/tfsr --samples_dir artifacts/samples

Without ``--model_base_path`` it exports an untrained S&R Foundation model (tfsr.models, text_dim 384, a
random tiny text encoder as the fallback; every benchmark text is in the precomputed table, as in
production where the titles were embedded by the Beam job) into a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))  # the serving test doubles

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.client import ScoringClient
from tfsr import layout
from tfsr.cli import subprocess_command

import grpc
import numpy as np
import serving_doubles as T
import tensorflow as tf


def build_export(workdir: pathlib.Path, text_dim: int, model_type: str) -> tuple[pathlib.Path, pathlib.Path]:
    import tfsr.export as export
    from tfsr.models import ModelConfig, build_model
    from tfsr.text import tiny_text_encoder

    spec = T.toy_spec(text_dim)
    encoder = tiny_text_encoder(dim=text_dim, num_heads=4 if text_dim % 4 == 0 else 1)
    vocabs = dict(T.TOY_VOCABULARIES)
    vocabs["user_id"] = [f"u{i}" for i in range(1, 611)]
    vocabs["item_id"] = [f"m{i}" for i in range(1, 2001)]
    titles = {f"m{i}": f"Movie number {i} ({1900 + i % 120})" for i in range(1, 2001)}
    samples = T.write_samples_dir(workdir / "samples", spec, encoder, vocabularies=vocabs, titles=titles)
    vocabularies = {name: layout.read_vocab(samples, name) for name in T.TOY_VOCABULARIES}
    model = build_model(ModelConfig(model_type), spec, vocabularies)
    path = export.export_model(model, spec, encoder, workdir / "saved_models", "bench", samples_dir=samples)
    return path.parent, samples


def make_requests(client: ScoringClient, samples_dir, candidates: int, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    users = layout.read_vocab(samples_dir, "user_id")
    items = layout.read_vocab(samples_dir, "item_id")
    queries = layout.read_vocab(samples_dir, "query_id") or ["space"]
    genres = layout.read_vocab(samples_dir, "item_genres")
    titles = {}
    title_path = layout.text_embeddings_path(samples_dir, "item_title")
    if title_path.exists():
        from tfsr.export import read_text_embeddings

        spec = layout.read_feature_spec(samples_dir)
        texts, _ = read_text_embeddings(title_path, spec.text_dim)
        titles = [t.decode() for t in texts]
    requests = []
    for _ in range(n):
        query = rng.choice(queries)
        context = {
            "domain": "search_tags",
            "user_id": rng.choice(users),
            "query_id": query,
            "query_text": query,
        }
        cands = [
            {
                "item_id": item,
                "item_title": titles[i % len(titles)] if titles else "",
                "item_genres": rng.sample(genres, min(2, len(genres))),
                "item_decade": "1990s",
            }
            for i, item in enumerate(rng.sample(items, candidates))
        ]
        requests.append(client.candidate_request(context, cands))
    return requests


def drive(call, requests, clients: int, duration: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    stop = time.monotonic() + duration

    def worker(k):
        i = k
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                call(k, requests[i % len(requests)])
                latencies[k].append(time.perf_counter() - t0)
            except Exception as err:  # counted, reported
                errors[k].append(f"{type(err).__name__}: {str(err)[:200]}")
            i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array([x for xs in latencies for x in xs]) * 1000.0
    errs = [e for es in errors for e in es]
    return {
        "requests": int(lat.size),
        "errors": len(errs),
        "error_samples": errs[:3],
        "seconds": elapsed,
        "qps": lat.size / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p90_ms": float(np.percentile(lat, 90)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "mean_ms": float(lat.mean()) if lat.size else None,
    }


def start_server(base_path, name: str, threads: int) -> tuple[subprocess.Popen, str]:
    repo = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        subprocess_command(
            "serve",
            "--model_name",
            name,
            "--model_base_path",
            base_path,
            "--port",
            0,
            "--num_threads",
            threads,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=repo,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    line = proc.stdout.readline()
    if "gRPC on " not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.split("gRPC on ")[1].split(",")[0].strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase (default 30)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--model_base_path", help="an existing export base (<base>/<version>/)")
    parser.add_argument("--model_name", default="bench")
    parser.add_argument("--samples_dir", help="samples dir whose vocabularies make the requests")
    parser.add_argument("--model_type", default="srfoundation")
    parser.add_argument("--text_dim", type=int, default=384)
    parser.add_argument("--server_threads", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/serving.json")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench_serving_")
    if args.model_base_path:
        base, samples = pathlib.Path(args.model_base_path), args.samples_dir
        if not samples:
            parser.error("--model_base_path needs --samples_dir (for realistic ids)")
    else:
        print("exporting an untrained", args.model_type, "model ...", flush=True)
        base, samples = build_export(pathlib.Path(tmp.name), args.text_dim, args.model_type)
        args.model_name = "bench"

    proc, target = start_server(base, args.model_name, args.server_threads)
    try:
        clients = [ScoringClient(target, args.model_name, deadline_s=2.0) for _ in range(args.clients)]
        requests = make_requests(clients[0], samples, args.candidates, n=64)
        clients[0].predict(requests[0])
        drive(lambda k, r: clients[k].predict(r), requests, args.clients, min(3.0, args.duration))  # warm up
        print(f"gRPC: {args.clients} clients x {args.duration:.0f} s ...", flush=True)
        grpc_stats = drive(lambda k, r: clients[k].predict(r), requests, args.clients, args.duration)
        for c in clients:
            c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    from serving.versions import ModelManager

    version = max(ModelManager.versions_on_disk(str(base)))
    signature = tf.saved_model.load(str(pathlib.Path(base) / str(version))).signatures["serving_default"]
    examples = [tf.make_ndarray(r.inputs["examples"]) for r in requests]

    def in_process(_k, e):
        out = signature(examples=tf.constant(e))
        return out["ctr"].numpy()

    drive(in_process, examples, args.clients, min(3.0, args.duration))
    print(f"in-process: {args.clients} threads x {args.duration:.0f} s ...", flush=True)
    local_stats = drive(in_process, examples, args.clients, args.duration)
    seq_stats = drive(in_process, examples, 1, min(10.0, args.duration))

    overhead = grpc_stats["p50_ms"] - local_stats["p50_ms"]
    result = {
        "benchmark": "one query x N candidates, serving_default (serialized tf.Examples)",
        "command": " ".join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "grpc": grpc.__version__,
        },
        "config": {
            "clients": args.clients,
            "candidates": args.candidates,
            "duration_s": args.duration,
            "model_type": args.model_type,
            "text_dim": args.text_dim,
            "server_threads": args.server_threads,
            "load_avg_at_end": os.getloadavg(),
        },
        "grpc": grpc_stats,
        "in_process": local_stats,
        "in_process_sequential": seq_stats,
        "overhead_p50_ms": overhead,
        "overhead_p50_vs_sequential_ms": grpc_stats["p50_ms"] - seq_stats["p50_ms"],
        "targets": {
            "p50_ms<=15": grpc_stats["p50_ms"] <= 15,
            "p99_ms<=40": grpc_stats["p99_ms"] <= 40,
            "zero_errors": grpc_stats["errors"] == 0,
            "overhead_p50_ms<=3": overhead <= 3,
        },
    }
    rows = [
        ("gRPC (tfsr serve)", grpc_stats),
        (f"in-process x{args.clients}", local_stats),
        ("in-process x1", seq_stats),
    ]
    print(
        f"\n{'path':<20} {'requests':>8} {'errors':>6} {'QPS':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}"
    )
    for label, s in rows:
        print(
            f"{label:<20} {s['requests']:>8} {s['errors']:>6} {s['qps']:>7.1f} {s['p50_ms']:>7.2f} "
            f"{s['p90_ms']:>7.2f} {s['p99_ms']:>7.2f}"
        )
    print(
        f"\ngRPC overhead at p50: {overhead:.2f} ms vs in-process x{args.clients}, "
        f"{result['overhead_p50_vs_sequential_ms']:.2f} ms vs in-process x1   targets: {result['targets']}"
    )
    if grpc_stats["error_samples"]:
        print("errors:", grpc_stats["error_samples"])
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    tmp.cleanup()
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
