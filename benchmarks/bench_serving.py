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

``--retrieval`` measures the retrieval signatures instead (issue 15): ``retrieve`` and ``retrieve_and_rank``
(k = ``--k``, one context per request, a mix of search queries with a user, rec users of the warm domains
and of the cold-start domain) over the whole catalogue, with ``--clients`` concurrent gRPC clients, for
catalogues of growing size: the real one of ``--samples_dir`` first, then synthetic ones of
``--catalogue_sizes`` items, each the real ``items/`` replicated with new ids ``<id>#<copy>`` (copy 0 keeps
the real ids; same titles, genres and decades, so the features and embeddings are realistic) in a temporary
samples directory, exported through the same ``tfsr.export.export_model`` path as ``tfsr export
--retrieval_model_dir``. Reports p50/p90/p99, QPS, errors, the export size and the server's RSS per row, and
the targets for the real catalogue (p50 <= 20 ms, p99 <= 50 ms on 2 cores):

    .venv/bin/python benchmarks/bench_serving.py --retrieval                    # 9.6k + 100k + 1M items
    .venv/bin/python benchmarks/bench_serving.py --retrieval --catalogue_sizes "" --duration 5   # quick look
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import pathlib
import platform
import random
import resource
import shlex
import shutil
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


def machine_info() -> dict:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "grpc": grpc.__version__,
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


# --------------------------------------------------------------------------- retrieval (--retrieval, issue 15)
RETRIEVAL_TARGETS = {"p50_ms": 20.0, "p99_ms": 50.0}  # retrieve_and_rank, k=100, 4 clients, 2 cores
RETRIEVAL_SIGNATURES = ("retrieve_and_rank", "retrieve")


def load_models(ranker_dir: str, retrieval_dir: str):
    """(ranker, retrieval model, the ranker's feature spec), as ``tfsr export`` loads them (a run directory:
    its ``model/``)."""
    from tfsr.features import FeatureSpec
    from tfsr.models import RetrievalModel, load_model

    def resolve(path: str) -> pathlib.Path:
        path = pathlib.Path(path)
        return path / "model" if (path / "model").is_dir() else path

    ranker_path = resolve(ranker_dir)
    ranker, retrieval = load_model(ranker_path), load_model(resolve(retrieval_dir))
    if not isinstance(retrieval, RetrievalModel) or isinstance(ranker, RetrievalModel):
        raise SystemExit(f"{ranker_dir} must be a ranker and {retrieval_dir} a retrieval model")
    spec = FeatureSpec.loads((ranker_path / layout.FEATURE_SPEC).read_text(encoding="utf-8"))
    return ranker, retrieval, spec


def synthetic_samples(samples_dir, workdir: pathlib.Path, num_items: int) -> pathlib.Path:
    """A samples directory whose ``items/`` holds `num_items` items: the real items of `samples_dir` again
    and again, copy c > 0 with ids ``<id>#<c>``; the text tables and vocabularies are the real ones (every
    title is a real one, so the catalogue pass finds it in the table, as the Beam job would have put it)."""
    src = pathlib.Path(samples_dir)
    out = workdir / f"samples_{num_items}"
    (out / layout.ITEMS_DIR).mkdir(parents=True)
    for name in (layout.VOCAB_DIR, layout.TEXT_EMBEDDINGS_DIR):
        os.symlink((src / name).resolve(), out / name)
    shutil.copy(src / layout.FEATURE_SPEC, out / layout.FEATURE_SPEC)
    files = sorted(tf.io.gfile.glob(layout.items_pattern(src)))
    originals = [
        tf.train.Example.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
    path = out / layout.ITEMS_DIR / f"part-00000-of-00001{layout.TFRECORD_SUFFIX}"
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for n in range(num_items):
            copy, i = divmod(n, len(originals))
            example = originals[i]
            if copy:
                example = tf.train.Example()
                example.CopyFrom(originals[i])
                ids = example.features.feature["item_id"].bytes_list.value
                ids[0] = ids[0] + f"#{copy}".encode()
            writer.write(example.SerializeToString())
    return out


def retrieval_contexts(samples_dir, spec, domains, n: int, seed: int = 0, unseen_queries: bool = False):
    """`n` request contexts cycling search (a query with a user) / a warm rec domain / a cold-start rec
    domain (each a random user), over `domains` (those both models know). Search queries are real queries
    whose text the precomputed table holds; with `unseen_queries` every context is a search whose text the
    table lacks (two real queries joined), so the in-graph text encoder runs."""
    from tfsr.text.lookup import read_text_embeddings

    rng = random.Random(seed)
    users = layout.read_vocab(samples_dir, "user_id")
    texts, _ = read_text_embeddings(layout.text_embeddings_path(samples_dir, "query_text"), spec.text_dim)
    known = {t.decode() for t in texts}
    queries = [q for q in layout.read_vocab(samples_dir, "query_id") if q in known]
    kinds = {
        "search": [d for d in domains if spec.domains[d].kind == "search"],
        "warm rec": [
            d for d in domains if spec.domains[d].kind != "search" and not spec.domains[d].cold_start
        ],
        "cold rec": [d for d in domains if spec.domains[d].kind != "search" and spec.domains[d].cold_start],
    }
    cycle = ["search"] if unseen_queries else [k for k, ds in kinds.items() if ds]
    contexts = []
    for j in range(n):
        kind = cycle[j % len(cycle)]
        context = {"domain": rng.choice(kinds[kind]), "user_id": rng.choice(users)}
        if kind == "search":
            query = rng.choice(queries)
            if unseen_queries:
                query = f"{query} {rng.choice(queries)} {j}"
                assert query not in known
            context.update(query_id=query, query_text=query)
        contexts.append(context)
    return contexts, cycle


def rss_mb(pid: int) -> dict:
    """The process's resident memory now and at its peak (Linux /proc), MB."""
    out = {}
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[{"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}[key]] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def dir_mb(path: pathlib.Path) -> float:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file()) / 2**20


def measure_retrieval(base, name, workloads, args) -> tuple[list[dict], dict]:
    """Serves `base` with ``tfsr serve`` and drives each (label, signature, contexts, duration, clients)
    of `workloads` with that many concurrent clients: per workload its stats; and the server's memory."""
    started = time.perf_counter()
    proc, target = start_server(base, name, args.server_threads)
    server = {"start_s": time.perf_counter() - started}
    rows = []
    try:
        clients = [
            ScoringClient(target, name, deadline_s=args.deadline_s, max_retries=0)
            for _ in range(args.clients)
        ]
        for label, signature, contexts, duration, concurrency in workloads:
            requests = [clients[0].retrieval_request([c], args.k, signature) for c in contexts]
            clients[0].predict(requests[0])

            def call(k, r):
                return clients[k].predict(r)

            drive(call, requests, concurrency, min(3.0, duration))  # warm up
            load_before = os.getloadavg()
            print(f"  {signature:<18} {label:<32} {concurrency} clients x {duration:.0f} s ...", flush=True)
            stats = drive(call, requests, concurrency, duration)
            rows.append(
                {
                    "signature": signature,
                    "workload": label,
                    "clients": concurrency,
                    "k": args.k,
                    "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg(),
                    **stats,
                }
            )
        server.update(rss_mb(proc.pid))
        for c in clients:
            c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows, server


def main_retrieval(args, argv) -> int:
    import tfsr.export as export

    retrieval_dir = args.retrieval_model_dir
    print(f"loading the ranker {args.ranker_dir} and the retrieval model {retrieval_dir} ...", flush=True)
    ranker, retrieval, spec = load_models(args.ranker_dir, retrieval_dir)
    encoder = export._load_encoder(args.text_encoder, spec)  # what `tfsr export --text_encoder` loads
    domains = export.retrieval_domains(ranker, retrieval, spec)
    mix, kinds = retrieval_contexts(args.samples_dir, spec, domains, n=240, seed=0)
    unseen, _ = retrieval_contexts(args.samples_dir, spec, domains, n=240, seed=1, unseen_queries=True)
    mix_label = "mix: " + " / ".join(kinds)
    sizes = [None] + [int(n) for n in args.catalogue_sizes.split(",") if n.strip()]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {uptime}", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="bench_retrieval_serving_")
    workdir = pathlib.Path(tmp.name)
    rows, catalogues = [], []
    for size in sizes:
        t0 = time.perf_counter()
        samples = args.samples_dir if size is None else synthetic_samples(args.samples_dir, workdir, size)
        t1 = time.perf_counter()
        name = f"bench{size or ''}"
        path = export.export_model(
            ranker,
            spec,
            encoder,
            workdir / "saved_models",
            name,
            samples_dir=samples,
            retrieval_model=retrieval,
        )
        t2 = time.perf_counter()
        gc.collect()
        info = json.loads((path / "assets.extra" / export.EXPORT_INFO_FILE).read_text(encoding="utf-8"))
        items = info["retrieval"]["catalogue_items"]
        catalogue = {
            "catalogue_items": items,
            "synthetic": size is not None,
            "samples_s": t1 - t0,
            "export_s": t2 - t1,
            "export_mb": dir_mb(path),
            "variables_mb": dir_mb(path / "variables"),
            "bench_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # so far
        }
        print(
            f"catalogue {items:,} items: export {catalogue['export_mb']:.0f} MB in {catalogue['export_s']:.0f} s"
            f"; serving ...",
            flush=True,
        )
        duration = args.duration if size is None else args.scale_duration
        workloads = [(mix_label, sig, mix, duration, args.clients) for sig in RETRIEVAL_SIGNATURES]
        if size is None:  # the service time without queueing, and the encoder fallback
            workloads += [(mix_label, sig, mix, args.scale_duration, 1) for sig in RETRIEVAL_SIGNATURES]
            if args.unseen_queries:
                workloads.append(
                    (
                        "search, unseen queries (encoder)",
                        "retrieve_and_rank",
                        unseen,
                        args.scale_duration,
                        args.clients,
                    )
                )
        measured, server = measure_retrieval(path.parent, name, workloads, args)
        catalogue["server"] = server
        catalogues.append(catalogue)
        rows += [{"catalogue_items": items, "export_mb": catalogue["export_mb"], **r} for r in measured]
        shutil.rmtree(path.parent, ignore_errors=True)
        if size is not None:
            shutil.rmtree(samples, ignore_errors=True)

    real = rows[0]  # the real catalogue, retrieve_and_rank, the mix, --clients clients
    targets = {
        f"retrieve_and_rank p50_ms<={RETRIEVAL_TARGETS['p50_ms']:g}": real["p50_ms"]
        <= RETRIEVAL_TARGETS["p50_ms"],
        f"retrieve_and_rank p99_ms<={RETRIEVAL_TARGETS['p99_ms']:g}": real["p99_ms"]
        <= RETRIEVAL_TARGETS["p99_ms"],
        "zero_errors": all(r["errors"] == 0 for r in rows),
    }
    result = {
        "benchmark": f"retrieve / retrieve_and_rank over the whole catalogue, k={args.k}, one context per request",
        "command": command_line(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "uptime_at_start": uptime,
        "uptime_at_end": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "machine": machine_info(),
        "config": {
            "clients": args.clients,
            "k": args.k,
            "duration_s": args.duration,
            "scale_duration_s": args.scale_duration,
            "server_threads": args.server_threads,
            "samples_dir": args.samples_dir,
            "ranker_dir": args.ranker_dir,
            "retrieval_model_dir": retrieval_dir,
            "text_encoder": args.text_encoder,
            "domains": domains,
            "synthetic_catalogue": "the real items/ replicated, copy c > 0 with ids <id>#<c>, exported with "
            "tfsr.export.export_model(retrieval_model=...) from a temporary samples dir",
        },
        "catalogues": catalogues,
        "rows": rows,
        "targets": targets,
    }
    print(
        f"\n{'items':>9} {'signature':<18} {'workload':<32} {'clients':>7} {'requests':>8} {'errors':>6} {'QPS':>6} "
        f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'export MB':>9} {'server RSS MB':>13}"
    )
    rss = {c["catalogue_items"]: c["server"].get("rss_mb", float("nan")) for c in catalogues}
    for r in rows:
        print(
            f"{r['catalogue_items']:>9,} {r['signature']:<18} {r['workload'][:32]:<32} {r['clients']:>7} {r['requests']:>8} "
            f"{r['errors']:>6} {r['qps']:>6.1f} {r['p50_ms']:>7.2f} {r['p90_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['export_mb']:>9.0f} {rss[r['catalogue_items']]:>13.0f}"
        )
    print(f"\ntargets: {targets}   uptime at end: {result['uptime_at_end']}")
    for r in rows:
        if r["error_samples"]:
            print("errors:", r["signature"], r["catalogue_items"], r["error_samples"])
    out = pathlib.Path(args.out or "benchmarks/results/retrieval_serving.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    tmp.cleanup()
    return 0 if all(targets.values()) else 1


def command_line(argv) -> str:
    return shlex.join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase (default 30)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--model_base_path", help="an existing export base (<base>/<version>/)")
    parser.add_argument("--model_name", default="bench")
    parser.add_argument(
        "--samples_dir",
        help="samples dir whose vocabularies make the requests (--retrieval: and whose items/ are the catalogue; "
        "default artifacts/demo/samples)",
    )
    parser.add_argument("--model_type", default="srfoundation")
    parser.add_argument("--text_dim", type=int, default=384)
    parser.add_argument("--server_threads", type=int, default=8)
    parser.add_argument(
        "--out",
        help="results JSON (default benchmarks/results/serving.json, --retrieval: retrieval_serving.json)",
    )
    retrieval = parser.add_argument_group(
        "--retrieval: the retrieve / retrieve_and_rank signatures (issue 15)"
    )
    retrieval.add_argument("--retrieval", action="store_true", help="benchmark the retrieval signatures")
    retrieval.add_argument(
        "--ranker_dir", default="artifacts/demo/runs/coldstart", help="the ranker (run dir)"
    )
    retrieval.add_argument(
        "--retrieval_model_dir",
        default="artifacts/demo/runs/retrieval",
        help="the retrieval model (run dir; default the demo's, warm domains only: pass one fine-tuned on the "
        "cold-start domain to include it)",
    )
    retrieval.add_argument("--text_encoder", choices=["minilm", "tiny", "none"], default="minilm")
    retrieval.add_argument("--k", type=int, default=100, help="items retrieved (and ranked) per request")
    retrieval.add_argument(
        "--catalogue_sizes",
        default="100000,1000000",
        help="synthetic catalogue sizes measured after the real catalogue (comma separated; '' for none)",
    )
    retrieval.add_argument(
        "--scale_duration",
        type=float,
        default=15.0,
        help="seconds per synthetic-catalogue phase (default 15)",
    )
    retrieval.add_argument(
        "--no_unseen_queries",
        dest="unseen_queries",
        action="store_false",
        help="skip the real-catalogue row of search queries missing from the text table (encoder fallback)",
    )
    retrieval.add_argument("--deadline_s", type=float, default=10.0, help="per-request gRPC deadline")
    args = parser.parse_args(argv)
    if args.retrieval:
        args.samples_dir = args.samples_dir or "artifacts/demo/samples"
        return main_retrieval(args, argv)
    args.out = args.out or "benchmarks/results/serving.json"

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
        "command": command_line(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
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
