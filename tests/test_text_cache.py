"""EmbeddingCache (dedupe, read-only mode, TFRecord round trip) and the `tfsr encode-text` CLI."""

from __future__ import annotations

import json

from tfsr.text import EmbeddingCache, tiny_text_encoder
from tfsr.text.cache import make_example

import numpy as np
import pytest
import tensorflow as tf

DIM = 16


class CountingEncoder:
    """Wraps an encoder and records every batch it is asked to encode."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.dim = encoder.dim
        self.calls: list[list[bytes]] = []

    def encode(self, texts, batch_size=256):
        self.calls.append(list(texts))
        return self.encoder.encode(texts, batch_size=batch_size)


@pytest.fixture(scope="module")
def tiny():
    return tiny_text_encoder(seed=5, dim=DIM)


def test_get_or_encode_dedupes_and_counts(tiny):
    counting = CountingEncoder(tiny)
    cache = EmbeddingCache(counting)
    texts = ["Toy Story (1995)", "dark comedy", "Toy Story (1995)", b"dark comedy"]
    out = cache.get_or_encode(texts)
    assert counting.calls == [[b"Toy Story (1995)", b"dark comedy"]]
    np.testing.assert_allclose(out, tiny.encode(texts), atol=1e-6)
    assert cache.stats == {"size": 2, "hits": 0, "misses": 4, "encoded": 2}

    again = cache.get_or_encode(["dark comedy", "nazis"])
    assert counting.calls[1] == [b"nazis"]
    assert cache.stats == {"size": 3, "hits": 1, "misses": 5, "encoded": 3}
    np.testing.assert_array_equal(again[0], out[1])
    assert "nazis" in cache and b"nazis" in cache and "other" not in cache


def test_empty_and_bad_input(tiny):
    cache = EmbeddingCache(tiny)
    assert cache.get_or_encode([]).shape == (0, DIM)
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        cache.get_or_encode([None])
    with pytest.raises(ValueError, match="dim"):
        EmbeddingCache(None)
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingCache(tiny, batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        cache.add(["a"], np.zeros((1, DIM + 1)))


def test_tfrecord_round_trip_and_read_only(tiny, tmp_path):
    cache = EmbeddingCache(tiny)
    texts = ["Amélie (2001)", "千と千尋の神隠し", ""]
    expected = cache.get_or_encode(texts)
    path = tmp_path / "text_embeddings" / "item_title.tfrecord.gz"
    assert cache.save_tfrecord(path) == 3

    loaded = EmbeddingCache.load_tfrecord(path)
    assert loaded.dim == DIM and len(loaded) == 3 and loaded.encoder is None
    np.testing.assert_array_equal(loaded.get_or_encode(texts), expected)
    with pytest.raises(KeyError, match="read-only"):
        loaded.get_or_encode(["unseen"])

    keys, matrix = loaded.as_arrays()
    assert keys == [t.encode() for t in texts] and matrix.shape == (3, DIM)

    with_encoder = EmbeddingCache.load_tfrecord(path, encoder=tiny)
    assert with_encoder.get_or_encode(["unseen"]).shape == (1, DIM)
    with pytest.raises(ValueError, match="16-d"):
        EmbeddingCache.load_tfrecord(path, encoder=tiny_text_encoder(dim=8))

    # the records parse with the layout's feature spec
    record = next(iter(tf.data.TFRecordDataset(str(path), compression_type="GZIP")))
    parsed = tf.io.parse_single_example(
        record,
        {"text": tf.io.FixedLenFeature([], tf.string), "embedding": tf.io.FixedLenFeature([DIM], tf.float32)},
    )
    assert parsed["text"].numpy() == "Amélie (2001)".encode()
    assert make_example("x", np.zeros(DIM)).features.feature["text"].bytes_list.value == [b"x"]


def test_cli_embed_and_export(tiny, tmp_path, monkeypatch):
    from tfsr.text import cli

    monkeypatch.setattr(cli, "load_text_encoder", lambda weights_dir, max_length: tiny)
    csv_path = tmp_path / "movies.csv"
    csv_path.write_text(
        "movieId,title\n1,Toy Story (1995)\n2,Heat (1995)\n3,Toy Story (1995)\n", encoding="utf-8"
    )

    assert (
        cli.main(["embed", "--input", str(csv_path), "--column", "title", "--out", str(tmp_path / "t.npy")])
        == 0
    )
    matrix = np.load(tmp_path / "t.npy")
    np.testing.assert_allclose(
        matrix, tiny.encode(["Toy Story (1995)", "Heat (1995)", "Toy Story (1995)"]), atol=1e-6
    )

    out = tmp_path / "t.tfrecord.gz"
    assert cli.main(["embed", "--input", str(csv_path), "--column", "title", "--out", str(out)]) == 0
    assert len(EmbeddingCache.load_tfrecord(out)) == 2

    txt = tmp_path / "tags.txt"
    txt.write_text("dark comedy\nnazis\n", encoding="utf-8")
    assert cli.main(["embed", "--input", str(txt), "--out", str(tmp_path / "tags.npy")]) == 0
    assert np.load(tmp_path / "tags.npy").shape == (2, DIM)

    with pytest.raises(ValueError, match="--column"):
        cli.main(["embed", "--input", str(csv_path), "--out", str(tmp_path / "x.npy")])
    with pytest.raises(ValueError, match="column 'nope'"):
        cli.main(["embed", "--input", str(csv_path), "--column", "nope", "--out", str(tmp_path / "x.npy")])
    with pytest.raises(ValueError, match="--out must end"):
        cli.main(["embed", "--input", str(txt), "--out", str(tmp_path / "x.csv")])

    assert cli.main(["export", "--out", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "assets.extra" / "identity.json").read_text())["dim"] == DIM


def test_cli_identity(tiny, monkeypatch, capsys):
    from tfsr.text import cli

    monkeypatch.setattr(cli, "load_text_encoder", lambda weights_dir, max_length: tiny)
    assert cli.main(["identity"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny-random(5)"


def test_dispatch_from_tfsr_cli():
    from tfsr import cli

    assert cli.COMMANDS["encode-text"][:2] == ("tfsr.text.cli", "main")
