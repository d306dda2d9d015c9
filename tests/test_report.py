"""tfsr.report: JSON (strict, NaN -> null), markdown sections and PNG plots."""

import json

from tfsr import evaluation as ev
from tfsr import report as rp

import numpy as np


def _report():
    rng = np.random.default_rng(0)
    n = 400
    domains = np.array(["search_tags", "rec_action", "rec_children"])[rng.integers(0, 3, n)]
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.5 + 0.2 * (labels - 0.5) + 0.2 * rng.standard_normal(n), 0.01, 0.99)
    gates = rng.dirichlet(np.ones(3), size=(n, 3))
    rep = ev.evaluate_arrays(
        labels,
        probs,
        domains,
        users=rng.integers(0, 30, n).astype(str),
        is_cold_item=rng.integers(0, 2, n),
        gate_weights=gates,
        cold_domains=["rec_children"],
        domain_kinds={"search_tags": "search", "rec_action": "rec", "rec_children": "rec"},
    )
    rep["meta"] = {"model": "unit", "split": "pretrain_eval"}
    rep["history"] = {
        "pretrain": [{"step": 10, "loss": 0.7}, {"step": 20, "loss": 0.6}, {"step": 20, "val_loss": 0.65}],
        "finetune": [{"step": 25, "loss": 0.65}],
    }
    rep["domains"]["rec_action"]["gauc"] = float("nan")  # strict JSON must survive NaN
    return rep


def test_write_report_files_and_structure(tmp_path):
    written = rp.write_report(_report(), tmp_path, title="unit")
    for key in ("json", "markdown", "auc_plot", "gate_plot", "curves_plot"):
        assert written[key].exists() and written[key].stat().st_size > 0, key
    for png in ("auc_by_domain.png", "gate_weights.png", "training_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["domains"]["rec_action"]["gauc"] is None
    assert set(data) >= {
        "meta",
        "domains",
        "overall",
        "overall_warm",
        "item_cold_start",
        "gate_weights",
        "cold_domains",
        "history",
        "plots",
    }
    md = (tmp_path / "report.md").read_text()
    for section in (
        "## Per domain",
        "## Cold-start domain",
        "## Item cold start",
        "## Aspect gate weights",
        "## Training",
        "![Aspect gate weights](gate_weights.png)",
    ):
        assert section in md
    # the last point of a stage is its validation record: the training losses come from the others
    assert "| pretrain | 20 | 0.7000 | 0.6000 | 0.6500 |" in md
    assert "| finetune | 25 | 0.6500 | 0.6500 | – |" in md


def test_grouped_bars_with_errors(tmp_path):
    path = rp.plot_metric_bars(
        {"a": {"d1": 0.7, "d2": 0.6}, "b": {"d1": 0.72, "d2": None}},
        tmp_path / "bars.png",
        errors={"a": {"d1": 0.01, "d2": 0.02}},
    )
    assert path.exists()


def test_markdown_table_formats():
    table = rp.markdown_table(["x", "n", "v"], [["a", 1234, 0.123456], ["b", None, float("nan")]])
    assert "| a | 1,234 | 0.1235 |" in table and "| b | – | – |" in table
