"""The paper study's statistics: from recorded runs to numbers and verdicts, no rendering.

Means and sample stds over seeds (``aggregate``: per configuration and domain), the targets of issue 12 with
their verdicts (``targets``) and the diagnostics read beside the tables (``diagnostics``,
``best_epochs_by_domain``). ``study`` is a ``paper_study.Study`` or anything with its ``warm``, ``cold`` and
``runs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from study_plan import BASELINES, COLD_MAIN, MAIN_MODEL

if TYPE_CHECKING:
    from paper_study import Study


def mean_std(values):
    """(mean, sample std) of the finite values, std 0.0 for one value, (None, None) for none."""
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)


def aggregate(runs: dict, prefix_of) -> dict:
    """{label: {domain: {metric: (mean, std, n)}}} grouping runs by `prefix_of(name)`."""
    groups: dict[str, list[dict]] = {}
    for name, row in runs.items():
        key = prefix_of(name)
        if key:
            groups.setdefault(key, []).append(row)
    out = {}
    for key, rows in groups.items():
        domains = {d for r in rows for d in r["domains"]}
        out[key] = {}
        for d in domains:
            out[key][d] = {}
            for metric in ("auc", "gauc", "logloss", "logloss_const"):
                mean, std = mean_std([r["domains"].get(d, {}).get(metric) for r in rows])
                out[key][d][metric] = {"mean": mean, "std": std, "n": len(rows)}
    return out


def run_prefix(name: str) -> str:
    """Run name -> aggregation key: seeds of one configuration share a key."""
    if name.startswith("single_domain@"):
        return "single_domain@" + name.split("@")[1]
    return name.split("@")[0]


def best_epochs_by_domain(study, prefix: str) -> dict | None:
    """Per seed of ``prefix``: the epoch of each warm domain's best validation AUC and the epoch kept."""
    seeds, kept, domains = [], [], {d: [] for d in study.warm}
    for name, run in sorted(study.runs.items()):
        if run_prefix(name) != prefix:
            continue
        val = [e for e in run.get("history", []) if "val_auc" in e]
        if not val:
            continue
        seeds.append(run.get("seed"))
        kept.append(max(val, key=lambda e: e["val_auc"])["epoch"])
        for d in study.warm:
            scored = [e for e in val if f"val_{d}_auc" in e]
            domains[d].append(max(scored, key=lambda e: e[f"val_{d}_auc"])["epoch"] if scored else "–")
    return {"seeds": seeds, "kept": kept, "domains": domains} if seeds else None


def diagnostics(study, results: dict) -> list[str]:
    """Facts worth reading beside the tables, computed from the runs (no judgement by hand)."""
    notes = []
    agg = results["aggregate"]
    main = agg.get(MAIN_MODEL, {})
    stds = [main[d]["auc"]["std"] for d in study.warm if d in main and main[d]["auc"]["std"] is not None]
    if stds:
        notes.append(
            "Seed noise: SRFoundation's AUC std over seeds per warm domain is "
            + ", ".join(f"{d} {main[d]['auc']['std']:.4f}" for d in study.warm if d in main)
            + "; single-seed differences smaller than about twice that are not distinguishable from noise."
        )
    peaks = best_epochs_by_domain(study, MAIN_MODEL)
    if peaks:
        notes.append(
            "Validation AUC peaks at different epochs per domain ("
            + f"{MAIN_MODEL}, seeds {'/'.join(str(s) for s in peaks['seeds'])}): "
            + ", ".join(f"{d} epoch {'/'.join(map(str, e))}" for d, e in peaks["domains"].items())
            + f"; the checkpoint kept (best macro `val_auc`) is epoch {'/'.join(map(str, peaks['kept']))}. "
            "One checkpoint serves every domain, so a domain that over-fits early is traded against those "
            "still improving, whereas each single-domain model stops at its own best epoch."
        )
    for name in (f"{MAIN_MODEL}@seed0", f"{COLD_MAIN}@seed0"):
        gates = study.runs.get(name, {}).get("gate_weights", {})
        devs = []
        for g in gates.values():
            for row in g["mean"]:
                present = [w for w in row if w > 1e-6]
                if len(present) > 1:
                    devs.append(max(abs(w - 1.0 / len(present)) for w in present))
        if devs:
            notes.append(
                f"Gate weights of `{name}` deviate from mean pooling (1/#present aspects) by at most "
                f"{max(devs):.4f}: "
                + (
                    "the new domain's own L1 rows train while the pretrained L1 stays frozen, yet on this "
                    "small slice its gate stayed close to its zero initialisation (mean pooling)."
                    if name.startswith("cold:") and max(devs) < 0.02
                    else "the aspect gates barely moved from their zero initialisation in this budget, so the "
                    "gating ablation cannot show a difference."
                    if max(devs) < 0.02
                    else "the gates learnt domain-specific weightings."
                )
            )
    ts = results.get("text_similarity")
    if ts and ts.get("auc") is not None:
        notes.append(
            f"The no-training text-similarity score reaches AUC {ts['auc']:.4f} on `{ts['domain']}`"
            + (
                ": below chance, the negatives match the query as well as the click does."
                if ts["auc"] < 0.5
                else "."
            )
        )
    for key in agg:
        for d, m in agg[key].items():
            ll, floor = m["logloss"]["mean"], m["logloss_const"]["mean"]
            if (
                ll is not None
                and floor is not None
                and ll > floor
                and (d in study.cold or key.startswith("cold:"))
            ):
                notes.append(
                    f"`{key}` on `{d}`: log loss {ll:.4f} above the constant floor {floor:.4f}: calibrated on "
                    "`coldstart_valid`, whose click rate and users differ from the evaluation slice's."
                )
    return notes


def _target(target: str, ok: bool, detail: str, failing: str = "") -> dict:
    return {
        "target": target,
        "verdict": "met" if ok else "not met" + (f" on {failing}" if failing else ""),
        "detail": detail,
    }


def _domain_mean(agg: dict, key: str, domains, metric: str) -> float | None:
    values = [agg.get(key, {}).get(d, {}).get(metric, {}).get("mean") for d in domains]
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def targets(study: Study, agg: dict, text_similarity: dict | None = None) -> list[dict]:
    """The targets of issue 12, each with its verdict and the numbers behind it."""
    out = []
    warm, main = study.warm, agg.get(MAIN_MODEL, {})
    baselines = [k for k in ("single_domain", *BASELINES) if k in agg]
    search = [d for d in warm if d.startswith("search")]
    rec = [d for d in warm if d not in search]
    if main and baselines:
        for metric in ("auc", "gauc"):
            mine = _domain_mean(agg, MAIN_MODEL, warm, metric)
            best_value, best_key = max((_domain_mean(agg, k, warm, metric) or 0.0, k) for k in baselines)
            out.append(
                _target(
                    f"SRFoundation >= the best baseline on mean warm {metric.upper()}",
                    mine is not None and mine >= best_value,
                    f"{mine:.4f} vs {best_value:.4f} ({best_key}; {mine - best_value:+.4f})",
                )
            )
        gaps = {}
        for d in rec:
            cands = [
                (agg[k][d]["auc"]["mean"], k)
                for k in baselines
                if agg[k].get(d, {}).get("auc", {}).get("mean")
            ]
            best_value, best_key = max(cands)
            gaps[d] = (main[d]["auc"]["mean"] - best_value, best_key)
        out.append(
            _target(
                "each rec domain's SRFoundation AUC within 0.002 of the best baseline or better",
                all(g >= -0.002 for g, _ in gaps.values()),
                "; ".join(f"{d} {g:+.4f} vs {k}" for d, (g, k) in gaps.items()),
                ", ".join(d for d, (g, _) in gaps.items() if g < -0.002),
            )
        )
        for d in search:
            m = main[d]["auc"]
            best_value, best_key = max((agg[k][d]["auc"]["mean"], k) for k in baselines if d in agg[k])
            out.append(
                _target(
                    f"{d}: SRFoundation AUC >= best baseline + 0.01",
                    m["mean"] >= best_value + 0.01,
                    f"{m['mean']:.4f} vs {best_value:.4f} ({best_key}; {m['mean'] - best_value:+.4f})",
                )
            )
            if text_similarity and text_similarity.get("auc") is not None:
                ts = text_similarity["auc"]
                out.append(
                    _target(
                        f"{d}: SRFoundation AUC >= text similarity + 0.05",
                        m["mean"] >= ts + 0.05,
                        f"{m['mean']:.4f} vs {ts:.4f} ({m['mean'] - ts:+.4f})",
                    )
                )
            out.append(
                _target(
                    f"{d}: SRFoundation AUC seed std <= 0.01",
                    (m["std"] or 0.0) <= 0.01,
                    f"std {m['std'] or 0:.4f}",
                )
            )
        over = {
            d: (main[d]["logloss"]["mean"], main[d]["logloss_const"]["mean"])
            for d in warm
            if main[d]["logloss"]["mean"] is not None
            and main[d]["logloss"]["mean"] > main[d]["logloss_const"]["mean"]
        }
        out.append(
            _target(
                "SRFoundation calibrated: log loss <= the constant predictor's in every warm domain",
                not over,
                "; ".join(f"{d} {a:.4f} > {b:.4f}" for d, (a, b) in over.items())
                or "every domain below its floor",
                ", ".join(over),
            )
        )
    for cold in study.cold:
        ft, sd = agg.get(COLD_MAIN, {}).get(cold), agg.get("cold:single_domain", {}).get(cold)
        if ft and sd:
            for metric in ("auc", "gauc"):
                a, b = ft[metric]["mean"], sd[metric]["mean"]
                out.append(
                    _target(
                        f"cold start ({cold}): fine-tuned SRFoundation >= single-domain + 0.01 {metric.upper()}",
                        a >= b + 0.01,
                        f"{a:.4f} vs {b:.4f} ({a - b:+.4f}; std {ft[metric]['std'] or 0:.4f} / {sd[metric]['std'] or 0:.4f})",
                    )
                )
            others = {
                k: agg[k][cold]["auc"]["mean"]
                for k in agg
                if k.startswith("cold:")
                and k not in (COLD_MAIN, "cold:single_domain")
                and "_finetuned_" in k
                and not k.startswith(f"cold:{MAIN_MODEL}")
                and cold in agg[k]
            }
            if others:
                worse = [k for k, v in others.items() if ft["auc"]["mean"] < v]
                out.append(
                    _target(
                        f"cold start ({cold}): fine-tuned SRFoundation AUC >= every fine-tuned baseline",
                        not worse,
                        "; ".join(f"{k.removeprefix('cold:')} {v:.4f}" for k, v in others.items())
                        + f" vs {ft['auc']['mean']:.4f}",
                        ", ".join(worse),
                    )
                )
    if main and "ablation:gating=mean" in agg:
        for metric in ("auc", "gauc"):
            a = _domain_mean(agg, MAIN_MODEL, warm, metric)
            b = _domain_mean(agg, "ablation:gating=mean", warm, metric)
            seeds = agg["ablation:gating=mean"][warm[0]][metric]["n"]
            out.append(
                _target(
                    f"domain gating >= mean pooling (mean warm-domain {metric.upper()}, {seeds} seeds each)",
                    a >= b,
                    f"{a:.4f} vs {b:.4f} ({a - b:+.4f})",
                )
            )
    return out
