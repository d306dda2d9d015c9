"""tfsr: unified multi-domain search & recommendation CTR models with cold-start transfer.

TensorFlow Recommenders needs Keras 2 (``tf-keras``). Importing :mod:`tfsr` selects it by
setting ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported. If TensorFlow was already
imported with Keras 3, that choice can no longer be made and we fail loudly instead of
building models with the wrong Keras.
"""

import os
import sys

__version__ = "0.1.0"

_KERAS_HINT = (
    "tfsr needs Keras 2 (tf-keras), but TensorFlow was already imported with Keras 3. "
    "Either `import tfsr` before `import tensorflow`, or set the environment variable "
    "TF_USE_LEGACY_KERAS=1 before starting Python (e.g. `export TF_USE_LEGACY_KERAS=1`)."
)


def _select_legacy_keras() -> None:
    tf_already_loaded = "tensorflow" in sys.modules
    was_set = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if tf_already_loaded and not was_set:
        keras_module = sys.modules["tensorflow"].keras
        if not keras_module.__name__.startswith("tf_keras"):
            raise ImportError(_KERAS_HINT)


_select_legacy_keras()
