"""Benchmark: does Domain-Gating recover planted aspect informativeness? (a script, not a test)

    .venv/bin/python benchmarks/bench_gating.py                      # 3 gatings x 3 seeds, model defaults
    .venv/bin/python benchmarks/bench_gating.py --gate_scale 10 --vocab_min_count 2   # options are flags

The data are `tfsr.data.synthetic_records(aspect_signal=PLANTED)`: in each domain one aspect of the
item (and query) carries the latent factors and the other aspects are per-row noise (fresh ids,
random-factor text, random genres), see `PLANTED`. SRFoundation is trained on all six domains jointly
(written as gzip TFRecords, read with `tfsr.data.make_dataset`, vocabularies from the training rows as
`build_samples` makes them) with `gating` = domain, cls and mean, everything else equal, 3 seeds (the
seed fixes the synthetic world, the model's initialisation and the shuffle; the gatings of a seed see
the same data). Reported on held-out rows of the same world: per-domain AUC (mean ± std over seeds),
the paired difference domain − mean, and the learnt gate weights of the item entity (and of the query
in the search domain) averaged over each domain's rows.

Prints a table and writes benchmarks/results/gating.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.evaluation import auc, predict_dataset
from tfsr.features import FeatureSpec
from tfsr.layers import ASPECTS, ENTITIES
from tfsr.models import ModelConfig, build_model

import numpy as np
import tensorflow as tf

RESULTS = pathlib.Path(__file__).parent / "results"
SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=8)
PLANTED = data.PLANTED_ASPECTS
WORLD = {"num_users": 200, "num_items": 300, "num_queries": 50}
GATINGS = ("domain", "cls", "mean")
VOCAB_FEATURES = ("user_id", "item_id", "query_id", "item_genres", "item_decade")


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"


def vocabularies(records, min_count: int = 1) -> dict[str, list[str]]:
    """Values seen at least `min_count` times in the training rows, most frequent first (ties by value).

    `min_count=1` is what build_samples does. With 2 a fresh id (seen once) is out of vocabulary in
    training as at test, so the OOV row is trained (a learnt "new id" vector) instead of staying at
    its random initialisation until the test rows meet it.
    """
    counts = {f: collections.Counter() for f in VOCAB_FEATURES}
    for record in records:
        for feature in VOCAB_FEATURES:
            value = record.get(feature, "")
            counts[feature].update(v for v in (value if isinstance(value, list) else [value]) if v)
    vocabs = {
        f: [v for v, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        for f, c in counts.items()
    }
    return {f: values for f, values in vocabs.items() if values}  # a feature with none is hashed


def write_data(root: pathlib.Path, seed: int, train_rows: int, test_rows: int, min_count: int) -> dict:
    """Train / test TFRecords of one synthetic world and the training rows' vocabularies."""
    options = {"aspect_signal": PLANTED, **WORLD}
    train = data.write_synthetic_samples(root / "train", SPEC, train_rows, seed=seed, **options)
    test = data.write_synthetic_samples(
        root / "test", SPEC, test_rows, seed=seed, draw_seed=1_000 + seed, **options
    )
    vocabs = vocabularies(data.synthetic_records(SPEC, train_rows, seed=seed, **options), min_count)
    return {"train": train, "test": test, "vocabularies": vocabs}


def run(files: dict, gating: str, seed: int, args: argparse.Namespace) -> dict:
    """Trains one SRFoundation; returns per-domain AUCs and mean gate weights on the test rows."""
    tf.keras.utils.set_random_seed(seed)
    config = ModelConfig(
        "srfoundation",
        gating=gating,
        embedding_dim=16,
        adaptive_units=32,
        expert_units=(32,),
        tower_units=(16,),
        learning_rate=args.learning_rate,
        gate_scale=args.gate_scale,
        learn_gate_scale=not args.fixed_gate_scale,
        gate_init_stddev=args.gate_init_stddev,
    )
    model = build_model(config, SPEC, files["vocabularies"])
    model.compile()
    start = time.perf_counter()
    model.fit(
        data.make_dataset(files["train"], SPEC, args.batch_size, seed=seed), epochs=args.epochs, verbose=0
    )
    seconds = time.perf_counter() - start
    preds = predict_dataset(model, data.make_dataset(files["test"], SPEC, 4096, shuffle=False))
    domains = np.array([d.decode() for d in preds["domain"]])
    result = {
        "train_seconds": round(seconds, 1),
        "auc": {d: auc(preds["label"][domains == d], preds["ctr"][domains == d]) for d in PLANTED},
        "gate_weights": domain_gate_weights(preds),
        # the same on (the first 8,192) training rows: where ids are fresh, a training row's id is a
        # once-seen vocabulary entry and a test row's the OOV row, which the gate may weigh differently
        "train_gate_weights": domain_gate_weights(
            predict_dataset(model, data.make_dataset(files["train"], SPEC, 4096, shuffle=False), 2)
        ),
    }
    return result


def domain_gate_weights(preds: dict) -> dict:
    """`domain -> entity -> aspect -> mean gate weight` over the domain's rows (present entities only)."""
    domains = np.array([d.decode() for d in preds["domain"]])
    result = {}
    for domain in PLANTED:
        weights = preds["gate_weights"][domains == domain].mean(axis=0)  # [entity, aspect]
        result[domain] = {
            e: dict(zip(ASPECTS, map(float, weights[k]), strict=True))
            for k, e in enumerate(ENTITIES)
            if weights[k].sum() > 0
        }
    return result


def mean_std(values) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "values": [float(v) for v in values],
    }


def summarise(runs: dict) -> dict:
    """Per gating and domain: AUC and gate weights over seeds; the paired AUC differences to mean pooling."""
    summary = {}
    for gating in GATINGS:
        seeds = runs[gating]
        summary[gating] = {
            "auc": {d: mean_std([r["auc"][d] for r in seeds]) for d in PLANTED},
            "macro_auc": mean_std([np.mean(list(r["auc"].values())) for r in seeds]),
            "gate_weights": {
                d: {
                    e: {a: float(np.mean([r["gate_weights"][d][e][a] for r in seeds])) for a in ASPECTS}
                    for e in seeds[0]["gate_weights"][d]
                }
                for d in PLANTED
            },
        }
        if gating != "mean":
            summary[gating]["auc_minus_mean"] = {
                d: mean_std([r["auc"][d] - m["auc"][d] for r, m in zip(seeds, runs["mean"], strict=True)])
                for d in PLANTED
            }
    summary["domain_recovers_planting"] = {
        d: max(ASPECTS, key=summary["domain"]["gate_weights"][d]["item"].get) == planted
        for d, planted in PLANTED.items()
    }
    return summary


def table(summary: dict) -> str:
    def pm(stat):
        return f"{stat['mean']:.3f} ± {stat['std']:.3f}"

    def gates(gating, domain):
        item = summary[gating]["gate_weights"][domain]["item"]
        return " / ".join(f"{item[a]:.2f}" for a in ASPECTS)

    lines = [
        "| domain | planted | AUC domain | AUC cls | AUC mean | domain − mean (paired) "
        "| item gate id / text / sparse, domain | same, cls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, planted in PLANTED.items():
        lines.append(
            f"| {d} | {planted} | {pm(summary['domain']['auc'][d])} | {pm(summary['cls']['auc'][d])} "
            f"| {pm(summary['mean']['auc'][d])} | {summary['domain']['auc_minus_mean'][d]['mean']:+.4f} "
            f"± {summary['domain']['auc_minus_mean'][d]['std']:.4f} | {gates('domain', d)} | {gates('cls', d)} |"
        )
    lines.append(
        f"| macro | | {pm(summary['domain']['macro_auc'])} | {pm(summary['cls']['macro_auc'])} "
        f"| {pm(summary['mean']['macro_auc'])} | | | |"
    )
    query = summary["domain"]["gate_weights"]["search_tags"].get("query")
    if query:
        lines.append(
            f"\nsearch_tags query gate (domain gating) id / text: {query['id']:.2f} / {query['text']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_rows", type=int, default=24_000)
    parser.add_argument("--test_rows", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=ModelConfig.learning_rate)
    parser.add_argument("--gate_scale", type=float, default=ModelConfig.gate_scale)
    parser.add_argument("--fixed_gate_scale", action="store_true", help="learn_gate_scale=False")
    parser.add_argument("--gate_init_stddev", type=float, default=ModelConfig.gate_init_stddev)
    parser.add_argument(
        "--vocab_min_count",
        type=int,
        default=1,
        help="vocabulary cut; 1 = build_samples's, 2 = fresh ids are OOV in training too (see vocabularies)",
    )
    parser.add_argument("--out", default=str(RESULTS / "gating.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    runs = {g: [] for g in GATINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            files = write_data(
                pathlib.Path(tmp) / f"seed{seed}", seed, args.train_rows, args.test_rows, args.vocab_min_count
            )
            for gating in GATINGS:
                runs[gating].append(run(files, gating, seed, args))
                print(f"seed {seed} {gating}: {runs[gating][-1]['auc']}", file=sys.stderr, flush=True)
    summary = summarise(runs)
    report = {
        "benchmark": "domain gating vs cls / mean pooling on planted synthetic data (SRFoundation)",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {**vars(args), "world": WORLD, "planted": PLANTED, "text_dim": SPEC.text_dim},
        "seconds": round(time.perf_counter() - start, 1),
        "summary": summary,
        "runs": runs,
    }
    print(table(summary))
    print(f"domain gating's largest item weight is the planted aspect: {summary['domain_recovers_planting']}")
    print(f"total {report['seconds']:.0f} s")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
