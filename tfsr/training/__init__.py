"""Training workflows: pretraining, cold-start fine-tuning and evaluation (``tfsr train|finetune|evaluate``).

* :mod:`tfsr.training.config` — :class:`TrainConfig`: JSON config file + flag overrides;
* :mod:`tfsr.training.loop` — :class:`Trainer`: ``model.fit`` per epoch with exact mid-epoch resume;
* :mod:`tfsr.training.callbacks` — the run's Keras callbacks: resumable checkpoints, NaN/Inf stop, best
  epoch (usable with a plain ``model.fit``); :mod:`tfsr.training.progress` — progress lines and history;
* :mod:`tfsr.training.workflows` — build / load models, run a stage, evaluate and report;
* :mod:`tfsr.training.cli` — the command-line entry points.

See ``docs/TRAINING.md``.
"""

from tfsr.training.config import FINETUNE_DEFAULTS, FREEZE_LEVELS, TrainConfig  # noqa: F401
