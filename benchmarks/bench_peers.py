"""tfsr's defaults against outside peers on the same rows, in one run (issue 25, item 1).

    .venv/bin/python benchmarks/bench_peers.py --samples_dir artifacts/demo/samples      # 3 seeds
    .venv/bin/python benchmarks/bench_peers.py --samples_dir S --seeds 0 --no_tfsr        # peers only

On one samples directory (``tfsr preprocess`` output), each seed trains:

* **tfsr, defaults, as a user runs it**: ``tfsr train`` (SRFoundation) → ``tfsr finetune`` → ``tfsr
  evaluate``, and the same with ``--model_type deepfm``;
* **DeepCTR 0.9.4 DeepFM** (``deepctr.models.DeepFM``) on the ids tfsr's models see — user, item, domain,
  query id, decade as sparse features, genres as a mean-pooled varlen feature; embedding 16, batch 1024,
  Adam 1e-3, 3 epochs on every training row (``pretrain_train`` + ``pretrain_valid``; a stock model has no
  use for a validation slice), then 2 epochs on ``coldstart_finetune`` + ``coldstart_valid`` for the
  cold-start domain; no text features;
* **LightGBM 4** (untuned: 300 rounds, its default learning rate and leaves) on the same ids as categorical
  features, trained on every pretraining and fine-tuning row at once (trees cannot fine-tune).

Ids are indexed on the training rows (index 0 for values never seen there, as a LabelEncoder user does).
Everything is scored on ``pretrain_eval`` and ``coldstart_eval`` with :func:`tfsr.evaluation.evaluate_arrays`
(AUC, GAUC, log loss per domain). Writes ``benchmarks/results/peers.json`` and prints the table
(mean ± std over seeds) and renders ``docs/BENCHMARKS_PEERS.md`` from the JSON. DeepCTR and LightGBM are the ``bench``
extra of setup.py, in the lock; never a runtime dependency of tfsr.
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

import tfsr  # noqa: E402, F401  (Keras 2 before TensorFlow: DeepCTR then builds tf-keras models)
from tfsr import cli, evaluation, layout  # noqa: E402

import numpy as np  # noqa: E402

log = logging.getLogger("bench_peers")

PRETRAIN_ROWS = (layout.PRETRAIN_TRAIN, layout.PRETRAIN_VALID)
FINETUNE_ROWS = (layout.COLDSTART_FINETUNE, layout.COLDSTART_VALID)
EVAL_SPLITS = (layout.PRETRAIN_EVAL, layout.COLDSTART_EVAL)
ID_FEATURES = ("user_id", "item_id", "domain", "query_id", "item_decade")
GENRES = "item_genres"
MAX_GENRES = 10
PEER_EMBEDDING, PEER_BATCH, PEER_LR, PEER_EPOCHS, PEER_FT_EPOCHS = 16, 1024, 1e-3, 3, 2
GBDT_ROUNDS = 300


# ------------------------------------------------------------------------------------------ the rows
def read_rows(samples_dir: pathlib.Path, splits) -> dict[str, np.ndarray]:
    """The raw id features, label and genres of the given splits, as arrays (genres: [N, MAX_GENRES])."""
    import tensorflow as tf

    spec = layout.read_feature_spec(samples_dir)
    parse = spec.parse_spec(roles=("raw", "label", "meta"))  # varlen features parse to RaggedTensors
    files = [f for s in splits for f in sorted(tf.io.gfile.glob(layout.split_pattern(samples_dir, s)))]
    columns: dict[str, list] = {k: [] for k in (*ID_FEATURES, GENRES, "label")}
    if not files:
        return {k: np.array([]) for k in columns}
    data = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
    for batch in data.map(lambda s: tf.io.parse_example(s, parse)):
        for name in ID_FEATURES:
            columns[name].append(batch[name].numpy().astype(str))
        columns["label"].append(batch["label"].numpy())
        genres = batch[GENRES].to_tensor(default_value=b"", shape=[None, MAX_GENRES])
        columns[GENRES].append(genres.numpy().astype(str))
    return {k: np.concatenate(v) for k, v in columns.items()}


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["label"])]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Indexer:
    """Value -> index per feature, fitted on training rows; 0 is every value not seen there (and '')."""

    def __init__(self, rows: dict[str, np.ndarray]):
        self.vocab = {name: self._vocab(rows[name].ravel()) for name in (*ID_FEATURES, GENRES)}

    @staticmethod
    def _vocab(values: np.ndarray) -> dict[str, int]:
        return {v: i + 1 for i, v in enumerate(sorted(set(values.tolist()) - {""}))}

    def size(self, name: str) -> int:
        return len(self.vocab[name]) + 1

    def transform(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name in (*ID_FEATURES, GENRES):
            table = self.vocab[name]
            flat = np.array([table.get(v, 0) for v in rows[name].ravel().tolist()], dtype=np.int64)
            out[name] = flat.reshape(rows[name].shape)
        return out


# ------------------------------------------------------------------------------------------ the peers
def deepctr_deepfm(train, finetune, evals, indexer: Indexer, seed: int) -> dict[str, np.ndarray]:
    """DeepCTR's DeepFM: fit on the pretraining rows, continue on the fine-tuning rows; eval probs."""
    import tensorflow as tf
    from deepctr.feature_column import SparseFeat, VarLenSparseFeat, get_feature_names
    from deepctr.models import DeepFM

    tf.keras.utils.set_random_seed(seed)
    columns = [SparseFeat(n, indexer.size(n), embedding_dim=PEER_EMBEDDING) for n in ID_FEATURES]
    columns.append(
        VarLenSparseFeat(
            SparseFeat(GENRES, indexer.size(GENRES), embedding_dim=PEER_EMBEDDING), MAX_GENRES, "mean"
        )
    )
    model = DeepFM(columns, columns, task="binary", seed=seed)
    model.compile(tf.keras.optimizers.Adam(PEER_LR), "binary_crossentropy")
    names = get_feature_names(columns)

    def inputs(rows):
        x = indexer.transform(rows)
        return {n: x[n] for n in names}

    model.fit(
        inputs(train), train["label"], batch_size=PEER_BATCH, epochs=PEER_EPOCHS, verbose=0, shuffle=True
    )
    probs = {
        "pretrain": model.predict(inputs(evals[layout.PRETRAIN_EVAL]), batch_size=8192, verbose=0).ravel()
    }
    if len(finetune["label"]):
        model.fit(
            inputs(finetune),
            finetune["label"],
            batch_size=PEER_BATCH,
            epochs=PEER_FT_EPOCHS,
            verbose=0,
            shuffle=True,
        )
    probs["coldstart"] = model.predict(
        inputs(evals[layout.COLDSTART_EVAL]), batch_size=8192, verbose=0
    ).ravel()
    return probs


def lightgbm_ids(train, finetune, evals, indexer: Indexer, seed: int) -> dict[str, np.ndarray]:
    """LightGBM on the ids as categorical features (genres as MAX_GENRES columns), every training row."""
    import lightgbm as lgb

    def matrix(rows):
        x = indexer.transform(rows)
        return np.column_stack([x[n] for n in ID_FEATURES] + [x[GENRES][:, i] for i in range(MAX_GENRES)])

    rows = concat(train, finetune)
    categorical = list(range(len(ID_FEATURES) + MAX_GENRES))
    data = lgb.Dataset(matrix(rows), rows["label"], categorical_feature=categorical, free_raw_data=False)
    params = {"objective": "binary", "seed": seed, "verbose": -1, "num_threads": os.cpu_count() or 1}
    booster = lgb.train(params, data, num_boost_round=GBDT_ROUNDS)
    return {
        "pretrain": booster.predict(matrix(evals[layout.PRETRAIN_EVAL])),
        "coldstart": booster.predict(matrix(evals[layout.COLDSTART_EVAL])),
    }


def peer_report(probs: dict[str, np.ndarray], evals, cold_domains) -> dict:
    labels = np.concatenate([evals[s]["label"] for s in EVAL_SPLITS])
    domains = np.concatenate([evals[s]["domain"] for s in EVAL_SPLITS])
    users = np.concatenate([evals[s]["user_id"] for s in EVAL_SPLITS])
    scores = np.concatenate([probs["pretrain"], probs["coldstart"]])
    return evaluation.evaluate_arrays(labels, scores, domains, users=users, cold_domains=cold_domains)


# ------------------------------------------------------------------------------------------ tfsr itself
def _tfsr(*args: str) -> None:
    status = cli.main([str(a) for a in args])
    if status:
        raise SystemExit(f"tfsr {args[0]} failed with exit status {status}")


def tfsr_run(samples_dir: pathlib.Path, work: pathlib.Path, seed: int, train_flags: list[str]) -> dict:
    """`tfsr train` (default flags but the seed and `train_flags`) → `tfsr finetune` (defaults) →
    `tfsr evaluate`: what a user runs."""
    pretrain, coldstart, report = work / "pretrain", work / "coldstart", work / "report"
    _tfsr(
        "train",
        "--samples_dir",
        samples_dir,
        "--output_dir",
        pretrain,
        "--seed",
        seed,
        "--fresh",
        *train_flags,
    )
    _tfsr(
        "finetune",
        "--samples_dir",
        samples_dir,
        "--pretrained",
        pretrain,
        "--output_dir",
        coldstart,
        "--fresh",
    )
    _tfsr(
        "evaluate",
        "--model_dir",
        coldstart,
        "--samples_dir",
        samples_dir,
        "--output_dir",
        report,
        "--no_plots",
    )
    return json.loads((report / "report.json").read_text())


# name -> `tfsr train` flags. The defaults (what the targets are about), then the harness-gap ablations of
# tfsr's deepfm towards DeepCTR's setting (issue 25, item 5), one change each, then all of them at once.
NO_SELECTION = ["--epochs", "3", "--set", "validation_split=", "--set", "calibrate=false"]
TFSR_MODELS = {
    "tfsr SRFoundation (defaults)": [],
    "tfsr deepfm (defaults)": ["--model_type", "deepfm"],
    # every training row used (issue 25, item 3): validation picks epochs and calibration, then a refit
    "tfsr SRFoundation --refit": ["--refit"],
    "tfsr deepfm --refit": ["--model_type", "deepfm", "--refit"],
}
TFSR_ABLATIONS = {
    "tfsr deepfm, no text aspect": ["--model_type", "deepfm", "--set", "model.use_text=false"],
    "tfsr deepfm, embedding 16": ["--model_type", "deepfm", "--set", "model.embedding_dim=16"],
    "tfsr deepfm, 3 epochs, no selection or calibration": ["--model_type", "deepfm", *NO_SELECTION],
    "tfsr deepfm, all three (DeepCTR's setting but the valid rows)": [
        "--model_type",
        "deepfm",
        "--set",
        "model.use_text=false",
        "--set",
        "model.embedding_dim=16",
        *NO_SELECTION,
    ],
}


# ------------------------------------------------------------------------------------------ the table
def summary(report: dict, warm: list[str], search: list[str], cold: list[str]) -> dict[str, float]:
    domains = report["domains"]
    rec_warm = [d for d in warm if d not in search]
    return {
        "warm_macro_auc": float(np.mean([domains[d]["auc"] for d in warm])),
        "rec_mean_auc": float(np.mean([domains[d]["auc"] for d in rec_warm])),
        "search_auc": float(np.mean([domains[d]["auc"] for d in search])),
        "cold_auc": float(np.mean([domains[d]["auc"] for d in cold])),
        "warm_macro_gauc": float(
            np.mean([domains[d]["gauc"] for d in warm if domains[d]["gauc"] is not None])
        ),
        "cold_gauc": float(np.mean([domains[d]["gauc"] for d in cold if domains[d]["gauc"] is not None])),
        "worst_logloss_minus_const": float(
            max(domains[d]["logloss"] - domains[d]["logloss_const"] for d in [*warm, *cold])
        ),
    }


COLUMNS = [
    ("warm_macro_auc", "warm macro AUC"),
    ("rec_mean_auc", "mean of the rec AUCs"),
    ("search_auc", "search AUC"),
    ("cold_auc", "cold-start AUC"),
    ("warm_macro_gauc", "warm macro GAUC"),
    ("cold_gauc", "cold-start GAUC"),
    ("worst_logloss_minus_const", "worst log loss − constant"),
]


def render(results: dict) -> str:
    """The markdown table: one row per model, mean ± std over seeds."""
    lines = [
        "| model | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name, runs in results["models"].items():
        cells = [_cell([r["summary"][key] for r in runs]) for key, _ in COLUMNS]
        lines.append(f"| {name} ({len(runs)} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float]) -> str:
    values = np.array(values)
    return f"{values.mean():.4f} ± {values.std():.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def render_doc(results: dict) -> str:
    """docs/BENCHMARKS_PEERS.md: the summary table and AUC per domain, from peers.json."""
    domains = [*results["domains"]["warm"], *results["domains"]["cold"]]
    per_domain = ["| model | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    for name, runs in results["models"].items():
        per_domain.append(
            f"| {name} | " + " | ".join(_cell([r["auc"][d] for r in runs]) for d in domains) + " |"
        )
    return "\n".join(
        [
            "# tfsr's defaults against outside peers on the same rows",
            "",
            f"Rendered from `benchmarks/results/peers.json`, written by `{results['command']}` on "
            f"{results['date']} ({results['machine']}). Samples: `{results['samples_dir']}`, preprocessed with "
            f"the options {json.dumps(results['manifest_options'], sort_keys=True)}. Mean ± std over seeds "
            "(population std); what each model is and sees: the docstring of `benchmarks/bench_peers.py`.",
            "",
            "Warm domains on `pretrain_eval` (macro = the mean over the warm domains), the cold-start domain on "
            '`coldstart_eval` after fine-tuning. "worst log loss − constant": the largest gap, over every '
            "domain, between the model's log loss and that of always predicting the slice's positive rate "
            "(above 0: worse than the constant somewhere).",
            "",
            render(results),
            "",
            "## AUC per domain",
            "",
            *per_domain,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples_dir", required=True, help="a `tfsr preprocess` output directory")
    parser.add_argument("--work_dir", default="artifacts/bench_peers", help="tfsr runs go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no_tfsr", action="store_true", help="train the outside peers only")
    parser.add_argument(
        "--ablations", action="store_true", help="also the harness-gap ablations (first seed only)"
    )
    parser.add_argument("--only", help="run only the models whose name contains this text")
    parser.add_argument(
        "--merge", action="store_true", help="add to (replace the same models of) the existing --out JSON"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers.json"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "BENCHMARKS_PEERS.md"), help="markdown written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    samples = pathlib.Path(args.samples_dir)
    spec = layout.read_feature_spec(samples)
    warm = [d.name for d in spec.domains.warm()]
    cold = [d.name for d in spec.domains.cold()]
    search = [d.name for d in spec.domains.warm() if d.kind == "search"]

    train, finetune = read_rows(samples, PRETRAIN_ROWS), read_rows(samples, FINETUNE_ROWS)
    evals = {s: read_rows(samples, [s]) for s in EVAL_SPLITS}
    indexer = Indexer(concat(train, finetune))
    log.info(
        "rows: pretraining %d, fine-tuning %d, eval %s",
        len(train["label"]),
        len(finetune["label"]),
        {s: len(e["label"]) for s, e in evals.items()},
    )
    models: dict[str, list] = {}

    def record(name: str, seed: int, report: dict, seconds: float) -> None:
        row = {"seed": seed, "seconds": round(seconds, 1), "summary": summary(report, warm, search, cold)}
        row["auc"] = {d: m["auc"] for d, m in report["domains"].items()}
        models.setdefault(name, []).append(row)
        log.info(
            "%s seed %d: %s (%.0f s)",
            name,
            seed,
            {k: round(v, 4) for k, v in row["summary"].items()},
            seconds,
        )

    peers = {
        "DeepCTR 0.9.4 DeepFM (ids)": lambda seed: deepctr_deepfm(train, finetune, evals, indexer, seed),
        "LightGBM 4 (ids)": lambda seed: lightgbm_ids(train, finetune, evals, indexer, seed),
    }
    if args.ablations:  # what the validation carve-out costs a stock model: pretrain_train rows only
        carved = read_rows(samples, [layout.PRETRAIN_TRAIN])
        peers["DeepCTR DeepFM, pretrain_train rows only"] = lambda seed: deepctr_deepfm(
            carved, finetune, evals, indexer, seed
        )
    runs = {} if args.no_tfsr else {**TFSR_MODELS, **(TFSR_ABLATIONS if args.ablations else {})}
    if args.only:
        peers = {k: v for k, v in peers.items() if args.only in k}
        runs = {k: v for k, v in runs.items() if args.only in k}
    for seed in args.seeds:
        for name, peer in peers.items():
            started = time.perf_counter()
            probs = peer(seed)
            record(name, seed, peer_report(probs, evals, cold), time.perf_counter() - started)
        for name, flags in runs.items():
            if seed != args.seeds[0] and name in TFSR_ABLATIONS:
                continue  # ablations: the first seed only
            started = time.perf_counter()
            work = (
                pathlib.Path(args.work_dir) / f"{''.join(c if c.isalnum() else '_' for c in name)}_seed{seed}"
            )
            report = tfsr_run(samples, work, seed, flags)
            record(name, seed, report, time.perf_counter() - started)

    out = pathlib.Path(args.out)
    command = " ".join(["benchmarks/bench_peers.py", *(argv if argv is not None else sys.argv[1:])])
    if args.merge and out.exists():
        earlier = json.loads(out.read_text())
        models = {**earlier["models"], **models}
        runs = {**earlier.get("flags", {}), **runs}
        command = f"{earlier['command']}; then {command}"
    results = {
        "command": command,
        "flags": runs,
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "samples_dir": str(samples),
        "manifest_options": layout.read_manifest(samples).get("options", {}),
        "domains": {"warm": warm, "search": search, "cold": cold},
        "models": models,
    }
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    pathlib.Path(args.doc).write_text(render_doc(results), encoding="utf-8")
    print(render(results))
    print(f"wrote {args.out}, {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
