"""The Keras callbacks of a tfsr run: resumable checkpoints, a non-finite-loss stop and best-epoch selection
on a validation slice (progress and the loss history: :class:`tfsr.training.progress.ProgressLog`).

``tfsr train`` / ``tfsr finetune`` train with ``model.fit`` and these callbacks (plus Keras's own
``TensorBoard``) through :class:`tfsr.training.loop.Trainer`; a team's own ``model.fit`` can use them as
they are::

    checkpoints = ResumableCheckpoints(model, "runs/mine", checkpoint_every=200)
    initial_epoch = checkpoints.restore()  # 0 on a fresh run directory
    model.fit(dataset, epochs=3, initial_epoch=initial_epoch, callbacks=[
        NonFiniteLossStop(checkpoints), checkpoints, ProgressLog("runs/mine", checkpoints, batch_size=1024),
        tf.keras.callbacks.TensorBoard("runs/mine/tensorboard")])

Order matters: :class:`NonFiniteLossStop` and :class:`BestEpoch` come before :class:`ResumableCheckpoints`
(a step whose loss is NaN is never checkpointed; an epoch is validated before its checkpoint), and
:class:`ProgressLog` after it (it logs the step the checkpoints just counted).

Why not Keras's ``BackupAndRestore``: it resumes an interrupted epoch by replaying it from its first batch
with the step counter moved on, so a resumed run sees different data than an uninterrupted one. The
:class:`~tfsr.training.loop.Trainer` gives each epoch its own deterministic dataset and skips the batches
already trained, and its result matches an uninterrupted run (tests/test_training_faults.py). With plain
``model.fit`` and these callbacks a kill resumes at the last checkpoint's epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from tfsr.training import distributed

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfsr.training")

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
HISTORY_FILE = "history.json"
BEST_DIR = "best"
BEST_FILE = "best.json"


class NonFiniteError(RuntimeError):
    """A NaN / Inf in an input feature, the loss or the weights; the run stopped without checkpointing it."""


def read_history(run_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class ResumableCheckpoints(tf.keras.callbacks.Callback):
    """The run's position (global ``step``, ``epoch``, ``step_in_epoch``) and its checkpoints.

    One ``tf.train.Checkpoint`` holds the model, its optimizer (slots and iteration count) and the position;
    ``<run_dir>/checkpoints/ckpt-<step>`` is written every `checkpoint_every` steps, at every epoch end and
    when training ends, never with non-finite weights (:class:`NonFiniteError` instead). Under a
    multi-worker strategy only the chief writes the run directory (the others save to temp dirs).

    Args:
      model: the (compiled) model; its optimizer is checkpointed with it.
      run_dir: the run directory.
      stage: name of the stage in messages.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: checkpoints kept on disk.
      max_steps: stop training when the global step reaches it (None: no cap).
      strategy: the model's ``tf.distribute`` strategy (None: the current one).
    """

    def __init__(
        self,
        model: tf.keras.Model,
        run_dir: str | pathlib.Path,
        stage: str = "train",
        checkpoint_every: int = 200,
        keep_checkpoints: int = 3,
        max_steps: int | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.stage = stage
        self.checkpoint_every = int(checkpoint_every)
        self.max_steps = max_steps
        self.strategy = strategy or tf.distribute.get_strategy()
        self.is_chief = not distributed.is_multi_worker(self.strategy) or distributed.is_chief()
        self.checkpoint_dir = self.run_dir / CHECKPOINT_DIR  # restored from (the chief's)
        self._write_dir = distributed.write_dir(self.checkpoint_dir, self.strategy)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=model.optimizer,
            step=self.step,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            str(self._write_dir),
            max_to_keep=keep_checkpoints if self.is_chief else 1,
            step_counter=self.step,
        )
        self.restored_from: str | None = None
        self.saved_at: int | None = None  # the step of the last checkpoint this process wrote or restored
        self.stopped_mid_epoch = False  # training stopped before the epoch's data ran out
        self._model = model

    # --------------------------------------------------------------------------- restore / save
    def latest_checkpoint(self) -> str | None:
        """The latest checkpoint of the run directory (the chief's, on every worker)."""
        return tf.train.latest_checkpoint(str(self.checkpoint_dir))

    def restore(self) -> int:
        """Restores the latest checkpoint, if any (the model and its optimizer must be built). Returns the
        epoch to carry on from (``initial_epoch`` of ``model.fit``)."""
        latest = self.latest_checkpoint()
        if latest:
            self.checkpoint.restore(latest).expect_partial()
            self.restored_from, self.saved_at = latest, int(self.step.numpy())
            log.info(
                "%s: resumed from %s at step %d (epoch %d, step %d of the epoch)",
                self.stage,
                latest,
                self.saved_at,
                int(self.epoch.numpy()),
                int(self.step_in_epoch.numpy()),
            )
        return int(self.epoch.numpy())

    def save(self) -> str:
        """Writes a checkpoint, refusing to when the weights are not finite."""
        bad = [
            v.name for v in self._model.trainable_variables if not bool(tf.reduce_all(tf.math.is_finite(v)))
        ]
        if bad:
            raise NonFiniteError(
                f"{self.stage}: step {int(self.step.numpy())}: the weights became NaN/Inf ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}); stopping without writing a checkpoint. "
                f"{self.last_good()} Lower the learning rate or set clipnorm."
            )
        path = self.manager.save(checkpoint_number=self.step)
        if not self.is_chief:
            distributed.remove_temp(self._write_dir, self.strategy)
        self.saved_at = int(self.step.numpy())
        return path

    def finish(self) -> None:
        """The end of training: a checkpoint of the last step unless one was just written (the same
        decision on every worker: saving may be collective)."""
        if self.saved_at != int(self.step.numpy()):
            self.save()

    def last_good(self) -> str:
        latest = self.latest_checkpoint()
        if not latest:
            return "No checkpoint was written yet."
        return f"The last good checkpoint is {latest}; re-running the command resumes from it."

    def max_steps_reached(self) -> bool:
        return self.max_steps is not None and int(self.step.numpy()) >= self.max_steps

    # --------------------------------------------------------------------------- Keras hooks
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)
        self.stopped_mid_epoch = False

    def on_train_batch_end(self, batch, logs=None):
        stopped_by_another = self.model.stop_training
        self.step.assign_add(1)
        self.step_in_epoch.assign_add(1)
        if int(self.step.numpy()) - (self.saved_at or 0) >= self.checkpoint_every:
            self.save()
        if self.max_steps_reached() or stopped_by_another:
            self.model.stop_training = True
            self.stopped_mid_epoch = True

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_mid_epoch:
            return
        self.epoch.assign(epoch + 1)
        self.step_in_epoch.assign(0)
        self.save()

    def on_train_end(self, logs=None):
        self.finish()


class NonFiniteLossStop(tf.keras.callbacks.Callback):
    """Stops training with :class:`NonFiniteError` at the first step whose loss is NaN / Inf, before that
    step is counted or checkpointed (Keras's ``TerminateOnNaN`` only stops, after checkpointing it)."""

    def __init__(self, checkpoints: ResumableCheckpoints):
        super().__init__()
        self.checkpoints = checkpoints
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {}
        for name, value in (logs or {}).items():
            if "loss" in name:
                arr = np.asarray(value, dtype=np.float64).reshape(-1)
                if arr.size and not np.isfinite(arr[0]):
                    bad[name] = float(arr[0])
        if bad:
            state = self.checkpoints
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteError(
                f"{state.stage}: step {int(state.step.numpy()) + 1} (epoch {self._epoch + 1}): the loss is not "
                f"finite ({shown}); stopping without writing a checkpoint. {state.last_good()} Lower the "
                "learning rate, set clipnorm, or check the inputs."
            )


@dataclasses.dataclass
class Validation:
    """Early stopping and best-epoch restore on a validation slice.

    Args:
      evaluate: ``() -> {metric: value}``, the model scored on the validation slice (it must contain
        `monitor`); called at every epoch end.
      monitor: the metric compared between epochs; higher is better unless its name ends in ``loss``.
      patience: epochs without improvement before training stops; None = never stop early (the best
        epoch is still restored).
      restore_best: load the best epoch's weights into the model when training ends.
    """

    evaluate: Callable[[], Mapping[str, float]]
    monitor: str = "val_auc"
    patience: int | None = 2
    restore_best: bool = True

    def __post_init__(self):
        if self.patience is not None and (
            not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience <= 0
        ):
            raise ValueError(f"patience must be a positive int or None, got {self.patience!r}")

    def better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if self.monitor.endswith("loss") else value > best


class BestEpoch(tf.keras.callbacks.Callback):
    """Scores every finished epoch with a :class:`Validation`, keeps the best epoch's weights under
    ``<run_dir>/best/`` (and ``best.json``), stops after ``patience`` epochs without improvement, and
    :meth:`restore_best` loads them (Keras's ``EarlyStopping(restore_best_weights=True)``, with the state
    on disk so that it survives a kill and resume). The metrics join the epoch's logs (``TensorBoard`` and
    :class:`ProgressLog` record them).
    """

    def __init__(self, validation: Validation, checkpoints: ResumableCheckpoints):
        super().__init__()
        self.validation = validation
        self.checkpoints = checkpoints
        self.run_dir = checkpoints.run_dir
        self.best: dict[str, Any] = {}

    def load(self) -> None:
        """The best epoch so far of a resumed run (``best.json``)."""
        path = self.run_dir / BEST_FILE
        self.best = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    @property
    def stopped_early(self) -> bool:
        return bool(self.best.get("stopped_early"))

    def on_epoch_end(self, epoch, logs=None):
        if self.checkpoints.stopped_mid_epoch:
            return
        validation, stage = self.validation, self.checkpoints.stage
        metrics = {k: float(v) for k, v in validation.evaluate().items()}
        if validation.monitor not in metrics:
            raise ValueError(
                f"validation returned {sorted(metrics)}, not the monitored {validation.monitor!r}"
            )
        if logs is not None:
            logs.update(metrics)
        value, step = metrics[validation.monitor], int(self.checkpoints.step.numpy())
        if validation.better(value, self.best.get("value")):
            self.best = {
                "stage": stage,
                "monitor": validation.monitor,
                "epoch": epoch + 1,
                "step": step,
                "value": value,
                "metrics": metrics,
            }
            target = distributed.write_dir(self.run_dir / BEST_DIR, self.checkpoints.strategy)
            tf.train.Checkpoint(model=self.model).write(str(target / "weights"))
            distributed.remove_temp(target, self.checkpoints.strategy)
        since_best = epoch + 1 - int(self.best["epoch"])
        stop = validation.patience is not None and since_best >= validation.patience
        log.info(
            "%s: epoch %d: %s %.4f (best %.4f at epoch %d)%s",
            stage,
            epoch + 1,
            validation.monitor,
            value,
            self.best["value"],
            self.best["epoch"],
            f"; no improvement for {since_best} epochs: stopping early" if stop else "",
        )
        self.best["stopped_early"] = stop
        if stop:
            self.model.stop_training = True
        if self.checkpoints.is_chief:
            write_json_atomic(self.run_dir / BEST_FILE, self.best)

    def restore_best(self) -> bool:
        """Loads the best validated epoch's weights into the model; returns whether there were any."""
        if not self.best:
            return False
        tf.train.Checkpoint(model=self.model).read(str(self.run_dir / BEST_DIR / "weights")).expect_partial()
        log.info(
            "%s: restored the best epoch (%d, %s %.4f)",
            self.checkpoints.stage,
            self.best["epoch"],
            self.best["monitor"],
            self.best["value"],
        )
        return True
