"""The paper study's report: the markdown ``docs/BENCHMARKS_QUALITY.md`` and the plots under ``docs/img``.

Renders the results that ``paper_study.py`` collected (and ``study_stats`` summarised) and writes them with the
results JSON (``write_outputs``); ``paper_study.py --render_only`` calls it again on a saved JSON.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np
from study_plan import BASELINES, COLD_MAIN, MAIN_MODEL
from study_stats import diagnostics, mean_std, run_prefix

if TYPE_CHECKING:
    from paper_study import Study

REPO = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("paper_study")


def _pm(mean, std, digits=4):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if not std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _rel(path) -> str:
    try:
        return str(pathlib.Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_outputs(study: Study, results: dict, args, started: float) -> None:
    from tfsr import report

    res_path = pathlib.Path(args.results_json)
    report.dump_json(results, res_path)
    img = pathlib.Path(args.img_dir)
    img.mkdir(parents=True, exist_ok=True)
    md = render_markdown(
        study, results, img, args, results.get("total_seconds") or (time.perf_counter() - started)
    )
    pathlib.Path(args.markdown).write_text(md, encoding="utf-8")
    log.info("wrote %s, %s and plots in %s", res_path, args.markdown, img)


def render_markdown(study: Study, results: dict, img: pathlib.Path, args, duration: float) -> str:
    from tfsr import report

    warm, cold = study.warm, study.cold
    agg = results["aggregate"]
    b = study.budget
    md_dir = pathlib.Path(args.markdown).resolve().parent
    rel = os.path.relpath(img.resolve(), md_dir)
    lines = [
        "# Quality benchmark: the paper study on MovieLens",
        "",
        f"Produced by `{results['command']}` in {duration / 60:.1f} min (Beam preprocessing "
        f"{results.get('preprocess_seconds', 0) / 60:.1f} min of it) on {results['machine']} "
        f"({results['date']}). All numbers: `{_rel(args.results_json)}`.",
        "",
        f"Settings: text encoder `{b.text_encoder}`; pretraining batch {b.batch_size}, {b.epochs} epoch(s)"
        + (f", at most {b.max_steps} steps" if b.max_steps else "")
        + f"; fine-tuning / cold-start training batch {b.ft_batch_size}, {b.ft_epochs} epochs; "
        f"headline seeds {list(b.seeds)} (mean ± sample std over seeds); other rows seed 0. "
        "Data: `ml-latest-small` through `beam_jobs.build_samples` (per-user chronological split; see docs/DATA.md).",
        "",
        "`logloss_const` is the log loss of always predicting the slice's own positive rate (a floor any useful "
        "model must beat). AUC is computed with average ranks for ties; GAUC is the impression-weighted mean of "
        "per-user AUCs over users with both classes.",
        "",
    ]

    def auc_table(keys, domains, title, metric="auc"):
        header = ["model", *domains, "mean"]
        rows = []
        for key in keys:
            if key not in agg:
                continue
            cells = [key]
            means = []
            for d in domains:
                m = agg[key].get(d, {}).get(metric, {})
                cells.append(_pm(m.get("mean"), m.get("std")))
                if m.get("mean") is not None:
                    means.append(m["mean"])
            cells.append(f"{np.mean(means):.4f}" if len(means) == len(domains) else "–")
            rows.append(cells)
        return [f"### {title}", "", report.markdown_table(header, rows), ""]

    warm_keys = ["single_domain", *BASELINES, MAIN_MODEL]
    lines += ["## Warm domains (pretrain_eval)", ""]
    lines += auc_table(warm_keys, warm, "AUC")
    lines += auc_table(warm_keys, warm, "GAUC", metric="gauc")
    lines += auc_table(warm_keys, warm, "Log loss", metric="logloss")
    floor = {d: study.runs[next(iter(study.runs))]["domains"].get(d, {}).get("logloss_const") for d in warm}
    lines += [
        "Constant-prediction log loss floor: "
        + ", ".join(f"{d} {v:.4f}" for d, v in floor.items() if v is not None),
        "",
    ]
    if results.get("text_similarity"):
        ts = results["text_similarity"]
        lines += [
            f"No-training text-similarity baseline on `{ts['domain']}` (cosine of query and title "
            f"embeddings): AUC {ts['auc']:.4f}, GAUC {ts['gauc'] if ts['gauc'] is None else round(ts['gauc'], 4)}.",
            "",
        ]
    sc = results.get("search_construction")
    if sc:
        d = sc["domain"]
        rows = []
        for model_type, metrics in sc["models"].items():
            engine = study.runs.get(f"{model_type}@seed0", {}).get("domains", {}).get(d, {})
            for label, m in (("engine (default)", engine), ("same_tag", metrics)):
                rows.append(
                    [
                        label,
                        model_type,
                        *(_pm(m.get(k), None) for k in ("auc", "gauc", "logloss", "logloss_const")),
                    ]
                )
        ts = results.get("text_similarity") or {}
        for label, m in (("engine (default)", ts), ("same_tag", sc["text_similarity"])):
            rows.append(
                [
                    label,
                    "text similarity (no training)",
                    _pm(m.get("auc"), None),
                    _pm(m.get("gauc"), None),
                    "–",
                    "–",
                ]
            )
        lines += [
            f"## Search construction: `{d}` from engine-like impressions vs the hardest `same_tag` (seed 0)",
            "",
            report.markdown_table(
                ["construction", "model", "AUC", "GAUC", "log loss", "logloss_const"], rows
            ),
            "",
        ]
    ablation_keys = [k for k in agg if k.startswith("ablation:")]
    if ablation_keys:
        lines += [
            "## Ablations of SRFoundation (warm domains; seed 0, `gating=mean` with every seed beside the "
            "headline row)",
            "",
        ]
        lines += auc_table([MAIN_MODEL, f"{MAIN_MODEL}@seed0", *ablation_keys], warm, "AUC")
        lines += auc_table([MAIN_MODEL, "ablation:gating=mean"], warm, "GAUC", metric="gauc")
    lines += ["## Cold start (`" + "`, `".join(cold) + "`: coldstart_finetune → coldstart_eval)", ""]
    cold_keys = [k for k in agg if k.startswith("cold:")]
    rows = []
    for key in cold_keys:
        for d in cold:
            m = agg[key].get(d, {})
            ics = [
                study.runs[n]["item_cold_start"].get(d, {}).get("auc")
                for n in study.runs
                if run_prefix(n) == key
            ]
            ics_mean, ics_std = mean_std(ics)
            rows.append(
                [
                    key.removeprefix("cold:"),
                    _pm(m["auc"]["mean"], m["auc"]["std"]),
                    _pm(m["gauc"]["mean"], m["gauc"]["std"]),
                    _pm(m["logloss"]["mean"], m["logloss"]["std"]),
                    m["logloss_const"]["mean"],
                    _pm(ics_mean, ics_std),
                    m["auc"]["n"],
                ]
            )
    lines += [
        report.markdown_table(
            ["model", "AUC", "GAUC", "log loss", "logloss_const", "AUC item-cold", "seeds"], rows
        ),
        "",
    ]
    lines += ["## Targets (the paper's direction) and what we measured", ""]
    lines += [f"- {t['target']}: **{t['verdict']}** — {t['detail']}" for t in results["targets"]]
    notes = diagnostics(study, results)
    if notes:
        lines += ["", "## Observations computed from these runs", ""]
        lines += [f"- {n}" for n in notes]
    lines += ["", "## Plots", ""]
    for name, path in results["plots"].items():
        lines.append(f"![{name}]({rel}/{pathlib.Path(path).name})")
    lines += [
        "",
        "## Run times",
        "",
        report.markdown_table(
            ["run", "steps", "seconds (train)"],
            [[n, r["steps"], f"{r['seconds']:.0f}"] for n, r in study.runs.items()],
        ),
        "",
    ]
    return "\n".join(lines) + "\n"


def plots(study: Study, agg: dict, img: pathlib.Path) -> dict[str, str]:
    from tfsr import report

    out = {}
    keys = [k for k in ["single_domain", *BASELINES, MAIN_MODEL] if k in agg]
    vals = {k: {d: agg[k][d]["auc"]["mean"] for d in study.warm if d in agg[k]} for k in keys}
    errs = {k: {d: agg[k][d]["auc"]["std"] for d in study.warm if d in agg[k]} for k in keys}
    out["AUC per warm domain"] = str(
        report.plot_metric_bars(
            vals,
            img / "paper_study_auc_warm.png",
            "AUC",
            errs,
            title="Warm domains: AUC per model (mean ± std)",
        )
    )
    abl = [k for k in agg if k.startswith("ablation:")]
    if abl:
        keys = [f"{MAIN_MODEL}@seed0", *abl]
        vals = {
            k: {d: agg[k][d]["auc"]["mean"] for d in study.warm if d in agg.get(k, {})}
            for k in keys
            if k in agg
        }
        out["Ablations"] = str(
            report.plot_metric_bars(
                vals, img / "paper_study_ablations.png", "AUC", title="SRFoundation ablations (seed 0)"
            )
        )
    cold_keys = [k for k in agg if k.startswith("cold:")]
    if cold_keys and study.cold:
        vals = {
            k.removeprefix("cold:"): {d: agg[k][d]["auc"]["mean"] for d in study.cold if d in agg[k]}
            for k in cold_keys
        }
        errs = {
            k.removeprefix("cold:"): {d: agg[k][d]["auc"]["std"] for d in study.cold if d in agg[k]}
            for k in cold_keys
        }
        out["Cold start"] = str(
            report.plot_metric_bars(
                vals, img / "paper_study_cold_start.png", "AUC", errs, title="Cold-start domain AUC"
            )
        )
    gates = {}
    for name in (f"{MAIN_MODEL}@seed0", f"{COLD_MAIN}@seed0"):
        if name in study.runs:
            gates.update(study.runs[name]["gate_weights"])
    if gates:
        out["Gate weights"] = str(
            report.plot_gate_heatmaps(
                gates,
                img / "paper_study_gate_weights.png",
                title="SRFoundation aspect gate weights per domain",
            )
        )
    hist = {
        n: r["history"]
        for n, r in study.runs.items()
        if n in (f"{MAIN_MODEL}@seed0", f"{COLD_MAIN}@seed0", "cold:single_domain@seed0") and r.get("history")
    }
    if hist:
        out["Training curves"] = str(
            report.plot_training_curves(hist, img / "paper_study_training_curves.png")
        )
    return out
