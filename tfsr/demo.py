"""`make demo`: the main job end to end on the embedded default (MovieLens ml-latest-small).

preprocess (Beam) → pretrain on the warm domains → cold-start fine-tune → evaluate → two-tower retrieval
(trained from the pretrained ranker's encoders, fine-tuned on the cold-start domain, evaluated) → export one
TF Serving SavedModel with the ranker and an index of the whole catalogue → start the local gRPC model
server → for real queries and users, score hand-picked candidates, then retrieve from ALL catalogue movies
and rank (one ``retrieve_and_rank`` call each), and print the top items with their scores and aspect gate
weights.

Every stage runs through the `tfsr` command line, so the log shows the commands a user would type.
"""

from __future__ import annotations

import argparse
import collections
import logging
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys
import time

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfsr import cli, layout
from tfsr.datasets import movielens
from tfsr.datasets.locate import find_movielens

log = logging.getLogger("tfsr.demo")


def _tfsr(*args: str) -> None:
    log.info("$ tfsr %s", shlex.join(args))
    status = cli.main(list(args))
    if status:
        raise SystemExit(f"tfsr {args[0]} failed with exit status {status}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _candidates(data: movielens.MovieLensData, movie_ids, limit: int = 64) -> list[dict]:
    seen, out = set(), []
    for movie_id in movie_ids:
        if movie_id in data.movies and movie_id not in seen:
            seen.add(movie_id)
            out.append(movielens.item_features(data.movies[movie_id]))
        if len(out) == limit:
            break
    return out


def demo_requests(data: movielens.MovieLensData) -> list[tuple[str, dict, list[dict]]]:
    """A few real scoring requests: (title, context, candidates).

    Search: the most frequent tags as queries, candidates the movies anyone tagged with them plus
    popular movies. Recommendation: the most active user, candidates the most rated movies of the domain;
    the cold-start domain likewise.
    """
    popularity = collections.Counter(r.movie_id for r in data.ratings)
    popular = [m for m, _ in popularity.most_common()]
    tagged = collections.defaultdict(list)
    for t in data.tags:
        tagged[movielens.normalize_query(t.tag)].append(t.movie_id)
    top_user = collections.Counter(r.user_id for r in data.ratings).most_common(1)[0][0]
    requests = []
    for query, _ in collections.Counter(movielens.normalize_query(t.tag) for t in data.tags).most_common(2):
        context = {
            "domain": movielens.SEARCH_DOMAIN,
            "user_id": str(top_user),
            "query_id": query,
            "query_text": query,
        }
        requests.append((f"search '{query}'", context, _candidates(data, [*tagged[query], *popular])))
    for domain in ("rec_drama", movielens.COLD_DOMAIN):
        in_domain = [m for m in popular if movielens.rec_domain(data.movies[m].genres) == domain]
        context = {"domain": domain, "user_id": str(top_user)}
        requests.append((f"{domain} for user {top_user}", context, _candidates(data, in_domain)))
    return requests


def serve_and_score(
    export_base: pathlib.Path,
    name: str,
    data: movielens.MovieLensData,
    top_k: int,
    retrieve_k: int | None = None,
) -> None:
    """Starts `tfsr serve` as a separate process and scores the demo requests over gRPC: their hand-picked
    candidates, then (with `retrieve_k`) the `retrieve_k` movies retrieved from the whole catalogue for
    each context, ranked (signature ``retrieve_and_rank``)."""
    from serving.client import ScoringClient, format_ranking

    port = _free_port()
    args = ["serve", "--model_name", name, "--model_base_path", export_base / name, "--port", port]
    log.info("$ tfsr %s", shlex.join(map(str, args)))
    server = subprocess.Popen(cli.subprocess_command(*args))
    try:
        with ScoringClient(
            f"127.0.0.1:{port}", name, deadline_s=10.0, max_retries=8, backoff_s=0.5
        ) as client:
            try:
                client.wait_until_available(timeout_s=300, alive=lambda: server.poll() is None)
            except TimeoutError as err:
                raise SystemExit(f"model server did not come up: {err}") from err
            requests = demo_requests(data)
            for title, context, candidates in requests:
                rows = client.rank(context, candidates, top_k=top_k)
                titles = {c["item_id"]: c["item_title"] for c in candidates}
                print(f"\n== {title}: top {top_k} of {len(candidates)} candidates (one gRPC Predict call)")
                print(format_ranking([{**r, "title": titles[r["item_id"]][:24]} for r in rows], key="title"))
            if retrieve_k:
                titles = {str(m.movie_id): m.title for m in data.movies.values()}
                for title, context, _ in requests:
                    rows = client.retrieve_and_rank(context, retrieve_k)[:top_k]
                    print(
                        f"\n== {title}: top {top_k} of the {retrieve_k} movies retrieved from the whole "
                        "catalogue, ranked (one gRPC retrieve_and_rank call)"
                    )
                    named = [{**r, "title": titles.get(r["item_id"], r["item_id"])[:24]} for r in rows]
                    print(format_ranking(named, key="title"))
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsr.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        help="ml-latest-small directory (default: $TFSR_DATA_HOME or ~/.cache/tfsr, else the official download)",
    )
    parser.add_argument("--workdir", default="artifacts/demo", help="where samples, runs and reports go")
    parser.add_argument("--export_base", default="saved_models", help="TF Serving base directory")
    parser.add_argument("--name", default="tfsr_demo", help="served model name")
    parser.add_argument("--text_encoder", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument("--epochs", type=int, default=2, help="pretraining epochs")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--retrieval_epochs", type=int, default=3, help="retrieval model training epochs")
    parser.add_argument(
        "--retrieve_k",
        type=int,
        default=100,
        help="movies retrieved from the catalogue per request, then ranked",
    )
    parser.add_argument(
        "--max_user",
        type=int,
        help="run on a slice: the ratings of users with id <= this, 400 tags (a smoke run; default: all)",
    )
    parser.add_argument("--max_steps", type=int, help="cap on each training stage's steps (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = find_movielens(args.data, "--data")
    log.info("MovieLens ml-latest-small: %s", data)

    work = pathlib.Path(args.workdir)
    if args.max_user is not None:
        shutil.rmtree(work / "data", ignore_errors=True)
        data = movielens.write_slice(data, work / "data", max_user=args.max_user)
        log.info("a slice of it (users <= %d): %s", args.max_user, data)
    steps = ["--max_steps", str(args.max_steps)] if args.max_steps else []
    samples, pretrain, coldstart = work / "samples", work / "runs" / "pretrain", work / "runs" / "coldstart"
    retrieval, retrieval_coldstart = work / "runs" / "retrieval", work / "runs" / "retrieval_coldstart"
    started = time.monotonic()
    _tfsr(
        "preprocess",
        "--movielens_dir",
        str(data),
        "--output_dir",
        str(samples),
        "--text_encoder",
        args.text_encoder,
        "--overwrite",
    )
    _tfsr(
        "train",
        "--samples_dir",
        str(samples),
        "--output_dir",
        str(pretrain),
        "--epochs",
        str(args.epochs),
        "--fresh",
        *steps,
    )
    _tfsr(
        "finetune",
        "--samples_dir",
        str(samples),
        "--pretrained",
        str(pretrain),
        "--output_dir",
        str(coldstart),
        "--fresh",
        *steps,
    )
    _tfsr(
        "evaluate",
        "--model_dir",
        str(coldstart),
        "--samples_dir",
        str(samples),
        "--output_dir",
        str(work / "report"),
    )
    # two-tower retrieval: from the pretrained ranker's encoders, then the cold-start domain like the ranker
    _tfsr(
        "train",
        "--model_type",
        "retrieval",
        "--samples_dir",
        str(samples),
        "--output_dir",
        str(retrieval),
        "--pretrained",
        str(pretrain),
        "--epochs",
        str(args.retrieval_epochs),
        "--fresh",
        *steps,
    )
    _tfsr(
        "finetune",
        "--samples_dir",
        str(samples),
        "--pretrained",
        str(retrieval),
        "--output_dir",
        str(retrieval_coldstart),
        "--fresh",
        *steps,
    )
    _tfsr(
        "evaluate",
        "--model_dir",
        str(retrieval_coldstart),
        "--samples_dir",
        str(samples),
        "--output_dir",
        str(work / "report_retrieval"),
    )
    _tfsr(
        "export",
        "--model_dir",
        str(coldstart),
        "--retrieval_model_dir",
        str(retrieval_coldstart),
        "--samples_dir",
        str(samples),
        "--export_base",
        args.export_base,
        "--name",
        args.name,
        "--text_encoder",
        args.text_encoder,
    )
    # offline scoring of the cold-start domain's eval samples with the export (Beam RunInference)
    _tfsr(
        "batch-score",
        "--saved_model",
        str(pathlib.Path(args.export_base) / args.name),
        "--input",
        layout.split_pattern(samples, layout.COLDSTART_EVAL),
        "--output_dir",
        str(work / "batch_scores"),
        "--overwrite",
    )
    serve_and_score(
        pathlib.Path(args.export_base),
        args.name,
        movielens.read_movielens(data),
        args.top_k,
        retrieve_k=args.retrieve_k,
    )
    log.info(
        "demo finished in %.0f s; reports: %s, %s",
        time.monotonic() - started,
        work / "report" / "report.md",
        work / "report_retrieval" / "retrieval.md",
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command("python -m tfsr.demo", main, sys.argv[1:], verbose=False))
