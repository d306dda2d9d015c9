"""tfsr.export: TF Serving layout, signatures, in-graph preprocessing, op allow-list, score parity."""

import os
import subprocess
import sys

import tfsr.export as export

import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf

TEXT_DIM = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    toy = T.export_toy_model(root, TEXT_DIM)
    return {
        "root": root,
        "spec": toy.spec,
        "encoder": toy.encoder,
        "samples": toy.samples_dir,
        "model": toy.model,
        "path": toy.path,
        "loaded": tf.saved_model.load(str(toy.path)),
    }


_serialized = T.serialize
_in_memory = T.in_memory_outputs


def test_layout_assets_and_warmup(exported):
    path = exported["path"]
    assert path.name == "1" and path.parent.name == "toy"
    assert (path / "saved_model.pb").exists() and (path / "variables").is_dir()
    assets = sorted(os.listdir(path / "assets"))
    for feature in ("user_id", "item_id", "query_id", "item_genres", "item_decade"):
        assert f"{feature}.txt" in assets
    assert not [p for p in os.listdir(path.parent) if p.startswith(".tmp")]
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(path / "assets.extra" / export.WARMUP_FILE)))
    assert len(records) == 2
    entry = prediction_log_pb2.PredictionLog.FromString(records[1].numpy())
    assert entry.predict_log.request.model_spec.signature_name == "serving_default"
    examples = tf.make_ndarray(entry.predict_log.request.inputs["examples"])
    assert examples.shape == (64,)
    out = exported["loaded"].signatures["serving_default"](examples=tf.constant(examples))
    assert out["ctr"].shape == (64,)


def test_signatures_and_method_names(exported):
    from tensorflow.core.protobuf import saved_model_pb2

    sigs = exported["loaded"].signatures
    assert set(sigs) == {"serving_default", "predict_raw", "classify"}
    assert set(sigs["serving_default"].structured_input_signature[1]) == {"examples"}
    assert set(sigs["serving_default"].structured_outputs) == {"ctr", "gate_weights"}
    assert set(sigs["predict_raw"].structured_input_signature[1]) == {
        f.name for f in exported["spec"].raw_features
    }
    assert set(sigs["classify"].structured_outputs) == {"scores", "classes"}
    proto = saved_model_pb2.SavedModel.FromString((exported["path"] / "saved_model.pb").read_bytes())
    defs = proto.meta_graphs[0].signature_def
    assert defs["classify"].method_name == "tensorflow/serving/classify"
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert defs["serving_default"].outputs["gate_weights"].tensor_shape.dim[1].size == 3


def test_exported_scores_equal_in_memory_model(exported):
    spec, loaded = exported["spec"], exported["loaded"]
    records = T.toy_records(24, seed=3) + T.toy_records(8, seed=4, domain="rec_drama")
    expected = _in_memory(spec, exported["model"], exported["encoder"], records)
    got = loaded.signatures["serving_default"](examples=_serialized(spec, records))
    np.testing.assert_allclose(got["ctr"].numpy(), expected["ctr"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        got["gate_weights"].numpy(), expected["gate_weights"].numpy(), rtol=1e-5, atol=1e-6
    )

    width = max(len(r["item_genres"]) for r in records)
    raw = {f.name: tf.constant([r[f.name] for r in records]) for f in spec.raw_features if not f.varlen}
    raw["item_genres"] = tf.constant(
        [r["item_genres"] + [""] * (width - len(r["item_genres"])) for r in records]
    )
    got_raw = loaded.signatures["predict_raw"](**raw)
    np.testing.assert_allclose(got_raw["ctr"].numpy(), expected["ctr"].numpy(), rtol=1e-5, atol=1e-6)

    got_cls = loaded.signatures["classify"](inputs=_serialized(spec, records))
    np.testing.assert_allclose(got_cls["scores"].numpy()[:, 1], expected["ctr"].numpy(), rtol=1e-5, atol=1e-6)
    assert got_cls["classes"].numpy()[0].tolist() == [b"0", b"1"]


def test_graph_has_only_core_tf_and_tf_text_ops(exported):
    ops = T.classify_graph_ops(exported["path"])
    assert not ops["forbidden"], f"python ops in the graph: {ops['forbidden']}"
    assert not ops["other"], f"ops neither core TF nor TF Text: {sorted(ops['other'])}"
    assert {"ParseExampleV2", "MutableHashTableV2", "Unique"} <= ops["all"]
    assert "PyFunc" in T.FORBIDDEN_OPS and hasattr(
        tf.raw_ops, "PyFunc"
    )  # the allow-list alone would admit it


def test_saved_model_cli_show_all(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "show", "--all", "--dir", str(exported["path"])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for needle in (
        "signature_def['serving_default']",
        "signature_def['predict_raw']",
        "signature_def['classify']",
        "tensorflow/serving/classify",
        "examples",
        "gate_weights",
    ):
        assert needle in result.stdout


def test_versions_increment_and_existing_version_refused(exported, tmp_path):
    base = exported["path"].parent.parent
    with pytest.raises(FileExistsError, match="already exists"):
        export.export_model(
            exported["model"],
            exported["spec"],
            exported["encoder"],
            base,
            "toy",
            version=1,
            samples_dir=exported["samples"],
        )
    with pytest.raises(ValueError, match="model_name"):
        export.export_model(exported["model"], exported["spec"], None, base, "../evil")
    assert export.list_versions(base / "toy") == [1]
    (base / "toy" / ".tmp-9-abc").mkdir()
    (base / "toy" / "notes").mkdir()
    assert export.list_versions(base / "toy") == [1]


def test_failed_export_leaves_no_partial_version(exported, tmp_path):
    class Broken(tf.Module):
        def __call__(self, features, training=False):
            raise RuntimeError("model is broken")

    with pytest.raises(RuntimeError, match="broken"):
        export.export_model(Broken(), exported["spec"], exported["encoder"], tmp_path, "toy")
    assert os.listdir(tmp_path / "toy") == []


def test_encoder_dim_mismatch_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match="text encoder dim 8"):
        export.export_model(exported["model"], exported["spec"], T.HashingTextEncoder(8), tmp_path, "toy")
