"""A Beam RunInference ``ModelHandler`` base for our SavedModel signatures.

Beam's ``TFModelHandlerTensor`` imports ``tensorflow_hub`` and calls ``model(tf.stack(batch))``, which fits
neither a string-in text encoder nor a dict-of-features CTR model (docs/BEAM.md). Subclasses implement
``run_inference`` against ``model.signatures[self.signature]`` (``serving_default`` unless they name
another, such as ``retrieve``); this class loads the SavedModel, checks the signature is there, and carries
Beam's batching bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tfsr  # noqa: F401  (Keras 2 before TensorFlow)

from apache_beam.ml.inference.base import ModelHandler

SIGNATURE = "serving_default"


class SavedModelSignatureHandler(ModelHandler):
    """Loads a SavedModel with a ``serving_default`` (or `signature`) signature for RunInference.

    Args:
      saved_model_dir: the SavedModel (local path or a Beam/TF filesystem URL such as gs://).
      min_batch_size / max_batch_size: Beam's batching bounds for RunInference.
      metrics_namespace: namespace of Beam's inference metrics.
      signature: the signature the subclass calls; loading fails when the SavedModel has none of that name.
    """

    def __init__(
        self,
        saved_model_dir: str,
        min_batch_size: int,
        max_batch_size: int,
        metrics_namespace: str,
        signature: str = SIGNATURE,
    ):
        if not 0 < min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 0 < min_batch_size <= max_batch_size, got {min_batch_size}, {max_batch_size}"
            )
        self.saved_model_dir = saved_model_dir
        self.min_batch_size = min_batch_size
        self.max_batch_size = max_batch_size
        self.metrics_namespace = metrics_namespace
        self.signature = signature

    def load_model(self) -> Any:
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the TF Text ops the graphs use)

        loaded = tf.saved_model.load(self.saved_model_dir)
        if self.signature not in loaded.signatures:
            raise ValueError(
                f"{self.saved_model_dir} has no {self.signature!r} signature; found {list(loaded.signatures)}"
            )
        return loaded

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": self.min_batch_size, "max_batch_size": self.max_batch_size}

    def get_metrics_namespace(self) -> str:
        return self.metrics_namespace
