"""tfsr export with the real model (tfsr.models) and text encoder (tfsr.text): parity, TF Text ops, CLI."""

import os

import tfsr.export as export
from tfsr import layout

import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf

TEXT_DIM = 32

pytestmark = pytest.mark.slow  # builds a transformer-based encoder and the S&R model (~30 s on 2 cores)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from tfsr.models import ModelConfig, build_model, save_model
    from tfsr.text import tiny_text_encoder

    root = tmp_path_factory.mktemp("export_real")
    spec = T.toy_spec(TEXT_DIM)
    encoder = tiny_text_encoder(dim=TEXT_DIM)
    samples = T.write_samples_dir(root / "samples", spec, encoder)
    vocabularies = {name: layout.read_vocab(samples, name) for name in T.TOY_VOCABULARIES}
    model = build_model(ModelConfig("srfoundation", embedding_dim=8), spec, vocabularies)
    model_dir = save_model(model, root / "model")
    return {
        "root": root,
        "spec": spec,
        "encoder": encoder,
        "samples": samples,
        "model": model,
        "model_dir": model_dir,
    }


def test_real_model_export_matches_in_memory_and_uses_only_allowed_ops(real):
    spec = real["spec"]
    path = export.export_model(
        real["model"], spec, real["encoder"], real["root"] / "saved_models", "sr", samples_dir=real["samples"]
    )
    loaded = tf.saved_model.load(str(path))
    records = T.toy_records(20, seed=1) + T.toy_records(6, seed=2, domain="rec_children")
    expected = T.in_memory_outputs(spec, real["model"], real["encoder"], records)
    got = loaded.signatures["serving_default"](examples=T.serialize(spec, records))
    np.testing.assert_allclose(got["ctr"].numpy(), expected["ctr"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        got["gate_weights"].numpy(), expected["gate_weights"].numpy(), rtol=1e-4, atol=1e-5
    )

    ops = T.classify_graph_ops(path)
    assert not ops["forbidden"] and not ops["other"], (ops["forbidden"], sorted(ops["other"]))
    assert ops["text"], "the in-graph encoder fallback should use TF Text tokenization ops"


def test_tfsr_export_cli(real, capsys):
    rc = export.main(
        [
            "--model_dir",
            str(real["model_dir"]),
            "--samples_dir",
            str(real["samples"]),
            "--export_base",
            str(real["root"] / "cli_export"),
            "--name",
            "srcli",
            "--text_encoder",
            "none",
        ]
    )
    assert rc == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith(os.path.join("srcli", "1"))
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](
        examples=tf.constant(
            [real["spec"].to_example(r, roles=("raw",)).SerializeToString() for r in T.toy_records(3)]
        )
    )
    assert out["ctr"].shape == (3,) and out["gate_weights"].shape == (3, 3, 3)


def test_tfsr_export_cli_with_a_retrieval_model(real, capsys):
    """`tfsr export --retrieval_model_dir`: the real ranker re-scores what the retrieval model found, with
    the CTR it gives the same (context, item) rows in memory; a ranker is refused as the retrieval model."""
    from tfsr.models import save_model

    spec = real["spec"]
    items = T.toy_items(20, seed=5)
    T.write_items(real["samples"], spec, items)
    retrieval = T.build_toy_retrieval_model(spec, real["samples"], warm_only=False)
    retrieval_dir = save_model(retrieval, real["root"] / "retrieval_model")
    common = ["--samples_dir", str(real["samples"]), "--export_base", str(real["root"] / "cli_retrieval")]
    common += ["--text_encoder", "none", "--model_dir", str(real["model_dir"])]
    assert export.main([*common, "--retrieval_model_dir", str(retrieval_dir)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    signature = tf.saved_model.load(path).signatures["retrieve_and_rank"]
    by_id = {item["item_id"]: item for item in items}
    for context in (
        {"domain": "search_tags", "user_id": "u4", "query_id": "space", "query_text": "space"},
        {"domain": "rec_children", "user_id": "u2", "query_id": "", "query_text": ""},
    ):
        got = signature(**{k: tf.constant([v]) for k, v in context.items()}, k=tf.constant(6))
        ids = [i.decode() for i in got["item_ids"].numpy()[0]]
        expected = T.in_memory_outputs(
            spec, real["model"], real["encoder"], [{**context, **by_id[i]} for i in ids]
        )
        np.testing.assert_allclose(got["ctr"].numpy()[0], expected["ctr"].numpy(), rtol=1e-4, atol=1e-5)
        assert np.all(np.diff(got["ctr"].numpy()[0]) <= 0)
    with pytest.raises(SystemExit):
        export.main([*common, "--retrieval_model_dir", str(real["model_dir"])])
    assert "is not a retrieval model" in capsys.readouterr().err
