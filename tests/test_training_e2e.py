"""End to end on the real MovieLens data (a slice of it, tiny text encoder, few steps):
`tfsr train` → resume → `tfsr finetune` → `tfsr evaluate`, the report's structure, frozen levels."""

import json
import pathlib

from tfsr.datasets import movielens
from tfsr.training import cli, workflows
from tfsr.training.loop import read_history

import numpy as np
import pytest
from training_samples import MODEL_FLAGS

pytestmark = pytest.mark.slow  # Beam preprocessing of a MovieLens slice + three short trainings (~1-2 min)


@pytest.fixture(scope="module")
def sliced_movielens(movielens_dir, tmp_path_factory):
    return movielens.write_slice(movielens_dir, tmp_path_factory.mktemp("e2e") / "ml")


def _preprocess(data: pathlib.Path, out: pathlib.Path, *flags: str) -> pathlib.Path:
    from beam_jobs import build_samples

    args = ["--movielens_dir", str(data), "--output_dir", str(out), "--text_encoder", "tiny"]
    assert not build_samples.run([*args, "--coldstart_finetune_rows", "150", *flags])
    return out


@pytest.fixture(scope="module")
def samples(sliced_movielens):
    """The default samples: they carry text keys (issue 14)."""
    return _preprocess(sliced_movielens, sliced_movielens.parent / "samples")


def _train_args(samples, run, max_steps):
    return [
        "--samples_dir",
        str(samples),
        "--output_dir",
        str(run),
        "--batch_size",
        "128",
        "--epochs",
        "3",
        "--max_steps",
        str(max_steps),
        "--log_every",
        "2",
        "--checkpoint_every",
        "3",
        *MODEL_FLAGS,
    ]


@pytest.fixture(scope="module")
def pretrained(samples, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pretrain"
    assert cli.train_main(_train_args(samples, run, 6)) == 0
    return run


def test_train_writes_run_directory(pretrained):
    assert (pretrained / "model" / "model_config.json").exists()
    assert (pretrained / "checkpoints" / "ckpt-6.index").exists()
    assert list((pretrained / "tensorboard" / "train").glob("events.out.tfevents.*"))
    config = json.loads((pretrained / "config.json").read_text())
    assert config["model"]["embedding_dim"] == 8
    assert "rec_children" not in [d["name"] for d in config["model"]["domains"]]  # cold domain held out
    assert [h["step"] for h in read_history(pretrained)] == [2, 4, 6]


def test_resume_continues_the_step_count(samples, pretrained, tmp_path):
    run = tmp_path / "resumed"
    assert cli.train_main(_train_args(samples, run, 3)) == 0  # "killed" after step 3
    assert cli.train_main(_train_args(samples, run, 5)) == 0  # resumed: steps 4 and 5 only
    assert (run / "checkpoints" / "ckpt-5.index").exists()
    steps = [h["step"] for h in read_history(run)]
    assert steps == [2, 3, 4, 5], steps


def test_refit_trains_a_fresh_model_on_train_and_valid_rows_for_the_chosen_epochs(samples, tmp_path):
    """--refit: validation picks the epoch and the calibration, then a fresh model learns from the training
    and the validation rows for that many epochs and becomes the run's model, calibrated as chosen."""
    import math

    from tfsr import layout
    from tfsr.models import load_model

    run = tmp_path / "refit"
    args = ["--samples_dir", str(samples), "--output_dir", str(run), "--batch_size", "256", "--epochs", "2"]
    assert cli.train_main([*args, "--refit", "--log_every", "5", *MODEL_FLAGS]) == 0
    selection = json.loads((run / "selection.json").read_text())
    counts = layout.read_manifest(samples)["counts"]
    rows = sum(c["samples"] for split in ("pretrain_train", "pretrain_valid") for c in counts[split].values())
    epochs = selection["best"]["epoch"]
    assert selection["refit"] == {
        "epochs": epochs,
        "splits": ["pretrain_train", "pretrain_valid"],
        "steps": epochs * math.ceil(rows / 256),  # every training and validation row, once per epoch
    }
    assert read_history(run / "refit")[-1]["step"] == selection["refit"]["steps"]  # trained in refit/
    model = load_model(str(run / "model"))  # the kept model: the refit, with the chosen calibration
    assert selection["calibration"]
    for domain, chosen in selection["calibration"].items():
        scale, shift = model.calibration.domain(model.domain_registry[domain].id)
        assert (scale, shift) == pytest.approx((chosen["scale"], chosen["shift"]), rel=1e-6)
    with pytest.raises(ValueError, match="refit needs a validation_split"):
        workflows.TrainConfig(samples_dir="s", output_dir="o", refit=True, validation_split=None).validate()


def test_finetune_keeps_frozen_levels_and_evaluate_writes_report(samples, pretrained, tmp_path):
    from tfsr import layout
    from tfsr.training.config import resolve

    spec = layout.read_feature_spec(samples)
    before = workflows.prepare_finetune_model(pretrained, spec, ["rec_children"], ["L0", "L1"])
    cfg = resolve(
        {"split": "coldstart_finetune", "batch_size": 32, "epochs": 2, "log_every": 2},
        None,
        {
            "samples_dir": str(samples),
            "output_dir": str(tmp_path / "ft"),
            "pretrained": str(pretrained),
            "freeze": ["L0", "L1"],
        },
    )
    result = workflows.run_finetune(cfg)
    after = result["model"]
    assert int(result["trainer"].step.numpy()) > 0
    # Every pretrained L0/L1 weight is frozen; the new domain's own L1 rows (gates, adaptive map) train.
    new_rows = {id(w) for w in after.new_domain_variables}
    assert new_rows
    frozen_ids = {
        id(w) for level in ("L0", "L1") for layer in after.level_layers(level) for w in layer.weights
    } - new_rows
    assert len(before.variables) == len(after.variables)
    n_frozen = n_changed = 0
    for b, a in zip(before.variables, after.variables, strict=True):
        same = np.array_equal(b.numpy(), a.numpy())
        if id(a) in frozen_ids:
            n_frozen += 1
            assert same, f"frozen variable {a.name} changed during fine-tuning"
        else:
            n_changed += not same
    assert n_frozen > 10 and n_changed > 0
    assert not any(id(w) in frozen_ids for w in after.trainable_variables)

    out = tmp_path / "report"
    assert (
        cli.evaluate_main(
            [
                "--model",
                str(tmp_path / "ft"),
                "--samples_dir",
                str(samples),
                "--output_dir",
                str(out),
                "--batch_size",
                "512",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["cold_domains"] == ["rec_children"]
    assert "rec_children" in report["domains"] and "search_tags" in report["domains"]
    for m in report["domains"].values():
        assert {"count", "auc", "gauc", "logloss", "logloss_const", "pos_rate"} <= set(m)
        assert m["auc"] is None or 0.0 <= m["auc"] <= 1.0
    assert report["meta"]["splits"] == "pretrain_eval, coldstart_eval"
    assert set(report["history"]) == {"train", "finetune"}  # the fine-tune run links to its pretraining
    gw = report["gate_weights"]["rec_children"]
    assert gw["entities"] == ["user", "query", "item"] and len(gw["mean"]) == 3
    assert "all" in report["item_cold_start"]
    for name in ("report.md", "auc_by_domain.png", "gate_weights.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0
    assert "## Cold-start domain" in (out / "report.md").read_text()


def test_default_finetune_leaves_warm_domain_predictions_unchanged(samples, pretrained, tmp_path):
    """Adding and fine-tuning the cold-start domain with the default freeze (every pretrained weight) changes
    no warm-domain prediction; the new domain's own rows and calibration do change."""
    from tfsr import layout
    from tfsr.models import load_model
    from tfsr.training.config import FINETUNE_DEFAULTS, resolve

    spec = layout.read_feature_spec(samples)
    warm = [d.name for d in spec.domains.warm()]
    base = load_model(pretrained / "model")
    before = workflows.predict_splits(base, samples, spec, [layout.PRETRAIN_EVAL], domains=warm)
    cfg = resolve(
        {**FINETUNE_DEFAULTS, "batch_size": 32, "epochs": 3, "log_every": 2},
        None,
        {"samples_dir": str(samples), "output_dir": str(tmp_path / "ft"), "pretrained": str(pretrained)},
    )
    assert cfg.freeze == ["L0", "L1", "L2_shared"]
    result = workflows.run_finetune(cfg)
    tuned = load_model(tmp_path / "ft" / "model")
    after = workflows.predict_splits(tuned, samples, spec, [layout.PRETRAIN_EVAL], domains=warm)
    np.testing.assert_array_equal(before["domain"], after["domain"])
    assert np.max(np.abs(before["ctr"] - after["ctr"])) <= 1e-6
    assert int(result["trainer"].step.numpy()) > 0
    cold_id = tuned.domain_registry["rec_children"].id
    # the new domain was selected and calibrated on coldstart_valid; the warm domains keep their pairs
    assert result["best"]["monitor"] == "val_auc" and (tmp_path / "ft" / "selection.json").exists()
    assert "rec_children" in result["calibration"] and tuned.calibration.domain(cold_id) != (1.0, 0.0)
    for d in warm:
        assert tuned.calibration.domain(tuned.domain_registry[d].id) == base.calibration.domain(
            base.domain_registry[d].id
        )


def test_key_and_vector_samples_score_the_same_in_training_and_export(
    sliced_movielens, samples, pretrained, tmp_path
):
    """The same rows written carrying keys and carrying vectors: the model scores them the same through the
    training input pipeline, and the export (whose text lookup is the training one) scores their raw
    features the same (issue 14)."""
    from tfsr import layout
    from tfsr.export import export_model
    from tfsr.features import RECORD_ROLES, ROLES
    from tfsr.models import load_model
    from tfsr.text.lookup import samples_text_lookup

    import tensorflow as tf

    vectors = _preprocess(sliced_movielens, tmp_path / "vectors", "--text_features", "vector")
    assert layout.text_features_mode(samples) == layout.TEXT_KEYS
    assert layout.text_features_mode(vectors) == layout.TEXT_VECTORS
    spec = layout.read_feature_spec(samples)
    model = load_model(pretrained / "model")
    shard = sorted((samples / layout.PRETRAIN_EVAL).glob("part-*"))[0].name

    def records(root):
        return next(
            iter(tf.data.TFRecordDataset(str(root / layout.PRETRAIN_EVAL / shard), "GZIP").batch(512))
        )

    key_records, vector_records = records(samples), records(vectors)
    lookup = samples_text_lookup(samples, spec)
    from_keys = lookup(tf.io.parse_example(key_records, spec.parse_spec(roles=RECORD_ROLES)))
    from_vectors = tf.io.parse_example(vector_records, spec.parse_spec(roles=ROLES))
    for derived in spec.text_embeddings.values():  # two runs batch the encoder differently: ~1 ulp apart
        np.testing.assert_allclose(
            from_keys[derived].numpy(), from_vectors[derived].numpy(), rtol=0, atol=1e-6
        )
    ctr_keys = model(from_keys, training=False)["ctr"].numpy().ravel()
    ctr_vectors = model(from_vectors, training=False)["ctr"].numpy().ravel()
    np.testing.assert_allclose(ctr_keys, ctr_vectors, rtol=0, atol=1e-6)

    for source in (samples, vectors):  # either directory's tables serve; raw features are all it reads
        path = export_model(model, spec, None, tmp_path / "export", f"from_{source.name}", samples_dir=source)
        served = tf.saved_model.load(str(path)).signatures["serving_default"](examples=vector_records)
        np.testing.assert_allclose(served["ctr"].numpy(), ctr_vectors, rtol=0, atol=1e-6)


def test_retrieval_pretrain_finetune_evaluate_against_the_catalogue(samples, pretrained, tmp_path):
    """`tfsr train --model_type retrieval --pretrained RANKER` → `tfsr finetune` (cold-start domain) →
    `tfsr evaluate --compare`: every held-out click is a query over the whole catalogue, the counts
    reconcile with the manifest, the ranker's encoders seeded the retrieval model."""
    from tfsr import layout
    from tfsr.models import load_model

    run, cold, ids, out = (tmp_path / name for name in ("retrieval", "retrieval_cold", "ids", "report"))
    flags = ["--model_type", "retrieval", "--pretrained", str(pretrained), "--freeze", "L0"]
    assert cli.train_main([*_train_args(samples, run, 100), "--epochs", "1", *flags]) == 0  # one whole epoch
    ranker, model = load_model(pretrained / "model"), load_model(run / "model")
    for mine, theirs in zip(  # L0 frozen: still the ranker's after training
        model.feature_encoders["user_id"].get_weights(),
        ranker.feature_encoders["user_id"].get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(mine, theirs)
    assert "val_recall_at_100" in json.loads((run / "best.json").read_text())["metrics"]
    finetune = ["--samples_dir", str(samples), "--pretrained", str(run), "--output_dir", str(cold)]
    assert cli.finetune_main([*finetune, "--max_steps", "3", "--batch_size", "32"]) == 0
    assert cli.train_main([*_train_args(samples, ids, 3), "--model_type", "id_two_tower"]) == 0
    evaluate = ["--model_dir", str(cold), "--samples_dir", str(samples), "--output_dir", str(out)]
    assert cli.evaluate_main([*evaluate, "--compare", f"ids={ids}"]) == 0

    rep = json.loads((out / "retrieval.json").read_text())
    counts = layout.read_manifest(samples)["counts"]
    assert set(rep["splits"]) == {"pretrain_eval", "coldstart_eval"}
    assert "rec_children" in rep["splits"]["coldstart_eval"]
    assert rep["meta"]["catalogue_items"] > 0
    for split, domains in rep["splits"].items():
        for domain, methods in domains.items():
            assert set(methods) <= {"popularity", "retrieval_cold", "ids"} and "retrieval_cold" in methods
            for m in methods.values():
                assert m["count"] == counts[split][domain]["positives"]  # every click is one query
                assert 0 <= m["recall_at_10"] <= m["recall_at_100"] <= 1
    assert (out / "retrieval.md").read_text().startswith("# Retrieval: retrieval_cold")
