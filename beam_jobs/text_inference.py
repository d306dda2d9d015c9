"""Beam RunInference support for the frozen text encoder.

Beam's ``TFModelHandlerTensor`` imports ``tensorflow_hub`` and calls ``model(tf.stack(batch))``, which
does not fit a string-in, dict-out SavedModel signature (docs/BEAM.md), so this is a small
:class:`~apache_beam.ml.inference.base.ModelHandler` of our own around the ``serving_default``
signature written by :func:`tfsr.text.export_text_encoder` (``texts`` [None] string ->
``embeddings`` [None, dim] float32).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from beam_jobs.saved_model_handler import SIGNATURE, SavedModelSignatureHandler

from apache_beam.ml.inference.base import PredictionResult

INPUT_NAME = "texts"
OUTPUT_NAME = "embeddings"


class TextEncoderModelHandler(SavedModelSignatureHandler):
    """Embeds batches of texts with an exported text-encoder SavedModel.

    Within a batch, texts are encoded in chunks of similar length (sorted by length) so a
    Transformer encoder pads little; results come back in the input order.

    Args:
      saved_model_dir: the encoder SavedModel (local path or a Beam filesystem URL such as gs://).
      min_batch_size / max_batch_size: Beam's batching bounds for RunInference.
      chunk_size: texts per encoder call inside one batch.
    """

    def __init__(
        self, saved_model_dir: str, min_batch_size: int = 16, max_batch_size: int = 512, chunk_size: int = 64
    ):
        super().__init__(saved_model_dir, min_batch_size, max_batch_size, "tfsr_text_encoder")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size

    def run_inference(
        self, batch: Sequence[str], model: Any, inference_args: Mapping[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        import numpy as np
        import tensorflow as tf

        signature = model.signatures[SIGNATURE]
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        embeddings: list[np.ndarray | None] = [None] * len(batch)
        for start in range(0, len(order), self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            texts = tf.constant([batch[i] for i in chunk], dtype=tf.string)
            output = signature(**{INPUT_NAME: texts})[OUTPUT_NAME].numpy()
            for i, vector in zip(chunk, output, strict=True):
                embeddings[i] = vector.astype(np.float32)
        return [PredictionResult(text, vector) for text, vector in zip(batch, embeddings, strict=True)]


def saved_model_dim(saved_model_dir: str) -> int:
    """The embedding width of an exported text encoder, read from its signature."""
    handler = TextEncoderModelHandler(saved_model_dir)
    signature = handler.load_model().signatures[SIGNATURE]
    dim = signature.structured_outputs[OUTPUT_NAME].shape[-1]
    if dim is None:
        raise ValueError(f"{saved_model_dir}: the {OUTPUT_NAME!r} output has no static width")
    return int(dim)
