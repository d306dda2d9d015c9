"""The evaluation report: JSON for machines, markdown for people, PNG plots for both.

A report is the dict :func:`tfsr.evaluation.evaluate_arrays` returns, plus a ``meta`` block (model, data,
split, time) and optionally ``history`` (training loss curves, ``{stage: [{"step", "loss", ...}, ...]}``).
:func:`write_report` writes::

    <out_dir>/report.json           the dict, NaN written as null
    <out_dir>/report.md             tables per domain, cold-start domain and item-cold-start subset, gates
    <out_dir>/auc_by_domain.png     AUC (and GAUC) per domain
    <out_dir>/gate_weights.png      one heatmap per entity: domains x aspects (id / text / sparse)
    <out_dir>/training_curves.png   loss per step for each training stage (when a history is given)

The plotting helpers take plain dicts so the paper study can reuse them to compare models
(:func:`plot_metric_bars` draws grouped bars, one group per domain and one bar per model).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METRIC_COLUMNS = ("count", "pos_rate", "mean_ctr", "auc", "gauc", "logloss", "logloss_const")


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- JSON
def to_jsonable(value: Any) -> Any:
    """Converts numpy scalars/arrays and NaN/inf (to None) recursively for strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pathlib.Path):
        return str(value)
    return value


def dump_json(data: Any, path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


# --------------------------------------------------------------------------- markdown
def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_rows(section: Mapping[str, Mapping[str, Any]], with_kind: bool = True):
    rows = []
    for name, m in section.items():
        row = [name]
        if with_kind:
            row += [m.get("kind") or "", "cold start" if m.get("cold_start") else "warm"]
        row += [m.get(c) for c in METRIC_COLUMNS]
        rows.append(row)
    return rows


def markdown_report(
    report: Mapping[str, Any], title: str | None = None, plots: Mapping[str, str] | None = None
) -> str:
    """The report as markdown (tables of per-domain metrics, cold-start, item cold start, gate weights)."""
    meta = report.get("meta", {})
    out = [f"# {title or 'tfsr evaluation report'}", ""]
    if meta:
        out += [f"- **{k}**: {v}" for k, v in meta.items() if not isinstance(v, Mapping | list)]
        out.append("")
    header = ["domain", "kind", "status", *METRIC_COLUMNS]
    out += [
        "## Per domain",
        "",
        "AUC and GAUC (user-grouped AUC weighted by impressions, users with one class skipped); "
        "`logloss_const` is the log loss of always predicting the slice's own positive rate — "
        "a model above it is worse than a constant.",
        "",
    ]
    out.append(markdown_table(header, _metric_rows(report.get("domains", {}))))
    overall = {k: report[k] for k in ("overall_warm", "overall") if k in report}
    if overall:
        out += [
            "",
            markdown_table(
                ["slice", *METRIC_COLUMNS],
                [[k] + [m.get(c) for c in METRIC_COLUMNS] for k, m in overall.items()],
            ),
        ]
    cold = [d for d in report.get("cold_domains", []) if d in report.get("domains", {})]
    if cold:
        out += ["", "## Cold-start domain", ""]
        out.append(markdown_table(header, _metric_rows({d: report["domains"][d] for d in cold})))
    ics = report.get("item_cold_start", {})
    out += ["", "## Item cold start (`is_cold_item == 1`)", ""]
    if ics:
        out.append(markdown_table(["domain", *METRIC_COLUMNS], _metric_rows(ics, with_kind=False)))
    else:
        out.append("No evaluation rows are marked as cold items.")
    gates = report.get("gate_weights", {})
    if gates:
        out += ["", "## Aspect gate weights (mean over the domain's samples)", ""]
        first = next(iter(gates.values()))
        aspects = first["aspects"]
        rows = []
        for domain, g in gates.items():
            for entity, weights in zip(g["entities"], g["mean"], strict=False):
                rows.append([domain, entity, *weights])
        out.append(markdown_table(["domain", "entity", *aspects], rows, digits=3))
    history = report.get("history") or {}
    if history:
        out += ["", "## Training", ""]
        rows = []
        for stage, points in history.items():
            # a stage's history holds training points ("loss") and epoch-end validation points ("val_loss")
            train = [p["loss"] for p in points if "loss" in p]
            valid = [p["val_loss"] for p in points if "val_loss" in p]
            if points:
                first, last = (train[0], train[-1]) if train else (None, None)
                rows.append([stage, points[-1].get("step"), first, last, valid[-1] if valid else None])
        columns = ["stage", "last step", "first training loss", "last training loss", "last validation loss"]
        out.append(markdown_table(columns, rows))
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plots
def plot_metric_bars(
    values: Mapping[str, Mapping[str, float]],
    path: str | pathlib.Path,
    metric: str = "AUC",
    errors: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> pathlib.Path:
    """Grouped bars: one group per domain, one bar per model (``values[model][domain]``)."""
    plt = _matplotlib()
    models = list(values)
    domains: list[str] = []
    for m in models:
        for d in values[m]:
            if d not in domains:
                domains.append(d)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(domains) * max(1, len(models)) * 0.35 + 3), 4.2))
    x = np.arange(len(domains))
    finite = []
    for i, m in enumerate(models):
        ys = [values[m].get(d, np.nan) for d in domains]
        ys = [np.nan if y is None else y for y in ys]
        finite += [y for y in ys if np.isfinite(y)]
        err = None
        if errors and m in errors:
            err = [errors[m].get(d, 0.0) or 0.0 for d in domains]
        ax.bar(x - 0.4 + width * (i + 0.5), ys, width, yerr=err, label=m, capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(domains, rotation=20, ha="right")
    ax.set_ylabel(metric)
    if ylim is None and finite:
        lo, hi = min(finite), max(finite)
        pad = max(0.01, 0.15 * (hi - lo))
        ylim = (
            (max(0.0, lo - pad), min(1.0, hi + pad))
            if metric.upper().endswith("AUC")
            else (lo - pad, hi + pad)
        )
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{metric} per domain")
    ax.legend(fontsize=7, ncol=min(4, len(models)), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def plot_gate_heatmaps(
    gate_weights: Mapping[str, Mapping[str, Any]], path: str | pathlib.Path, title: str | None = None
) -> pathlib.Path:
    """One heatmap per entity: rows are domains, columns aspects, cells the mean gate weight."""
    plt = _matplotlib()
    domains = list(gate_weights)
    if not domains:
        raise ValueError("no gate weights to plot")
    first = gate_weights[domains[0]]
    entities, aspects = list(first["entities"]), list(first["aspects"])
    data = np.array([gate_weights[d]["mean"] for d in domains], dtype=float)  # [D, E, A]
    fig, axes = plt.subplots(
        1, len(entities), figsize=(3.2 * len(entities) + 1, 0.45 * len(domains) + 1.8), squeeze=False
    )
    im = None
    for e, entity in enumerate(entities):
        ax = axes[0, e]
        im = ax.imshow(data[:, e, :], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(aspects)))
        ax.set_xticklabels(aspects)
        ax.set_yticks(range(len(domains)))
        ax.set_yticklabels(domains if e == 0 else [""] * len(domains))
        ax.set_title(entity)
        for i in range(len(domains)):
            for j in range(len(aspects)):
                v = data[i, e, j]
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if v > 0.6 else "white",
                )
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title or "Aspect gate weights per domain", y=1.04)
    return _save(fig, path)


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | pathlib.Path,
    keys: Sequence[str] = ("loss",),
    title: str | None = None,
) -> pathlib.Path:
    """Loss (and other logged scalars) against the global step, one line per stage/run."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in histories.items():
        for key in keys:
            pts = [(p["step"], p[key]) for p in points if p.get(key) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=f"{name} {key}" if len(keys) > 1 else name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(", ".join(keys))
    ax.grid(alpha=0.3)
    ax.set_title(title or "Training curves")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- all of it
def write_report(
    report: Mapping[str, Any], out_dir: str | pathlib.Path, title: str | None = None, plots: bool = True
) -> dict[str, pathlib.Path]:
    """Writes report.json, report.md and the PNG plots into `out_dir`; returns {artifact: path}."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, pathlib.Path] = {}
    plot_paths: dict[str, str] = {}
    if plots:
        domains = report.get("domains", {})
        if domains:
            vals = {"AUC": {d: m.get("auc") for d, m in domains.items()}}
            if any(m.get("gauc") is not None for m in domains.values()):
                vals["GAUC"] = {d: m.get("gauc") for d, m in domains.items()}
            written["auc_plot"] = plot_metric_bars(
                vals, out_dir / "auc_by_domain.png", metric="AUC", title="AUC / GAUC per domain"
            )
            plot_paths["AUC per domain"] = "auc_by_domain.png"
        if report.get("gate_weights"):
            written["gate_plot"] = plot_gate_heatmaps(report["gate_weights"], out_dir / "gate_weights.png")
            plot_paths["Aspect gate weights"] = "gate_weights.png"
        history = report.get("history") or {}
        if any(history.values()):
            written["curves_plot"] = plot_training_curves(history, out_dir / "training_curves.png")
            plot_paths["Training curves"] = "training_curves.png"
    full = dict(report)
    full["plots"] = plot_paths
    written["json"] = dump_json(full, out_dir / "report.json")
    md = out_dir / "report.md"
    md.write_text(markdown_report(full, title=title, plots=plot_paths), encoding="utf-8")
    written["markdown"] = md
    return written


__all__ = [
    "to_jsonable",
    "dump_json",
    "markdown_table",
    "markdown_report",
    "plot_metric_bars",
    "plot_gate_heatmaps",
    "plot_training_curves",
    "write_report",
]
