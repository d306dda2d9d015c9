"""Export a trained tfsr model as a TF Serving SavedModel (docs/SERVING.md).

Layout written (TF Serving's, so the stock ``tensorflow_model_server`` and ``serving/server.py`` load it)::

    <export_base>/<model_name>/<version>/
      saved_model.pb, fingerprint.pb, variables/
      assets/                      vocabularies (the model's lookup files and the samples' vocab/*.txt)
      assets.extra/tf_serving_warmup_requests   PredictionLog records replayed at load time
      assets.extra/tfsr_export.json             feature spec, text encoder identity, table sizes

Signatures:

* ``serving_default`` (predict): ``examples`` ``[None]`` string of serialized ``tf.train.Example``s carrying
  the **raw** features -> ``ctr`` ``[None]`` float32, ``gate_weights`` ``[None, 3, 3]`` float32;
* ``predict_raw`` (predict): one named tensor per raw feature (``FeatureSpec.serving_tensor_specs()``;
  varlen features dense ``[None, L]`` padded with ``""``) -> the same outputs, for JSON clients;
* ``classify`` (method ``tensorflow/serving/classify``): ``inputs`` ``[None]`` serialized examples ->
  ``scores`` ``[None, 2]`` (P(no click), P(click)) and ``classes`` ``[None, 2]`` (``"0"``, ``"1"``).

With a retrieval model (``export_model(..., retrieval_model=...)``, ``tfsr export --retrieval_model_dir``)
the same SavedModel also holds an index of every catalogue item (``<samples_dir>/items``: its
candidate-tower embeddings in a ``tfrs.layers.factorized_top_k.BruteForce`` layer, and the item features the
ranker needs, all variables) and two more predict signatures over the raw *context* features (the raw
features whose entity is not ``item``: ``domain``, ``user_id``, ``query_id``, ``query_text`` ``[None]``
strings) plus ``k`` (scalar int32; ``K = min(k, catalogue size)``, ``k <= 0`` is INVALID_ARGUMENT):

* ``retrieve``: -> ``item_ids`` ``[None, K]`` string and ``scores`` ``[None, K]`` float32 (the dot product of
  the context and item embeddings), best first;
* ``retrieve_and_rank``: the top-K retrieved items re-scored by the ranking model on their full features ->
  ``item_ids``, ``ctr``, ``retrieval_scores`` ``[None, K]`` and ``gate_weights`` ``[None, K, 3, 3]``, by
  ``ctr`` descending.

All preprocessing is in the graph: ``tf.io.parse_example`` with the raw parse spec, the model's vocabulary
lookups, and the text aspect: :class:`tfsr.text.lookup.TextLookup`, the same lookup that training applies to
key-mode samples — the tables of ``<samples_dir>/text_embeddings`` (a ``MutableHashTable`` text -> row and
an embedding matrix, both variables) with an in-graph fallback to the text encoder for texts the table does
not hold (deduplicated within the request with ``tf.unique``); an empty text embeds to zeros. Only core TF
and TF Text ops end up in the graph.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr import contract, data, layout
from tfsr.features import Feature, FeatureSpec
from tfsr.text.lookup import TextEmbedder, TextLookup, read_text_embeddings
from tfsr.versions import stack_versions

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

log = logging.getLogger(__name__)

SERVING_DEFAULT = "serving_default"
PREDICT_RAW = "predict_raw"
CLASSIFY = "classify"
RETRIEVE = contract.RETRIEVE_SIGNATURE
RETRIEVE_AND_RANK = contract.RETRIEVE_AND_RANK_SIGNATURE
CLASSIFY_METHOD = "tensorflow/serving/classify"
PREDICT_METHOD = "tensorflow/serving/predict"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_INFO_FILE = "tfsr_export.json"
OUTPUTS = ("ctr", "gate_weights")
K_INPUT = contract.RETRIEVAL_K_INPUT  # the number of items a retrieval signature returns (scalar int32)
RETRIEVE_OUTPUTS = ("item_ids", "scores")
RETRIEVE_AND_RANK_OUTPUTS = ("item_ids", "ctr", "retrieval_scores", "gate_weights")
DEFAULT_K = 10  # the index layer's default k (every signature passes its own)

__all__ = [
    "CLASSIFY",
    "PREDICT_RAW",
    "RETRIEVE",
    "RETRIEVE_AND_RANK",
    "SERVING_DEFAULT",
    "CatalogueIndex",
    "ServingModule",
    "TextEmbedder",
    "TextLookup",
    "build_catalogue",
    "context_features",
    "export_model",
    "list_versions",
    "main",
    "read_text_embeddings",
]


# --------------------------------------------------------------------------- the catalogue
def context_features(spec: FeatureSpec) -> list[Feature]:
    """The raw features of a request's context (entity not ``item``): the retrieval signatures' inputs."""
    return [f for f in spec.raw_features if f.entity != "item"]


def _item_model_features(spec: FeatureSpec) -> list[Feature]:
    """The ranker's item inputs (``spec.model_features`` of entity ``item``), which the catalogue holds."""
    return [f for f in spec.model_features if f.entity == "item"]


class CatalogueIndex(tf.Module):
    """Every catalogue item inside the SavedModel: the retrieval index and the items' ranker features.

    Args:
      item_ids: ``[M]`` item ids (bytes), the catalogue's order.
      embeddings: ``[M, D]`` float32 candidate-tower embeddings, row i of item i.
      features: feature name -> ``[M, ...]`` array, or a ``tf.RaggedTensor`` ``[M, None]`` for a varlen
        feature: the items' model features (ids, text embeddings, genres, decades) that the ranker reads.

    Everything is a non-trainable variable (``variables/``, not graph constants): the index is a
    ``tfrs.layers.factorized_top_k.BruteForce`` layer indexed with the embeddings and the row numbers
    0..M-1, the row numbers gather the ids and the features; a varlen feature is kept as its ragged
    components (flat values and row splits).
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        features: Mapping[str, np.ndarray | tf.RaggedTensor],
    ):
        super().__init__(name="catalogue")
        item_ids = np.asarray(item_ids, dtype=object)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if item_ids.ndim != 1 or not item_ids.size:
            raise ValueError(f"the catalogue needs a non-empty [M] array of item ids, got {item_ids.shape}")
        if embeddings.ndim != 2 or embeddings.shape[0] != item_ids.size:
            raise ValueError(
                f"the catalogue's embeddings must be [{item_ids.size}, D], got {list(embeddings.shape)}"
            )
        self.size = int(item_ids.size)
        self.dim = int(embeddings.shape[1])
        self.item_ids = tf.Variable(tf.constant(item_ids, tf.string), trainable=False, name="item_ids")
        self.index = tfrs.layers.factorized_top_k.BruteForce(k=min(DEFAULT_K, self.size), name="index")
        self.index.index(tf.constant(embeddings), tf.range(self.size, dtype=tf.int32))
        self.dense = {}
        self.ragged_values = {}
        self.ragged_splits = {}
        for name, value in features.items():
            if isinstance(value, tf.RaggedTensor):
                rows = int(value.nrows())
                self.ragged_values[name] = tf.Variable(
                    value.flat_values, trainable=False, name=f"{name}_values"
                )
                self.ragged_splits[name] = tf.Variable(
                    tf.cast(value.row_splits, tf.int64), trainable=False, name=f"{name}_row_splits"
                )
            else:
                value = tf.constant(value)
                rows = int(value.shape[0])
                self.dense[name] = tf.Variable(value, trainable=False, name=name)
            if rows != self.size:
                raise ValueError(f"catalogue feature {name!r} has {rows} rows, the catalogue {self.size}")

    def top_k(self, queries: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``[B, D]`` context embeddings -> ``(scores [B, K], rows [B, K] int32)``, best first,
        ``K = min(k, M)``; ``k <= 0`` fails (InvalidArgumentError)."""
        k = tf.convert_to_tensor(k, tf.int32)
        check = tf.debugging.assert_positive(
            k, message=f"k must be a positive number of items (the catalogue holds {self.size})"
        )
        with tf.control_dependencies([check]):
            k = tf.minimum(k, self.size)
        scores, rows = self.index(tf.cast(queries, tf.float32), k=k)
        return scores, rows

    def features(self, rows: tf.Tensor) -> dict:
        """The items' model features at catalogue rows ``rows`` ``[N]`` (varlen ones ragged ``[N, None]``)."""
        out = {name: tf.gather(value, rows) for name, value in self.dense.items()}
        for name, values in self.ragged_values.items():
            ragged = tf.RaggedTensor.from_row_splits(values, self.ragged_splits[name], validate=False)
            out[name] = tf.gather(ragged, rows)
        return out


def build_catalogue(
    retrieval_model,
    spec: FeatureSpec,
    samples_dir: str | os.PathLike,
    text_lookup: TextLookup,
    batch_size: int = 4096,
) -> CatalogueIndex:
    """The :class:`CatalogueIndex` of every item of ``<samples_dir>/items`` (:func:`tfsr.data.make_items_dataset`).

    One pass over the catalogue: each batch goes through `text_lookup` (the export's own, so an item's
    title embedding is the one ``serving_default`` computes for it), then `retrieval_model`'s candidate
    tower (``candidate_embeddings``), and its ranker features (``spec.model_features`` of the item) are kept.
    """
    wanted = _item_model_features(spec)
    ids, embeddings = [], []
    parts: dict[str, list] = {f.name: [] for f in wanted}
    for raw in data.make_items_dataset(samples_dir, spec, batch_size):
        features = text_lookup(raw)
        ids.append(features["item_id"].numpy())
        embeddings.append(np.asarray(retrieval_model.candidate_embeddings(features, training=False)))
        for f in wanted:
            parts[f.name].append(features[f.name])
    if not ids:
        raise ValueError(f"the item catalogue of {samples_dir} is empty")
    columns = {}
    for f in wanted:
        if f.varlen:
            columns[f.name] = tf.concat(parts[f.name], axis=0)
        else:
            columns[f.name] = np.concatenate([np.asarray(v) for v in parts[f.name]], axis=0)
    return CatalogueIndex(np.concatenate(ids), np.concatenate(embeddings), columns)


# --------------------------------------------------------------------------- the serving module
class ServingModule(tf.Module):
    """What gets saved: the model, the text embedders, the vocabulary assets and the signatures.

    Args:
      model: callable ``model(features, training=False) -> {"ctr", "gate_weights", ...}`` over
        ``spec.model_features``.
      spec: the feature specification.
      text_lookup: computes the derived text features from their ``source`` raw features.
      vocabulary_files: feature name -> vocabulary file, saved as assets.
      retrieval_model: a retrieval model (``context_embeddings(features) -> [B, D]``), with `catalogue`:
        adds the ``retrieve`` and ``retrieve_and_rank`` signatures.
      catalogue: the :class:`CatalogueIndex` of `retrieval_model` (:func:`build_catalogue`).
    """

    def __init__(
        self,
        model,
        spec: FeatureSpec,
        text_lookup: TextLookup,
        vocabulary_files: Mapping[str, str] | None = None,
        retrieval_model=None,
        catalogue: CatalogueIndex | None = None,
    ):
        super().__init__(name="tfsr_serving")
        if (retrieval_model is None) != (catalogue is None):
            raise ValueError("a retrieval model and its catalogue go together: pass both or neither")
        self.model = model
        self.text_lookup = text_lookup
        self.vocabulary_files = {k: tf.saved_model.Asset(str(v)) for k, v in (vocabulary_files or {}).items()}
        self._spec = spec
        self._parse_spec = spec.parse_spec(roles=("raw",))
        self._raw_specs = spec.serving_tensor_specs()

        self.serve_examples = tf.function(
            self._serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")]
        )
        self.predict_raw = tf.function(self._predict_raw, input_signature=[self._raw_specs])
        self.classify = tf.function(
            self._classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
        )
        self.retrieval_model = retrieval_model
        self.catalogue = catalogue
        self._context_features = context_features(spec)
        if catalogue is not None:
            context_specs = {
                **{f.name: self._raw_specs[f.name] for f in self._context_features},
                K_INPUT: tf.TensorSpec([], tf.int32, name=K_INPUT),
            }
            self.retrieve = tf.function(self._retrieve, input_signature=[context_specs])
            self.retrieve_and_rank = tf.function(self._retrieve_and_rank, input_signature=[context_specs])

    # the pieces, usable eagerly too
    def model_features(self, raw: Mapping[str, tf.Tensor]) -> dict:
        """Raw features (varlen ones ragged) -> the model's input features."""
        with_text = self.text_lookup(raw)
        return {f.name: with_text[f.name] for f in self._spec.model_features}

    def score_raw(self, raw: Mapping[str, tf.Tensor]) -> dict:
        return self._score(self.model_features(raw))

    def _score(self, features: Mapping[str, tf.Tensor]) -> dict:
        out = self.model(features, training=False)
        ctr = tf.reshape(tf.cast(out["ctr"], tf.float32), [-1])
        gates = tf.cast(out["gate_weights"], tf.float32)
        return {"ctr": tf.identity(ctr, name="ctr"), "gate_weights": tf.identity(gates, name="gate_weights")}

    def _parse(self, serialized):
        return tf.io.parse_example(serialized, self._parse_spec)

    def _serve_examples(self, examples):
        return self.score_raw(self._parse(examples))

    def _from_tensors(self, inputs, features: Sequence[Feature]) -> dict:
        """Named serving tensors -> raw features (a varlen one from ``[B, L]`` padded to ragged)."""
        raw = {}
        for f in features:
            value = inputs[f.name]
            if f.varlen:
                value = tf.RaggedTensor.from_tensor(
                    value, padding="" if f.dtype == "string" else None, row_splits_dtype=tf.int64
                )
            raw[f.name] = value
        return raw

    def _predict_raw(self, inputs):
        return self.score_raw(self._from_tensors(inputs, self._spec.raw_features))

    def _classify(self, inputs):
        ctr = self.score_raw(self._parse(inputs))["ctr"]
        scores = tf.stack([1.0 - ctr, ctr], axis=1)
        classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(ctr)[0], 1])
        return {"scores": tf.identity(scores, name="scores"), "classes": tf.identity(classes, name="classes")}

    # retrieval
    def context_model_features(self, raw: Mapping[str, tf.Tensor]) -> dict:
        """Raw context features -> the model features of the context (query text embedded once per row)."""
        with_text = self.text_lookup(raw)
        return {f.name: with_text[f.name] for f in self._spec.model_features if f.entity != "item"}

    def _top_k(self, context: Mapping[str, tf.Tensor], k) -> tuple[tf.Tensor, tf.Tensor]:
        queries = self.retrieval_model.context_embeddings(context, training=False)
        return self.catalogue.top_k(queries, k)

    def _retrieve(self, inputs):
        context = self.context_model_features(self._from_tensors(inputs, self._context_features))
        scores, rows = self._top_k(context, inputs[K_INPUT])
        item_ids = tf.gather(self.catalogue.item_ids, rows)
        return {
            "item_ids": tf.identity(item_ids, name="item_ids"),
            "scores": tf.identity(scores, name="scores"),
        }

    def _retrieve_and_rank(self, inputs):
        context = self.context_model_features(self._from_tensors(inputs, self._context_features))
        retrieval_scores, rows = self._top_k(context, inputs[K_INPUT])
        shape = tf.shape(rows)  # [B, K]
        # each request row's context repeated K times, next to its K retrieved items' features
        repeat = tf.repeat(tf.range(shape[0]), shape[1])
        features = {name: tf.gather(value, repeat) for name, value in context.items()}
        features.update(self.catalogue.features(tf.reshape(rows, [-1])))
        scored = self._score({f.name: features[f.name] for f in self._spec.model_features})
        ctr = tf.reshape(scored["ctr"], shape)
        gates = tf.reshape(
            scored["gate_weights"], tf.concat([shape, tf.shape(scored["gate_weights"])[1:]], 0)
        )
        order = tf.argsort(ctr, axis=1, direction="DESCENDING", stable=True)
        return {
            "item_ids": tf.identity(
                tf.gather(tf.gather(self.catalogue.item_ids, rows), order, batch_dims=1), name="item_ids"
            ),
            "ctr": tf.identity(tf.gather(ctr, order, batch_dims=1), name="ctr"),
            "retrieval_scores": tf.identity(
                tf.gather(retrieval_scores, order, batch_dims=1), name="retrieval_scores"
            ),
            "gate_weights": tf.identity(tf.gather(gates, order, batch_dims=1), name="gate_weights"),
        }

    def signatures(self) -> dict:
        sigs = {
            SERVING_DEFAULT: self.serve_examples.get_concrete_function(),
            PREDICT_RAW: self.predict_raw.get_concrete_function(),
            CLASSIFY: self.classify.get_concrete_function(),
        }
        if self.catalogue is not None:
            sigs[RETRIEVE] = self.retrieve.get_concrete_function()
            sigs[RETRIEVE_AND_RANK] = self.retrieve_and_rank.get_concrete_function()
        return sigs

    @property
    def catalogue_size(self) -> int | None:
        return self.catalogue.size if self.catalogue is not None else None


# --------------------------------------------------------------------------- export
def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Integer version directories under ``<export_base>/<model_name>`` (temporary directories ignored)."""
    path = pathlib.Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def _default_warmup_records(spec: FeatureSpec, samples_dir) -> list[dict]:
    def vocab(name, fallback):
        if samples_dir is not None:
            try:
                values = layout.read_vocab(samples_dir, name)
                if values:
                    return values
            except FileNotFoundError:
                pass
        return fallback

    users = vocab("user_id", ["warmup_user"])
    items = vocab("item_id", ["warmup_item"])
    genres = vocab("item_genres", [])
    decades = vocab("item_decade", [""])
    queries = vocab("query_id", ["warmup query"])
    records = []
    for i, domain in enumerate(spec.domains.names):
        search = spec.domains[domain].kind == "search"
        query = queries[i % len(queries)] if search else ""
        record = {
            "domain": domain,
            "user_id": users[i % len(users)],
            "item_id": items[i % len(items)],
            "item_title": "",
            "item_genres": genres[:2],
            "item_decade": decades[0],
            "query_id": query,
            "query_text": query,
        }
        records.append({k: v for k, v in record.items() if k in spec})
    return records


def _predict_log(model_name: str, signature: str, inputs: Mapping[str, tf.Tensor | np.ndarray]) -> bytes:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
    )
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    ).SerializeToString()


def _write_warmup(
    path: pathlib.Path, model_name: str, spec: FeatureSpec, records: Sequence[dict], candidates: int = 64
) -> int:
    """PredictionLog records for ``serving_default``: a single example, then one query x `candidates` items.

    None for the retrieval signatures: their scalar ``k`` has no batch dimension, which the stock model
    server's ``--enable_batching`` refuses, and a failing warmup request would fail the whole version."""
    serialized = [spec.to_example(r, roles=("raw",)).SerializeToString() for r in records]
    logs = [
        _predict_log(model_name, SERVING_DEFAULT, {"examples": tf.constant(batch, tf.string)})
        for batch in (serialized[:1], [serialized[i % len(serialized)] for i in range(candidates)])
    ]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for entry in logs:
            writer.write(entry)
    return len(logs)


def _set_method_names(export_dir: pathlib.Path, methods: Mapping[str, str]) -> None:
    """tf.saved_model.save writes every signature as `predict`; TF Serving's Classify needs `classify`."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model import fingerprinting_utils

    pb_path = export_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(pb_path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            if name in meta_graph.signature_def:
                meta_graph.signature_def[name].method_name = method
    pb_path.write_bytes(saved_model.SerializeToString(deterministic=True))
    try:  # keep fingerprint.pb consistent with the edited saved_model.pb
        (export_dir / "fingerprint.pb").unlink(missing_ok=True)
        fingerprinting_utils.write_fingerprint(str(export_dir))
    except Exception as err:  # pragma: no cover - fingerprints are advisory
        log.warning("could not rewrite fingerprint.pb: %s", err)


def build_serving_module(
    model, spec: FeatureSpec, text_encoder=None, samples_dir=None, retrieval_model=None
) -> ServingModule:
    """The :class:`ServingModule` of a model: text tables from ``samples_dir``, encoder fallback; with a
    `retrieval_model`, the index of ``<samples_dir>/items`` (:func:`build_catalogue`)."""
    text_lookup = TextLookup.from_samples(samples_dir, spec, text_encoder)
    vocab_files = {}
    if samples_dir is not None:
        vocab_dir = pathlib.Path(samples_dir) / layout.VOCAB_DIR
        if vocab_dir.is_dir():
            vocab_files = {p.stem: str(p) for p in sorted(vocab_dir.glob("*.txt"))}
    catalogue = None
    if retrieval_model is not None:
        if samples_dir is None:
            raise ValueError("exporting a retrieval model needs samples_dir: its items/ are the catalogue")
        catalogue = build_catalogue(retrieval_model, spec, samples_dir, text_lookup)
    return ServingModule(model, spec, text_lookup, vocab_files, retrieval_model, catalogue)


def _model_domains(model) -> list[str] | None:
    registry = getattr(model, "domain_registry", None)
    return list(registry.names) if registry is not None else None


def retrieval_domains(model, retrieval_model, spec: FeatureSpec) -> list[str]:
    """The domains both the ranker and the retrieval model know (a model without a registry: the spec's)."""
    known = [_model_domains(m) or spec.domains.names for m in (model, retrieval_model)]
    return [d for d in spec.domains.names if d in known[0] and d in known[1]]


def export_model(
    model,
    spec: FeatureSpec,
    text_encoder,
    export_base: str | os.PathLike,
    model_name: str,
    version: int | None = None,
    samples_dir: str | os.PathLike | None = None,
    warmup_records: Iterable[Mapping] | None = None,
    retrieval_model=None,
) -> pathlib.Path:
    """Exports `model` as ``<export_base>/<model_name>/<version>/`` for TF Serving and returns that path.

    Args:
      model: a tfsr model (``model(features, training=False)`` -> dict with ``ctr`` and ``gate_weights``).
      spec: its feature specification.
      text_encoder: the frozen text encoder used for texts missing from the precomputed tables, or None.
      export_base: base directory (``saved_models``).
      model_name: the served model's name.
      version: integer version; None takes the next one after the highest existing version.
      samples_dir: the samples directory whose ``text_embeddings/`` and ``vocab/`` go into the export.
      warmup_records: raw records for ``assets.extra/tf_serving_warmup_requests`` (default: a few built
        from the vocabularies, one per domain).
      retrieval_model: a trained retrieval model (``tfsr.models.RetrievalModel``) of the same feature spec:
        adds the ``retrieve`` and ``retrieve_and_rank`` signatures over an index of every item of
        ``<samples_dir>/items`` (needs `samples_dir`).

    The version is written to a temporary sibling directory and renamed into place, so a model server
    polling the base path never sees half a version.
    """
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"model_name must be a plain directory name, got {model_name!r}")
    model_dir = pathlib.Path(export_base) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        existing = list_versions(model_dir)
        version = existing[-1] + 1 if existing else 1
    if int(version) < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    final = model_dir / str(int(version))
    if final.exists():
        raise FileExistsError(f"{final} already exists; pick another version or leave version=None")

    module = build_serving_module(model, spec, text_encoder, samples_dir, retrieval_model)
    records = (
        list(warmup_records) if warmup_records is not None else _default_warmup_records(spec, samples_dir)
    )
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        signatures = module.signatures()
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        _set_method_names(tmp, {CLASSIFY: CLASSIFY_METHOD})
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        _write_warmup(extra / WARMUP_FILE, model_name, spec, records)
        methods = {name: PREDICT_METHOD for name in signatures} | {CLASSIFY: CLASSIFY_METHOD}
        info = {
            "model_name": model_name,
            "version": int(version),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": stack_versions(),
            "signatures": methods,
            "text_encoder": dict(getattr(text_encoder, "identity", {}) or {})
            if text_encoder is not None
            else None,
            "text_tables": module.text_lookup.table_sizes,
            "samples_dir": str(samples_dir) if samples_dir is not None else None,
            "feature_spec": spec.to_json(),
        }
        if module.catalogue is not None:
            info["retrieval"] = {
                "catalogue_items": module.catalogue.size,
                "embedding_dim": module.catalogue.dim,
                "index": "tfrs.layers.factorized_top_k.BruteForce",
                "model_type": getattr(getattr(retrieval_model, "config", None), "model_type", None),
                "retrieve_domains": _model_domains(retrieval_model) or spec.domains.names,
                "retrieve_and_rank_domains": retrieval_domains(model, retrieval_model, spec),
                "context_inputs": [f.name for f in context_features(spec)] + [K_INPUT],
            }
        (extra / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s version %s to %s", model_name, version, final)
    return final


# --------------------------------------------------------------------------- CLI
def _load_encoder(kind: str, spec: FeatureSpec):
    if kind == "none":
        return None
    import tfsr.text as text

    if kind == "tiny":
        return text.tiny_text_encoder(dim=spec.text_dim)
    return text.load_text_encoder()


def main(argv: list[str] | None = None) -> int:
    """``tfsr export``: a trained model directory -> ``<export_base>/<name>/<version>/``."""
    parser = argparse.ArgumentParser(prog="tfsr export", description=main.__doc__)
    parser.add_argument(
        "--model_dir",
        required=True,
        help="trained model (tfsr.models.save_model), or a `tfsr train/finetune` run directory",
    )
    parser.add_argument("--samples_dir", help="samples directory: text embedding tables, vocabularies, spec")
    parser.add_argument("--export_base", default="saved_models", help="TF Serving base directory")
    parser.add_argument("--name", default="tfsr", help="served model name")
    parser.add_argument("--version", type=int, default=None, help="integer version (default: next)")
    parser.add_argument(
        "--text_encoder",
        choices=["minilm", "tiny", "none"],
        default="minilm",
        help="encoder for texts missing from the precomputed tables (default: minilm)",
    )
    parser.add_argument(
        "--retrieval_model_dir",
        help="a trained retrieval model (or its run directory): adds the retrieve and retrieve_and_rank "
        "signatures over every item of <samples_dir>/items (needs --samples_dir)",
    )
    args = parser.parse_args(argv)
    if args.retrieval_model_dir and not args.samples_dir:
        parser.error("--retrieval_model_dir needs --samples_dir (its items/ are the catalogue)")

    from tfsr.models import RetrievalModel, load_model  # the CLI wires stages; serving/ never imports models

    def resolve(path: str) -> pathlib.Path:
        path = pathlib.Path(path)
        return path / "model" if (path / "model").is_dir() else path  # a run directory: its model/

    model_dir = resolve(args.model_dir)
    retrieval_model = None
    if args.retrieval_model_dir:
        retrieval_model = load_model(resolve(args.retrieval_model_dir))
        if not isinstance(retrieval_model, RetrievalModel):
            parser.error(
                f"--retrieval_model_dir {args.retrieval_model_dir} is not a retrieval model "
                f"(model_type {retrieval_model.config.model_type!r})"
            )
    spec_path = model_dir / layout.FEATURE_SPEC
    if spec_path.exists():
        spec = FeatureSpec.loads(spec_path.read_text(encoding="utf-8"))
    elif args.samples_dir:
        spec = layout.read_feature_spec(args.samples_dir)
    else:
        parser.error("no feature_spec.json in --model_dir: pass --samples_dir")
    model = load_model(model_dir)
    if isinstance(model, RetrievalModel):
        parser.error(
            f"--model_dir {args.model_dir} is a retrieval model: give the ranker, and the retrieval "
            "model as --retrieval_model_dir"
        )
    encoder = _load_encoder(args.text_encoder, spec)
    path = export_model(
        model,
        spec,
        encoder,
        args.export_base,
        args.name,
        args.version,
        args.samples_dir,
        retrieval_model=retrieval_model,
    )
    print(path)
    return 0
