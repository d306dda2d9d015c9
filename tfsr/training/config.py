"""Configuration of the training stages: one JSON file, overridable by command-line flags.

A run's configuration is a :class:`TrainConfig` (the loop: data, batch size, epochs, optimizer,
checkpointing, logging) holding the model's configuration as a plain dict (``model``), handed to
``tfsr.models.ModelConfig.from_json`` when the model is built. Precedence, lowest first:

1. the dataclass defaults below (for ``finetune``: :data:`FINETUNE_DEFAULTS`, sized for a slice of a few
   hundred rows — small batches, many epochs);
2. the ``--config FILE`` JSON (the same keys; unknown keys are an error, so typos do not pass silently);
3. explicit flags (``--batch_size 256``);
4. ``--set key=value`` pairs, for anything without a flag, including the model's fields
   (``--set model.gating=mean --set model.alignment_weight=0.1``); the value is parsed as JSON when it
   parses (numbers, booleans, lists), as a string otherwise.

The resolved configuration is written to ``<output_dir>/config.json``, so every run can be repeated.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from tfsr.contract import check_positive_int

FREEZE_LEVELS = ("L0", "L1", "L2_shared")
MONITORS = ("val_auc", "val_loss")


# The subdirectory of a run directory where a refit (TrainConfig.refit) trains.
REFIT_DIR = "refit"


@dataclasses.dataclass
class TrainConfig:
    """One training stage (``train`` = pretraining on the warm domains, ``finetune`` = cold start).

    Args:
      samples_dir: a samples directory written by ``tfsr preprocess`` (``tfsr.layout``).
      output_dir: the run directory (checkpoints/, tensorboard/, history.json, config.json, model/).
      model: ``ModelConfig`` fields as a dict (``train`` only; ``finetune`` keeps the pretrained model's).
      split: the split trained on (``pretrain_train``; ``coldstart_finetune`` for fine-tuning).
      domains: domains trained on; None = the warm domains (train) or the cold-start domains (finetune).
      domain_weights: optional {domain: sampling weight} for the input pipeline.
      batch_size, epochs: per stage; ``max_steps`` caps the global step (a resumed run continues to it).
      learning_rate: Adam's learning rate; None = the model config's ``learning_rate`` (or 1e-3).
      clipnorm: optional gradient clipping by norm.
      seed: seeds TensorFlow, numpy and the input shuffling (epoch e shuffles with seed + e).
      log_every: steps between progress lines, TensorBoard scalars and history points.
      checkpoint_every: steps between checkpoints (a checkpoint is also written at every epoch end).
      keep_checkpoints: how many checkpoints CheckpointManager keeps.
      pretrained: (finetune) a saved model or a pretraining run directory (its ``model/`` is used).
      freeze: (finetune) model levels to freeze, from ``L0``, ``L1``, ``L2_shared``. Empty for pretraining (it
        freezes nothing); :data:`FINETUNE_DEFAULTS` freezes all three: every pretrained weight is frozen and the new domain trains only its own rows (aspect gates, expert gate,
        tower, calibration), so fine-tuning leaves the warm domains' predictions exactly as they were.
        Leaving a level trainable lets the new domain's data move weights the warm domains share (logged).
      init_from: (finetune) a pretrained domain whose per-domain weights (gate vector, adaptive map, expert
        gate, tower) initialise the new domain's; None = fresh initialisation (gate at mean pooling, adaptive
        map at the shared map). A frozen L1 keeps the new domain's own aspect-gate rows trainable (it has no
        pretrained ones); every pretrained weight stays frozen.
      validation_split: the split scored at every epoch end for early stopping and best-epoch restore, carved
        from the training period (``pretrain_valid``; ``coldstart_valid`` for fine-tuning; never an
        evaluation split); None or "" = no validation (the last epoch is kept, no calibration).
      monitor: the validation metric: ``val_auc`` (mean of the per-domain AUCs, higher is better) or
        ``val_loss`` (mean of the per-domain log losses, lower is better).
      patience: epochs without improvement of ``monitor`` before training stops; None = run every epoch and
        still restore the best one.
      calibrate: after training, fit each trained domain's Platt scaling on the validation slice
        (``DomainCalibration``: rankings unchanged, CTRs calibrated); other domains keep theirs.
      refit: once validation has chosen the epoch and the calibration, train a fresh model (same seed) on
        ``split`` and ``validation_split`` together for that many epochs and keep it, with the chosen
        calibration, as the run's model: under a time split the validation rows are the newest training
        rows, the ones that matter most. The selection run stays in the run directory (``best/``,
        ``selection.json``); the refit trains under ``<output_dir>/refit/``. Ranking models only.
      evaluate: evaluate on the evaluation split(s) after training and write the report.
      eval_batch_size: batch size of evaluation.
      verbose: show a Keras progress bar per epoch (otherwise a log line every ``log_every`` steps).
      auto_shard: how the input is split between workers under ``TF_CONFIG`` (multi-worker):
        ``data`` (default; every worker reads everything and keeps its share of each global batch),
        ``file`` (disjoint files; needs at least as many files as workers), ``auto`` or ``off``.
    """

    samples_dir: str = ""
    output_dir: str = ""
    model: dict = dataclasses.field(default_factory=dict)
    split: str = "pretrain_train"
    domains: list | None = None
    domain_weights: dict | None = None
    batch_size: int = 1024
    epochs: int = 2
    max_steps: int | None = None
    learning_rate: float | None = None
    clipnorm: float | None = None
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    pretrained: str | None = None
    freeze: list = dataclasses.field(default_factory=list)
    init_from: str | None = None
    validation_split: str | None = "pretrain_valid"
    monitor: str = "val_auc"
    patience: int | None = 2
    calibrate: bool = True
    refit: bool = False
    evaluate: bool = False
    eval_batch_size: int = 4096
    verbose: bool = False
    auto_shard: str = "data"

    def validate(self) -> TrainConfig:
        if not self.samples_dir:
            raise ValueError("samples_dir is required (flag --samples_dir or the config file)")
        if not self.output_dir:
            raise ValueError("output_dir is required (flag --output_dir or the config file)")
        for name in (
            "batch_size",
            "epochs",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "eval_batch_size",
        ):
            check_positive_int(name, getattr(self, name))
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps <= 0):
            raise ValueError(f"max_steps must be a positive integer or null, got {self.max_steps!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.patience is not None and (
            not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience <= 0
        ):
            raise ValueError(f"patience must be a positive integer or null, got {self.patience!r}")
        if self.validation_split and self.validation_split == self.split:
            raise ValueError(f"validation_split must differ from the training split {self.split!r}")
        if self.refit and not self.validation_split:
            raise ValueError("refit needs a validation_split: it refits for the epochs validation chose")
        bad = [lvl for lvl in self.freeze if lvl not in FREEZE_LEVELS]
        if bad:
            raise ValueError(f"freeze levels must be among {FREEZE_LEVELS}, got {bad}")
        if self.auto_shard not in ("data", "file", "auto", "off"):
            raise ValueError(f"auto_shard must be data, file, auto or off, got {self.auto_shard!r}")
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a dict of ModelConfig fields, got {type(self.model).__name__}")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))

    def save(self, path: str | pathlib.Path) -> None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


FINETUNE_DEFAULTS = {
    "split": "coldstart_finetune",
    "freeze": list(FREEZE_LEVELS),
    "validation_split": "coldstart_valid",
    "patience": 5,
    "batch_size": 64,
    "epochs": 20,
    "log_every": 10,
    "checkpoint_every": 50,
    "learning_rate": 1e-3,
}


def parse_value(text: str) -> Any:
    """JSON when it parses ("3", "0.1", "true", "[\"L0\"]", "null"), the raw string otherwise."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def apply_overrides(data: dict, pairs: Sequence[str]) -> dict:
    """Applies ``key=value`` / ``model.key=value`` pairs to a config dict (in place; also returned)."""
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: {part!r} is not a nested config")
        target[parts[-1]] = parse_value(value)
    return data


def resolve(
    defaults: Mapping[str, Any], config_file: str | None, flags: Mapping[str, Any], sets: Sequence[str] = ()
) -> TrainConfig:
    """defaults < config file < flags (those not None) < --set pairs."""
    data: dict[str, Any] = json.loads(json.dumps(TrainConfig().to_json()))
    data.update(json.loads(json.dumps(dict(defaults))))  # a copy: the run's lists are not the defaults'
    if config_file:
        loaded = json.loads(pathlib.Path(config_file).read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a JSON object, got {type(loaded).__name__}")
        TrainConfig.from_json({k: v for k, v in loaded.items()})  # unknown keys raise here
        model = dict(data.get("model") or {})
        model.update(loaded.get("model") or {})
        data.update(loaded)
        data["model"] = model
    data.update({k: v for k, v in flags.items() if v is not None})
    apply_overrides(data, sets)
    return TrainConfig.from_json(data).validate()
