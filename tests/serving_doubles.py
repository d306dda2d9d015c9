"""Test doubles honouring the model and text-encoder contracts, for export/serving tests and benchmarks.

They let the exporter, the local server, the client and the serving benchmark be exercised without a
trained model: :class:`ContractModel` takes the model inputs of ``spec.model_features`` and returns
``{"ctr": [B], "logit": [B], "gate_weights": [B, 3, 3]}`` exactly like ``tfsr.models``;
:class:`HashingTextEncoder` maps ``[B]`` strings to ``[B, dim]`` L2-normalised bag-of-hashed-words vectors
with core TF ops only. :func:`write_samples_dir` writes the vocabularies and text-embedding tables of the
samples-directory layout (``tfsr.layout``) so the exporter finds what it finds in real runs.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr import layout
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.export import export_model
from tfsr.features import FeatureSpec

import tensorflow as tf

ID_FEATURES = ("user_id", "query_id", "item_id", "item_genres", "item_decade")

TOY_VOCABULARIES = {
    "user_id": [f"u{i}" for i in range(1, 21)],
    "query_id": ["space", "funny robots", "love story", "war", "animated fish"],
    "item_id": [f"m{i}" for i in range(1, 41)],
    "item_genres": ["Action", "Comedy", "Drama", "Animation", "Children", "Sci-Fi", "Romance"],
    "item_decade": ["1970s", "1980s", "1990s", "2000s", "2010s"],
}
TOY_TITLES = {f"m{i}": f"Movie number {i} ({1970 + i})" for i in range(1, 41)}


class HashingTextEncoder(tf.Module):
    """A deterministic text encoder over core TF ops: mean of hashed word vectors, L2-normalised.

    Args:
      dim: output width.
      buckets: number of hash buckets of the word table.
      seed: seed of the random word table.

    Input: ``[B]`` tf.string. Output: ``[B, dim]`` float32 (zeros for a text without words).
    """

    def __init__(self, dim: int = 16, buckets: int = 1024, seed: int = 0):
        super().__init__(name="hashing_text_encoder")
        self.dim = int(dim)
        self.buckets = int(buckets)
        self.table = tf.Variable(tf.random.stateless_normal([buckets, dim], seed=[seed, 7]), trainable=False)
        self.identity = {"name": "hashing-bow", "dim": self.dim, "buckets": self.buckets, "seed": seed}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        tokens = tf.strings.split(tf.strings.lower(texts))
        ids = tf.strings.to_hash_bucket_fast(tokens, self.buckets)
        vectors = tf.gather(self.table, ids.flat_values)
        summed = tf.math.unsorted_segment_sum(
            vectors, ids.value_rowids(), tf.shape(texts, out_type=tf.int64)[0]
        )
        return tf.math.l2_normalize(summed, axis=-1)


@tf.keras.utils.register_keras_serializable(package="tfsr_testing")
class ContractModel(tf.keras.Model):
    """A small CTR model over ``spec.model_features`` with the output contract of ``tfsr.models``.

    Args:
      spec: the feature specification.
      vocabularies: feature name -> vocabulary file path (or list of values) for the id/sparse features.
      dim: embedding width.
    """

    def __init__(
        self, spec: FeatureSpec, vocabularies: Mapping[str, str | Sequence[str]], dim: int = 8, **kwargs
    ):
        super().__init__(**kwargs)
        self.spec = spec
        self.dim = dim
        self.lookups = {}
        self.embeddings = {}
        for name in ID_FEATURES:
            self.lookups[name] = tf.keras.layers.StringLookup(
                vocabulary=vocabularies[name], num_oov_indices=1, name=f"{name}_lookup"
            )
            self.embeddings[name] = tf.keras.layers.Embedding(
                self.lookups[name].vocabulary_size(),
                dim,
                name=f"{name}_embedding",
                embeddings_initializer=tf.keras.initializers.RandomNormal(seed=len(name)),
            )
        self.domain_lookup = tf.keras.layers.StringLookup(vocabulary=spec.domains.names, num_oov_indices=1)
        self.domain_embedding = tf.keras.layers.Embedding(len(spec.domains) + 1, dim)
        self.text_projections = {
            f.name: tf.keras.layers.Dense(dim, name=f"{f.name}_projection") for f in spec.select(["derived"])
        }
        self.gate = tf.keras.layers.Dense(9, name="gate")
        self.hidden = tf.keras.layers.Dense(16, activation="relu", name="hidden")
        self.head = tf.keras.layers.Dense(1, name="head")

    def get_config(self):
        return {"dim": self.dim}

    def call(self, features, training=False):
        parts = [self.domain_embedding(self.domain_lookup(features["domain"]))]
        for name in ID_FEATURES:
            ids = self.lookups[name](features[name])
            if isinstance(ids, tf.RaggedTensor):
                vectors = tf.ragged.map_flat_values(self.embeddings[name], ids)
                counts = tf.cast(tf.maximum(ids.row_lengths(), 1), tf.float32)[:, None]
                parts.append(tf.reduce_sum(vectors, axis=1) / counts)
            else:
                parts.append(self.embeddings[name](ids))
        for name, projection in self.text_projections.items():
            parts.append(projection(features[name]))
        x = tf.concat(parts, axis=-1)
        gate_weights = tf.nn.softmax(tf.reshape(self.gate(x), [-1, 3, 3]), axis=-1)
        logit = tf.squeeze(self.head(self.hidden(tf.concat([x, tf.reshape(gate_weights, [-1, 9])], -1))), -1)
        return {"ctr": tf.sigmoid(logit), "logit": logit, "gate_weights": gate_weights}


def toy_spec(text_dim: int = 16) -> FeatureSpec:
    return FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=text_dim)


def write_samples_dir(
    samples_dir: str | pathlib.Path,
    spec: FeatureSpec,
    encoder,
    vocabularies: Mapping[str, Sequence[str]] = TOY_VOCABULARIES,
    titles: Mapping[str, str] = TOY_TITLES,
    queries: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes ``feature_spec.json``, ``vocab/*.txt`` and ``text_embeddings/*.tfrecord.gz`` like the Beam job."""
    samples_dir = pathlib.Path(samples_dir)
    for name, values in vocabularies.items():
        path = layout.vocab_path(samples_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{v}\n" for v in values), encoding="utf-8")
    (samples_dir / layout.FEATURE_SPEC).write_text(spec.dumps(), encoding="utf-8")
    texts_by_feature = {
        "query_text": list(queries if queries is not None else vocabularies.get("query_id", [])),
        "item_title": list(titles.values()),
    }
    for feature, texts in texts_by_feature.items():
        path = layout.text_embeddings_path(samples_dir, feature)
        path.parent.mkdir(parents=True, exist_ok=True)
        vectors = encoder(tf.constant(texts, tf.string)).numpy() if texts else []
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for text, vector in zip(texts, vectors, strict=True):
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "text": tf.train.Feature(
                                bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])
                            ),
                            "embedding": tf.train.Feature(
                                float_list=tf.train.FloatList(value=vector.tolist())
                            ),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    return samples_dir


def toy_items(n: int | None = None, seed: int = 0) -> list[dict]:
    """The toy catalogue: one raw item record per item of ``TOY_VOCABULARIES`` (the first `n`), its title
    from ``TOY_TITLES``, 0-3 genres and a decade drawn with `seed`."""
    import random

    rng = random.Random(seed)
    ids = TOY_VOCABULARIES["item_id"][:n]
    return [
        {
            "item_id": item,
            "item_title": TOY_TITLES[item],
            "item_genres": rng.sample(TOY_VOCABULARIES["item_genres"], rng.randint(0, 3)),
            "item_decade": rng.choice(TOY_VOCABULARIES["item_decade"]),
        }
        for item in ids
    ]


def write_items(samples_dir: str | pathlib.Path, spec: FeatureSpec, items: Sequence[Mapping]) -> pathlib.Path:
    """Writes the item catalogue ``items/part-00000-of-00001.tfrecord.gz`` (raw item features, item_id
    order) like the Beam job; returns its path."""
    path = pathlib.Path(layout.items_pattern(samples_dir).replace("part-*", "part-00000-of-00001"))
    path.parent.mkdir(parents=True, exist_ok=True)
    features = [f for f in spec.select(["raw"], entity="item") if f.dtype == "string"]
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for item in sorted(items, key=lambda r: r["item_id"]):
            values = {f.name: item.get(f.name, [] if f.varlen else f.default) for f in features}
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        name: tf.train.Feature(
                            bytes_list=tf.train.BytesList(
                                value=[
                                    v.encode("utf-8") for v in (value if isinstance(value, list) else [value])
                                ]
                            )
                        )
                        for name, value in values.items()
                    }
                )
            )
            writer.write(example.SerializeToString())
    return path


def build_contract_model(spec: FeatureSpec, samples_dir: str | pathlib.Path, dim: int = 8) -> ContractModel:
    """A :class:`ContractModel` whose lookups read the samples directory's vocabulary files."""
    vocab = {name: str(layout.vocab_path(samples_dir, name)) for name in ID_FEATURES}
    model = ContractModel(spec, vocab, dim=dim)
    return model


def build_toy_retrieval_model(spec: FeatureSpec, samples_dir: str | pathlib.Path, warm_only: bool = True):
    """A small untrained ``tfsr.models.RetrievalModel`` over the samples directory's vocabularies; with
    `warm_only` it knows the warm domains only (as after ``tfsr train``: the cold-start one is unknown)."""
    from tfsr.models import ModelConfig, build_model, warm_registry

    config = ModelConfig("retrieval", embedding_dim=8, tower_units=(16, 8), num_hash_bins=64)
    if warm_only:
        config = config.with_registry(warm_registry(spec.domains))
    vocabularies = {name: layout.read_vocab(samples_dir, name) for name in TOY_VOCABULARIES}
    return build_model(config, spec, vocabularies)


@dataclasses.dataclass
class ToyExport:
    """What :func:`export_toy_model` made: the spec, encoder, samples dir, model and the version dir (and
    the retrieval model and catalogue items when exported with retrieval)."""

    spec: FeatureSpec
    encoder: tf.Module
    samples_dir: pathlib.Path
    model: ContractModel
    path: pathlib.Path
    retrieval_model: tf.keras.Model | None = None
    items: list[dict] | None = None


def export_toy_model(
    root: str | pathlib.Path,
    text_dim: int = 16,
    encoder: tf.Module | None = None,
    model_name: str = "toy",
    export_base: str = "saved_models",
    with_text_tables: bool = True,
    retrieval_items: int | None = None,
) -> ToyExport:
    """Writes a toy samples dir under `root` and exports a :class:`ContractModel` from it.

    Args:
      encoder: the text encoder (default a :class:`HashingTextEncoder` of width `text_dim`).
      with_text_tables: pass the samples dir to the exporter, so texts resolve through the precomputed
        tables; False makes every text go through the in-graph encoder fallback.
      retrieval_items: with a number, also write a catalogue of that many items (:func:`toy_items`) and
        export the retrieval signatures with :func:`build_toy_retrieval_model` (needs the text tables).
    """
    root = pathlib.Path(root)
    spec = toy_spec(text_dim)
    encoder = encoder if encoder is not None else HashingTextEncoder(text_dim)
    samples = write_samples_dir(root / "samples", spec, encoder)
    model = build_contract_model(spec, samples)
    retrieval_model, items = None, None
    if retrieval_items is not None:
        items = toy_items(retrieval_items)
        write_items(samples, spec, items)
        retrieval_model = build_toy_retrieval_model(spec, samples)
    path = export_model(
        model,
        spec,
        encoder,
        root / export_base,
        model_name,
        samples_dir=samples if with_text_tables or retrieval_items is not None else None,
        retrieval_model=retrieval_model,
    )
    return ToyExport(spec, encoder, samples, model, path, retrieval_model, items)


def toy_records(n: int, seed: int = 0, domain: str = "search_tags") -> list[dict]:
    """Raw serving records (ids drawn from the toy vocabularies, a few unseen ones)."""
    import random

    rng = random.Random(seed)
    users = TOY_VOCABULARIES["user_id"] + ["u_unseen"]
    items = TOY_VOCABULARIES["item_id"] + ["m_unseen"]
    queries = TOY_VOCABULARIES["query_id"] + ["never typed before", ""]
    out = []
    for _ in range(n):
        item = rng.choice(items)
        query = rng.choice(queries) if domain.startswith("search") else ""
        out.append(
            {
                "domain": domain,
                "user_id": rng.choice(users),
                "query_id": query,
                "query_text": query,
                "item_id": item,
                "item_title": TOY_TITLES.get(item, "An unseen film about robots"),
                "item_genres": rng.sample(TOY_VOCABULARIES["item_genres"], rng.randint(0, 3)),
                "item_decade": rng.choice(TOY_VOCABULARIES["item_decade"]),
            }
        )
    return out


def serialize(spec: FeatureSpec, records: Sequence[Mapping]) -> tf.Tensor:
    """Raw records -> ``[B]`` serialized tf.Examples."""
    return tf.constant([spec.to_example(r, roles=("raw",)).SerializeToString() for r in records])


def in_memory_outputs(spec: FeatureSpec, model, encoder, records: Sequence[Mapping]) -> dict:
    """The model called directly, with the encoder's embeddings (zeros for an empty query): the parity reference."""
    raw = tf.io.parse_example(serialize(spec, records), spec.parse_spec(roles=("raw",)))
    features = {f.name: raw[f.name] for f in spec.model_features if f.role != "derived"}
    for f in spec.select(["derived"]):
        emb = encoder(raw[f.source])
        if spec[f.source].entity == "query":
            emb = emb * tf.cast(tf.strings.length(raw[f.source]) > 0, tf.float32)[:, None]
        features[f.name] = emb
    return model(features, training=False)


FORBIDDEN_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def tf_text_op_names() -> set[str]:
    """Names of the ops registered by TensorFlow Text's kernel libraries."""
    import os

    import tensorflow_text
    from tensorflow.python.framework import op_def_registry

    names: set[str] = set()
    for dirpath, _, files in os.walk(os.path.dirname(tensorflow_text.__file__)):
        for name in files:
            if name.endswith(".so") and name.startswith("_"):
                try:
                    library = tf.load_op_library(os.path.join(dirpath, name))
                except Exception:  # noqa: S112 - kernel-only libraries
                    continue
                names |= {
                    a
                    for a in dir(library)
                    if a[:1].isupper() and not hasattr(tf.raw_ops, a) and op_def_registry.get(a) is not None
                }
    return names


def classify_graph_ops(export_dir: str | pathlib.Path) -> dict[str, set[str]]:
    """All ops of a SavedModel (graph and function library): {"all", "core", "text", "other", "forbidden"}."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((pathlib.Path(export_dir) / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    functions: set[str] = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        ops |= {node.op for node in graph.node}
        for function in graph.library.function:
            functions.add(function.signature.name)
            ops |= {node.op for node in function.node_def}
    ops -= functions  # calls of library functions, whose bodies are listed above
    text = tf_text_op_names()
    core = {op for op in ops if hasattr(tf.raw_ops, op)}
    return {
        "all": ops,
        "core": core,
        "text": ops & text - core,
        "other": ops - core - text,
        "forbidden": ops & FORBIDDEN_OPS,
    }
