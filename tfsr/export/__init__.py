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
from tfsr import layout
from tfsr.features import FeatureSpec
from tfsr.text.lookup import TextEmbedder, TextLookup, read_text_embeddings

import tensorflow as tf

log = logging.getLogger(__name__)

SERVING_DEFAULT = "serving_default"
PREDICT_RAW = "predict_raw"
CLASSIFY = "classify"
CLASSIFY_METHOD = "tensorflow/serving/classify"
PREDICT_METHOD = "tensorflow/serving/predict"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_INFO_FILE = "tfsr_export.json"
OUTPUTS = ("ctr", "gate_weights")

__all__ = [
    "CLASSIFY",
    "PREDICT_RAW",
    "SERVING_DEFAULT",
    "ServingModule",
    "TextEmbedder",
    "TextLookup",
    "export_model",
    "list_versions",
    "main",
    "read_text_embeddings",
]


# --------------------------------------------------------------------------- the serving module
class ServingModule(tf.Module):
    """What gets saved: the model, the text embedders, the vocabulary assets and the three signatures.

    Args:
      model: callable ``model(features, training=False) -> {"ctr", "gate_weights", ...}`` over
        ``spec.model_features``.
      spec: the feature specification.
      text_lookup: computes the derived text features from their ``source`` raw features.
      vocabulary_files: feature name -> vocabulary file, saved as assets.
    """

    def __init__(
        self,
        model,
        spec: FeatureSpec,
        text_lookup: TextLookup,
        vocabulary_files: Mapping[str, str] | None = None,
    ):
        super().__init__(name="tfsr_serving")
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

    # the pieces, usable eagerly too
    def model_features(self, raw: Mapping[str, tf.Tensor]) -> dict:
        """Raw features (varlen ones ragged) -> the model's input features."""
        with_text = self.text_lookup(raw)
        return {f.name: with_text[f.name] for f in self._spec.model_features}

    def score_raw(self, raw: Mapping[str, tf.Tensor]) -> dict:
        out = self.model(self.model_features(raw), training=False)
        ctr = tf.reshape(tf.cast(out["ctr"], tf.float32), [-1])
        gates = tf.cast(out["gate_weights"], tf.float32)
        return {"ctr": tf.identity(ctr, name="ctr"), "gate_weights": tf.identity(gates, name="gate_weights")}

    def _parse(self, serialized):
        return tf.io.parse_example(serialized, self._parse_spec)

    def _serve_examples(self, examples):
        return self.score_raw(self._parse(examples))

    def _predict_raw(self, inputs):
        raw = {}
        for f in self._spec.raw_features:
            value = inputs[f.name]
            if f.varlen:
                value = tf.RaggedTensor.from_tensor(
                    value, padding="" if f.dtype == "string" else None, row_splits_dtype=tf.int64
                )
            raw[f.name] = value
        return self.score_raw(raw)

    def _classify(self, inputs):
        ctr = self.score_raw(self._parse(inputs))["ctr"]
        scores = tf.stack([1.0 - ctr, ctr], axis=1)
        classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(ctr)[0], 1])
        return {"scores": tf.identity(scores, name="scores"), "classes": tf.identity(classes, name="classes")}

    def signatures(self) -> dict:
        return {
            SERVING_DEFAULT: self.serve_examples.get_concrete_function(),
            PREDICT_RAW: self.predict_raw.get_concrete_function(),
            CLASSIFY: self.classify.get_concrete_function(),
        }


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


def _write_warmup(
    path: pathlib.Path, model_name: str, spec: FeatureSpec, records: Sequence[dict], candidates: int = 64
) -> int:
    """PredictionLog records for ``serving_default``: a single example, then one query x `candidates` items."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    serialized = [spec.to_example(r, roles=("raw",)).SerializeToString() for r in records]
    batches = [serialized[:1], [serialized[i % len(serialized)] for i in range(candidates)]]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_DEFAULT)
            )
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log_record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log_record.SerializeToString())
    return len(batches)


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


def build_serving_module(model, spec: FeatureSpec, text_encoder=None, samples_dir=None) -> ServingModule:
    """The :class:`ServingModule` of a model: text tables from ``samples_dir``, encoder fallback."""
    text_lookup = TextLookup.from_samples(samples_dir, spec, text_encoder)
    vocab_files = {}
    if samples_dir is not None:
        vocab_dir = pathlib.Path(samples_dir) / layout.VOCAB_DIR
        if vocab_dir.is_dir():
            vocab_files = {p.stem: str(p) for p in sorted(vocab_dir.glob("*.txt"))}
    return ServingModule(model, spec, text_lookup, vocab_files)


def export_model(
    model,
    spec: FeatureSpec,
    text_encoder,
    export_base: str | os.PathLike,
    model_name: str,
    version: int | None = None,
    samples_dir: str | os.PathLike | None = None,
    warmup_records: Iterable[Mapping] | None = None,
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

    module = build_serving_module(model, spec, text_encoder, samples_dir)
    records = (
        list(warmup_records) if warmup_records is not None else _default_warmup_records(spec, samples_dir)
    )
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        _set_method_names(tmp, {CLASSIFY: CLASSIFY_METHOD})
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        _write_warmup(extra / WARMUP_FILE, model_name, spec, records)
        info = {
            "model_name": model_name,
            "version": int(version),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tfsr_version": tfsr.__version__,
            "tensorflow_version": tf.__version__,
            "signatures": {
                SERVING_DEFAULT: PREDICT_METHOD,
                PREDICT_RAW: PREDICT_METHOD,
                CLASSIFY: CLASSIFY_METHOD,
            },
            "text_encoder": dict(getattr(text_encoder, "identity", {}) or {})
            if text_encoder is not None
            else None,
            "text_tables": module.text_lookup.table_sizes,
            "samples_dir": str(samples_dir) if samples_dir is not None else None,
            "feature_spec": spec.to_json(),
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
    args = parser.parse_args(argv)

    from tfsr.models import load_model  # the CLI wires stages; serving/ never imports models

    model_dir = pathlib.Path(args.model_dir)
    if (model_dir / "model").is_dir():  # a run directory: its final model lives in model/
        model_dir = model_dir / "model"
    spec_path = model_dir / layout.FEATURE_SPEC
    if spec_path.exists():
        spec = FeatureSpec.loads(spec_path.read_text(encoding="utf-8"))
    elif args.samples_dir:
        spec = layout.read_feature_spec(args.samples_dir)
    else:
        parser.error("no feature_spec.json in --model_dir: pass --samples_dir")
    model = load_model(model_dir)
    encoder = _load_encoder(args.text_encoder, spec)
    path = export_model(model, spec, encoder, args.export_base, args.name, args.version, args.samples_dir)
    print(path)
    return 0
