"""The paper study on MovieLens, in one command: baselines, ablations, freeze splits and cold start.

    .venv/bin/python benchmarks/paper_study.py                 # full study (~40 min on 2 CPU cores)
    .venv/bin/python benchmarks/paper_study.py --quick         # a smoke run (~5 min): tiny encoder, few steps
    .venv/bin/python benchmarks/paper_study.py --samples_dir artifacts/samples   # reuse preprocessed samples

What it does (fixed seeds throughout):

1. preprocesses ``../shared/data/ml-latest-small`` with the Beam job (``beam_jobs.build_samples``), unless
   ``--samples_dir`` names an existing samples directory;
2. **warm domains** (trained on ``pretrain_train``, evaluated on ``pretrain_eval``): one single-domain model
   per warm domain, SharedBottom, MMoE, PLE, STAR, DeepFM, DCN-v2 and SRFoundation (several seeds for
   SRFoundation, the single-domain models and the strongest simple baselines DeepFM and DCN-v2 — the
   headline rows). Every model selects its epoch on ``pretrain_valid`` (early stopping, best-epoch restore)
   and is calibrated per domain there; the evaluation split is never used for selection;
3. **ablations** of SRFoundation (one seed each): no text aspect; mean / cls / domain gating; no alignment,
   JS, MMD; the L2 interactions;
4. **cold start** (``coldstart_finetune`` → ``coldstart_eval``, selected on ``coldstart_valid``): a
   single-domain model trained on the small slice alone vs SRFoundation pretrained + fine-tuned with every
   pretrained weight frozen (one per pretraining seed), the fine-tuned DeepFM and DCN-v2, and the freeze
   splits none / L0 / L0+L1;
5. **search construction**: the search domain built as the hardest option (``--search_impressions
   same_tag``: every impression tagged with the same query) against the default engine-like impressions;
6. **no-training baselines**: the constant-prediction log loss floor of every slice, and for the search
   domain the cosine similarity of the query and title text embeddings as a score;
7. writes ``benchmarks/results/paper_study.json`` (every number), ``docs/BENCHMARKS_QUALITY.md`` (tables)
   and plots under ``docs/img/``.

This module is the entry point and the runner (preprocessing, training and evaluating each model); what it
runs is in ``study_plan.py``, the statistics in ``study_stats.py`` and the report in ``study_report.py``.
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
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import tfsr  # noqa: E402, F401  (Keras 2 before TensorFlow)

import numpy as np  # noqa: E402
from study_plan import (  # noqa: E402
    ABLATIONS,
    BASELINES,
    COLD_MAIN,
    DEFAULT_FREEZE,
    FREEZE_SPLITS,
    MAIN_MODEL,
    SEEDED_ABLATIONS,
    SEEDED_BASELINES,
    Budget,
    budget_from_args,
)
from study_report import plots, write_outputs  # noqa: E402
from study_stats import aggregate, run_prefix, targets  # noqa: E402

log = logging.getLogger("paper_study")


# --------------------------------------------------------------------------- running one model
class Study:
    def __init__(self, samples_dir: pathlib.Path, work_dir: pathlib.Path, budget: Budget, base_model: dict):
        from tfsr import layout

        self.samples_dir = samples_dir
        self.work_dir = work_dir
        self.budget = budget
        self.base_model = base_model
        self.spec = layout.read_feature_spec(samples_dir)
        self.warm = [d.name for d in self.spec.domains.warm()]
        self.cold = [d.name for d in self.spec.domains.cold()]
        self.runs: dict[str, dict] = {}
        self.pretrained: dict[str, Any] = {}

    def _cfg(self, name: str, **kw):
        from tfsr.training.config import TrainConfig

        out = self.work_dir / "runs" / name
        if out.exists():
            shutil.rmtree(out)  # the study always starts fresh: fixed seeds, comparable runs
        base = {
            "samples_dir": str(self.samples_dir),
            "output_dir": str(out),
            "batch_size": self.budget.batch_size,
            "epochs": self.budget.epochs,
            "max_steps": self.budget.max_steps,
            "log_every": 50,
            "checkpoint_every": 100000,
            "patience": self.budget.patience,
        }
        base.update(kw)
        return TrainConfig(**base).validate()

    def _evaluate(self, model, splits, domains=None):
        from tfsr import evaluation
        from tfsr.training import workflows

        preds = workflows.predict_splits(
            model,
            self.samples_dir,
            self.spec,
            splits,
            batch_size=4096,
            domains=domains,
            max_batches=self.budget.eval_max_batches,
        )
        return evaluation.evaluate_predictions(preds, self.spec)

    def _record(self, name: str, group: str, rep: dict, seconds: float, steps: int, extra=None):
        row = {
            "name": name,
            "group": group,
            "seconds": round(seconds, 1),
            "steps": steps,
            "domains": rep["domains"],
            "item_cold_start": rep.get("item_cold_start", {}),
            "gate_weights": rep.get("gate_weights", {}),
            "overall": rep.get("overall"),
        }
        row.update(extra or {})
        self.runs[name] = row
        aucs = " ".join(f"{d}={m['auc']:.4f}" for d, m in rep["domains"].items())
        log.info("[%s] %s: %s (%.0f s, %d steps)", group, name, aucs, seconds, steps)
        return row

    def _train_and_record(self, name: str, group: str, run, cfg, eval_split: str, domains, extra: dict):
        """Times `run(cfg)`, evaluates the trained model on `eval_split` and records the run."""
        t0 = time.perf_counter()
        result = run(cfg)
        seconds = time.perf_counter() - t0
        rep = self._evaluate(result["model"], [eval_split], domains=domains)
        steps = int(result["trainer"].step.numpy())
        row = self._record(name, group, rep, seconds, steps, {**extra, "history": result["history"]})
        return row, result

    def pretrain(self, name: str, group: str, model_overrides: dict, seed: int = 0, domains=None, keep=False):
        from tfsr.training import workflows

        cfg = self._cfg(name, model={**self.base_model, **model_overrides}, seed=seed, domains=domains)
        row, result = self._train_and_record(
            name,
            group,
            workflows.run_train,
            cfg,
            "pretrain_eval",
            domains or self.warm,
            {"model": cfg.model, "seed": seed},
        )
        if keep:
            self.pretrained[name] = result["model_path"]
        return row

    def _coldstart_cfg(self, name: str, seed: int, **kw):
        """Fine-tuning budget on the cold-start slice, shared by fine-tuning and its single-domain baseline."""
        return self._cfg(
            name,
            split="coldstart_finetune",
            batch_size=self.budget.ft_batch_size,
            epochs=self.budget.ft_epochs,
            max_steps=None,
            learning_rate=1e-3,
            seed=seed,
            log_every=10,
            validation_split="coldstart_valid",
            patience=self.budget.ft_patience,
            **kw,
        )

    def finetune(self, name: str, group: str, pretrained: str, freeze: list[str], seed: int = 0):
        from tfsr.training import workflows

        cfg = self._coldstart_cfg(name, seed, pretrained=str(pretrained), freeze=list(freeze))
        extra = {"freeze": list(freeze), "seed": seed, "pretrained": str(pretrained)}
        return self._train_and_record(
            name, group, workflows.run_finetune, cfg, "coldstart_eval", self.cold, extra
        )[0]

    def cold_single_domain(self, name: str, seed: int = 0):
        """A single-domain model trained on the cold-start slice alone (same batch size / epochs as fine-tuning)."""
        from tfsr.training import workflows

        model = {**self.base_model, "model_type": "single_domain"}
        cfg = self._coldstart_cfg(name, seed, model=model, domains=list(self.cold))
        extra = {"seed": seed, "model": cfg.model}
        return self._train_and_record(
            name, "cold_start", workflows.run_train, cfg, "coldstart_eval", self.cold, extra
        )[0]


# --------------------------------------------------------------------------- no-training baselines
def text_similarity_baseline(samples_dir, spec, domain: str) -> dict:
    """Cosine(query_text_embedding, item_title_embedding) as the score, on one domain's evaluation rows."""
    from tfsr import evaluation
    from tfsr.training import workflows

    ds = workflows.make_dataset(samples_dir, "pretrain_eval", spec, 4096, shuffle=False, domains=[domain])
    labels, scores, users = [], [], []
    for batch in ds:
        q = np.asarray(batch["query_text_embedding"])
        t = np.asarray(batch["item_title_embedding"])
        denom = np.linalg.norm(q, axis=1) * np.linalg.norm(t, axis=1)
        scores.append(np.where(denom > 0, (q * t).sum(axis=1) / np.maximum(denom, 1e-12), 0.0))
        labels.append(np.asarray(batch["label"]).reshape(-1))
        users.append(np.asarray(batch["user_id"]).reshape(-1))
    labels, scores, users = map(np.concatenate, (labels, scores, users))
    m = evaluation.binary_metrics(labels, (scores + 1) / 2, users)
    m["logloss"] = None  # a similarity is not a probability
    return m


# --------------------------------------------------------------------------- main
def preprocess(data_dir: pathlib.Path, out: pathlib.Path, text_encoder: str, *extra: str) -> pathlib.Path:
    from beam_jobs import build_samples

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    rc = build_samples.run(
        ["--movielens_dir", str(data_dir), "--output_dir", str(out), "--text_encoder", text_encoder, *extra]
    )
    if rc:
        raise RuntimeError(f"preprocessing {data_dir} failed (exit {rc})")
    log.info("preprocessed %s -> %s in %.0f s", data_dir, out, time.perf_counter() - t0)
    return out


def render_only(args) -> int:
    """Markdown + plots again from a results JSON (e.g. after changing the report's layout)."""
    import types

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = json.loads(pathlib.Path(args.results_json).read_text(encoding="utf-8"))
    runs = results["runs"]
    warm = results.get("warm_domains") or list(runs[f"{MAIN_MODEL}@seed0"]["domains"])
    cold = results.get("cold_domains") or sorted(
        {d for n, r in runs.items() if n.startswith("cold:") for d in r["domains"]}
    )
    results["warm_domains"], results["cold_domains"] = warm, cold
    study = types.SimpleNamespace(warm=warm, cold=cold, runs=runs, budget=Budget(**results["budget"]))
    img = pathlib.Path(args.img_dir)
    results["plots"] = plots(study, results["aggregate"], img)
    results["targets"] = targets(study, results["aggregate"], results.get("text_similarity"))
    write_outputs(study, results, args, time.perf_counter())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "ml-latest-small"))
    parser.add_argument("--samples_dir", help="reuse this samples directory instead of preprocessing")
    parser.add_argument("--work_dir", default=str(REPO / "artifacts" / "paper_study"))
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny encoder, few steps, 2 seeds")
    parser.add_argument("--text_encoder", help="override the budget's text encoder (tiny | minilm)")
    parser.add_argument("--seeds", type=int, help="number of seeds of the headline rows")
    parser.add_argument("--epochs", type=int, help="override pretraining epochs")
    parser.add_argument("--no_ablations", action="store_true")
    parser.add_argument("--results_json", default=str(REPO / "benchmarks" / "results" / "paper_study.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "BENCHMARKS_QUALITY.md"))
    parser.add_argument("--img_dir", default=str(REPO / "docs" / "img"))
    parser.add_argument(
        "--render_only",
        action="store_true",
        help="re-render the markdown and plots from --results_json without training",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        return render_only(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    budget = budget_from_args(args)
    if args.no_ablations:
        budget.ablations = False
    started = time.perf_counter()
    work = pathlib.Path(args.work_dir)
    if args.quick and args.results_json == parser.get_default("results_json"):
        args.results_json = str(work / "paper_study_quick.json")
        args.markdown = str(work / "BENCHMARKS_QUALITY_quick.md")
        args.img_dir = str(work / "img")
    samples = (
        pathlib.Path(args.samples_dir)
        if args.samples_dir
        else preprocess(
            pathlib.Path(args.data_dir), work / f"samples_{budget.text_encoder}", budget.text_encoder
        )
    )
    preprocess_s = time.perf_counter() - started
    study = Study(samples, work, budget, base_model={})
    seeds = list(budget.seeds)

    # warm domains: headline rows with several seeds
    for seed in seeds:
        study.pretrain(
            f"{MAIN_MODEL}@seed{seed}", "headline", {"model_type": MAIN_MODEL}, seed=seed, keep=True
        )
        for base in SEEDED_BASELINES:
            study.pretrain(f"{base}@seed{seed}", "headline", {"model_type": base}, seed=seed, keep=seed == 0)
        for d in study.warm:
            study.pretrain(
                f"single_domain@{d}@seed{seed}",
                "headline",
                {"model_type": "single_domain"},
                seed=seed,
                domains=[d],
            )
    for base in BASELINES:
        if base not in SEEDED_BASELINES:
            study.pretrain(f"{base}@seed0", "baseline", {"model_type": base}, seed=0)
    if budget.ablations:
        for label, overrides in ABLATIONS.items():
            for seed in seeds if label in SEEDED_ABLATIONS else [0]:
                study.pretrain(
                    f"ablation:{label}@seed{seed}",
                    "ablation",
                    {"model_type": MAIN_MODEL, **overrides},
                    seed=seed,
                )
    # cold start
    for seed in seeds:
        study.cold_single_domain(f"cold:single_domain@seed{seed}", seed=seed)
        study.finetune(
            f"{COLD_MAIN}@seed{seed}",
            "cold_start",
            study.pretrained[f"{MAIN_MODEL}@seed{seed}"],
            FREEZE_SPLITS[DEFAULT_FREEZE],
            seed=seed,
        )
    for base in SEEDED_BASELINES:
        study.finetune(
            f"cold:{base}_finetuned_{DEFAULT_FREEZE}@seed0",
            "cold_start",
            study.pretrained[f"{base}@seed0"],
            FREEZE_SPLITS[DEFAULT_FREEZE],
            seed=0,
        )
    for label, levels in FREEZE_SPLITS.items():
        if label != DEFAULT_FREEZE:
            study.finetune(
                f"cold:{MAIN_MODEL}_finetuned_{label}@seed0",
                "freeze_split",
                study.pretrained[f"{MAIN_MODEL}@seed0"],
                levels,
                seed=0,
            )
    construction = (
        search_construction_study(pathlib.Path(args.data_dir), work, budget)
        if budget.ablations and not args.samples_dir
        else None
    )

    # aggregation: single-domain rows merge into one "single_domain" row (each domain from its own model)
    def key(name):
        if name.startswith("single_domain@"):
            return "single_domain"
        return run_prefix(name)

    agg = aggregate(study.runs, key)
    agg.update(
        {
            f"{MAIN_MODEL}@seed0": aggregate(
                {n: r for n, r in study.runs.items() if n == f"{MAIN_MODEL}@seed0"}, lambda n: n
            )[f"{MAIN_MODEL}@seed0"]
        }
    )
    agg.update(
        aggregate({n: r for n, r in study.runs.items() if n.startswith("cold:")}, lambda n: n.split("@")[0])
    )
    ts = None
    search = [d.name for d in study.spec.domains.warm() if d.kind == "search"]
    if search:
        ts = text_similarity_baseline(samples, study.spec, search[0])
        ts["domain"] = search[0]
    img = pathlib.Path(args.img_dir)
    results = {
        "command": "python benchmarks/paper_study.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "tfsr_version": tfsr.__version__,
        "budget": dataclasses.asdict(budget),
        "samples_dir": str(samples),
        "preprocess_seconds": round(preprocess_s, 1),
        "warm_domains": study.warm,
        "cold_domains": study.cold,
        "runs": study.runs,
        "aggregate": agg,
        "text_similarity": ts,
        "search_construction": construction,
    }
    results["targets"] = targets(study, agg, ts)
    results["plots"] = plots(study, agg, img)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(study, results, args, started)
    print(f"paper study done in {results['total_seconds'] / 60:.1f} min; see {args.markdown}")
    return 0


def search_construction_study(data_dir: pathlib.Path, work: pathlib.Path, budget: Budget) -> dict:
    """The search domain built the hardest way (`same_tag`: every impression tagged with the query by
    someone) beside the default: SRFoundation, the seeded baselines and text similarity, seed 0."""
    samples = preprocess(
        data_dir,
        work / f"samples_{budget.text_encoder}_same_tag",
        budget.text_encoder,
        "--search_impressions",
        "same_tag",
    )
    study = Study(samples, work / "same_tag", budget, base_model={})
    search = [d.name for d in study.spec.domains.warm() if d.kind == "search"]
    out = {"samples_dir": str(samples), "domain": search[0], "models": {}}
    for model_type in (MAIN_MODEL, *SEEDED_BASELINES):
        row = study.pretrain(
            f"same_tag:{model_type}@seed0", "search_construction", {"model_type": model_type}, domains=None
        )
        out["models"][model_type] = row["domains"][search[0]]
    out["text_similarity"] = text_similarity_baseline(samples, study.spec, search[0])
    return out


if __name__ == "__main__":
    sys.exit(main())
