"""Building, saving and loading models."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

from tfsr.features import FeatureSpec, dummy_batch
from tfsr.models.base import MultiDomainModel
from tfsr.models.config import ModelConfig
from tfsr.models.registry import model_class

import tensorflow as tf

CONFIG_FILE = "model_config.json"
SPEC_FILE = "feature_spec.json"
VOCAB_FILE = "vocabularies.json"
WEIGHTS_PREFIX = "weights/weights"


def build_model(
    config: ModelConfig, spec: FeatureSpec, vocabularies: Mapping[str, Sequence[str]] | None = None
) -> MultiDomainModel:
    """Builds the `config.model_type` model and creates its variables (on a two-row dummy batch).

    The dummy batch takes its domain names from the model's own registry (`config.domains`, else the
    spec's), so a model that knows only some of the spec's domains (a single-domain model of
    `rec_comedy`) builds too.

    Args:
      config: the model configuration.
      spec: the feature specification.
      vocabularies: `feature -> values` (e.g. from `tfsr.layout.read_vocab`); features without one are hashed.

    Returns:
      a built, uncompiled `tfrs.models.Model` (a :class:`MultiDomainModel`).
    """
    model = model_class(config.model_type)(config, spec, vocabularies)
    model(dummy_batch(FeatureSpec(spec.features, model.domain_registry, spec.text_dim)))
    return model


def save_model(model: MultiDomainModel, path: str | pathlib.Path) -> pathlib.Path:
    """Saves config, feature spec, vocabularies (JSON) and weights (a `tf.train.Checkpoint`) under `path`.

    The weights are the model's only (no optimizer); for resumable training checkpoint
    `tf.train.Checkpoint(model=model, optimizer=model.optimizer)` yourself.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(model.config.dumps(), encoding="utf-8")
    (path / SPEC_FILE).write_text(model.spec.dumps(), encoding="utf-8")
    (path / VOCAB_FILE).write_text(json.dumps(model.get_config()["vocabularies"]), encoding="utf-8")
    tf.train.Checkpoint(model=model).write(str(path / WEIGHTS_PREFIX))
    return path


def load_model(path: str | pathlib.Path) -> MultiDomainModel:
    """Rebuilds a model saved by `save_model` (its class from `model_type`) and restores its weights."""
    path = pathlib.Path(path)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a saved tfsr model: {path / CONFIG_FILE} is missing")
    saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    # Models saved before the gate options existed used a fixed 1/sqrt(H) scale: keep their behaviour.
    saved.setdefault("gate_scale", None)
    saved.setdefault("learn_gate_scale", False)
    saved.setdefault("interactions", [])  # saved before the L2 interactions existed: none
    config = ModelConfig.from_json(saved)
    spec = FeatureSpec.loads((path / SPEC_FILE).read_text(encoding="utf-8"))
    vocabularies = json.loads((path / VOCAB_FILE).read_text(encoding="utf-8"))
    model = build_model(config, spec, vocabularies)
    status = tf.train.Checkpoint(model=model).read(str(path / WEIGHTS_PREFIX))
    status.assert_existing_objects_matched().expect_partial()
    return model
