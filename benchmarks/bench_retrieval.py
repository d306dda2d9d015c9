"""Retrieval quality over the whole catalogue: the foundation two-tower vs the plain id two-tower vs popularity.

    .venv/bin/python benchmarks/bench_retrieval.py --samples_dir artifacts/demo/samples \\
        --ranker artifacts/demo/runs/pretrain                      # the issue-15 table
    .venv/bin/python benchmarks/bench_retrieval.py --samples_dir ... --variants retrieval id_two_tower --epochs 2

Trains each variant with the same stages the CLI runs (``tfsr.training.workflows.run_train`` on the warm
domains of ``pretrain_train``, model selection on ``pretrain_valid``'s Recall@100, then ``run_finetune`` on
``coldstart_finetune`` with every pretrained weight frozen: the new domain learns its gates and its domain
vector), evaluates them together (``tfsr.training.retrieval.run_evaluate``: every held-out click of
``pretrain_eval`` / ``coldstart_eval`` a query over all catalogue items, the user's earlier clicks left
out, the popularity baseline beside) and prints the table; JSON to ``benchmarks/results/retrieval.json``.

Variants (``--variants``): ``retrieval`` (foundation encoders, fresh), ``retrieval_from_ranker``
(initialised from ``--ranker``'s L0 encoders and context gates), ``retrieval_no_correction`` (without the
sampling-bias correction), ``id_two_tower`` (ids only, TFRS-tutorial style).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tfsr  # noqa: E402, F401  (Keras 2 before TensorFlow)

log = logging.getLogger("bench_retrieval")

VARIANTS = {
    "retrieval": {"model": {"model_type": "retrieval"}},
    "retrieval_from_ranker": {"model": {"model_type": "retrieval"}, "from_ranker": True},
    "retrieval_no_correction": {"model": {"model_type": "retrieval", "sampling_bias_correction": False}},
    "id_two_tower": {"model": {"model_type": "id_two_tower"}},
}


def train_variant(name: str, args, work: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """Pretrains then fine-tunes one variant; returns the fine-tuned run directory and the timings."""
    from tfsr.training.config import FINETUNE_DEFAULTS, TrainConfig
    from tfsr.training.workflows import run_finetune, run_train

    variant = VARIANTS[name]
    model = {**variant["model"], **({"tower_units": args.tower_units} if args.tower_units else {})}
    pretrain = TrainConfig(
        samples_dir=args.samples_dir,
        output_dir=str(work / name / "pretrain"),
        model=model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        pretrained=args.ranker if variant.get("from_ranker") else None,
    )
    started = time.perf_counter()
    run_train(pretrain)
    pretrain_s = time.perf_counter() - started
    finetune = TrainConfig(
        **{
            **FINETUNE_DEFAULTS,
            "samples_dir": args.samples_dir,
            "output_dir": str(work / name / "coldstart"),
            "pretrained": pretrain.output_dir,
            "seed": args.seed,
            "epochs": args.finetune_epochs,
        }
    )
    started = time.perf_counter()
    run_finetune(finetune)
    return pathlib.Path(finetune.output_dir), {
        "pretrain_seconds": round(pretrain_s, 1),
        "finetune_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples_dir", required=True, help="a `tfsr preprocess` output with items/")
    parser.add_argument("--ranker", help="a pretrained ranker run (for retrieval_from_ranker)")
    parser.add_argument(
        "--variants", nargs="+", default=["retrieval", "retrieval_from_ranker", "id_two_tower"]
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune_epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--tower_units", type=int, nargs="+", help="override the towers' widths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="artifacts/bench_retrieval")
    parser.add_argument("--results_json", default=str(REPO / "benchmarks" / "results" / "retrieval.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    if "retrieval_from_ranker" in args.variants and not args.ranker:
        parser.error("retrieval_from_ranker needs --ranker")

    from tfsr.training import retrieval

    work = pathlib.Path(args.workdir)
    runs, timings = {}, {}
    for name in args.variants:
        log.info("training %s", name)
        runs[name], timings[name] = train_variant(name, args, work)
    first, *others = args.variants
    rep = retrieval.run_evaluate(
        runs[first], args.samples_dir, work / "report", compare={n: runs[n] for n in others}, name=first
    )
    print(retrieval.format_report(rep), end="")
    output = {
        "benchmark": "retrieval",
        "command": " ".join(["python", "benchmarks/bench_retrieval.py", *(argv or sys.argv[1:])]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("results_json",)},
        "timings": timings,
        "report": rep,
    }
    path = pathlib.Path(args.results_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
