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
