"""The training loop: ``model.fit`` with resumable checkpoints, TensorBoard, progress and a loss history.

:class:`Trainer` trains any compiled-able Keras model with a ``train_step`` (every ``tfrs.models.Model``;
tfsr's models use :mod:`tfsr.models.train_step`) by calling ``model.fit`` once per epoch with the callbacks
of :mod:`tfsr.training.callbacks` and Keras's ``TensorBoard``. One ``tf.train.Checkpoint`` holds the model,
the optimizer (its slots and iteration count), the global ``step``, the ``epoch`` and the ``step_in_epoch``.
After a kill, a new :class:`Trainer` on the same run directory restores the latest checkpoint and carries
on: the global step continues from where it was saved, the interrupted epoch is re-created with the same
shuffling seed and the batches already seen in it are skipped, so a resumed run sees the same data as an
uninterrupted one (up to the steps after the last checkpoint, which are trained again). That is why
``model.fit`` runs per epoch: each epoch is its own deterministic dataset (``dataset_fn(epoch)``), and the
resumed one starts where the checkpoint left it (Keras's ``BackupAndRestore`` would replay it from its
first batch).

Faults: a non-finite value (NaN / Inf) in a float input feature (tfsr models) or in the loss stops the run
with a :class:`NonFiniteError` naming the step (and the feature), and no checkpoint is written after it; a
checkpoint is also refused when the weights themselves became non-finite. TFRecords that stop matching the
feature spec mid-run raise :class:`TrainingDataError` naming the step and TensorFlow's message (which names
the feature). Under a multi-worker strategy the worker that read the bad row fails with that message and
the others with :class:`PeerWorkerError`. Either way the latest checkpoint on disk is the last good one,
and re-running resumes from it.

Model selection: given a :class:`Validation` (a callable scoring the model on a validation slice carved
from the training period, never the evaluation split), the model is scored at every epoch end, the best
epoch's weights are kept under ``<run_dir>/best/``, training stops after ``patience`` epochs without
improvement and the best weights are restored at the end (early stopping with best-epoch restore; the
state survives a kill and resume through ``best.json``).

Distributed: with a ``tf.distribute`` strategy (``tfsr.training.distributed``: MultiWorkerMirroredStrategy
from ``TF_CONFIG``) ``model.fit`` distributes the (auto-sharded) dataset and runs the step on every
replica; only the chief writes the run directory (the others save to temp dirs).

Run directory::

    <run_dir>/checkpoints/         ckpt-<step>.{index,data-*}, checkpoint (CheckpointManager)
    <run_dir>/tensorboard/         Keras TensorBoard: train/ (epoch loss, AUCs, learning rate), validation/
    <run_dir>/history.json         [{"step", "epoch", "loss", ..., "examples_per_sec", "wall_s"}, ...]
    <run_dir>/best/, best.json     the best epoch's weights and {"epoch", "step", "value", "metrics", ...}

Example:
  >>> trainer = Trainer(model, tf.keras.optimizers.Adam(1e-3), "runs/pretrain", seed=0)
  >>> trainer.fit(lambda epoch: make_dataset(..., seed=epoch), epochs=2)
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from tfsr.models.train_step import nonfinite_inputs
from tfsr.training import distributed
from tfsr.training.callbacks import (  # noqa: F401  (re-exported: the loop's public names)
    BEST_DIR,
    BEST_FILE,
    CHECKPOINT_DIR,
    HISTORY_FILE,
    TENSORBOARD_DIR,
    BestEpoch,
    NonFiniteError,
    NonFiniteLossStop,
    ResumableCheckpoints,
    Validation,
    read_history,
)
from tfsr.training.progress import ProgressLog, format_progress  # noqa: F401  (re-exported)

import tensorflow as tf

log = logging.getLogger("tfsr.training")


def set_seeds(seed: int) -> None:
    """Seeds python, numpy and TensorFlow (one call: ``tf.keras.utils.set_random_seed``)."""
    tf.keras.utils.set_random_seed(int(seed))


class TrainingDataError(ValueError):
    """The training data could not be read or parsed mid-run (e.g. a record that does not match the spec)."""


class PeerWorkerError(RuntimeError):
    """Another worker of a multi-worker run failed (its own log names the cause); this one stopped too."""


def _features(batch):
    return batch[0] if isinstance(batch, tuple) else batch


def _rows(features) -> int:
    for value in features.values():
        if isinstance(value, tf.RaggedTensor):
            return int(value.nrows())
        return int(tf.shape(value)[0])
    return 0


def _cardinality(ds) -> int | None:
    """Batches in a dataset when TensorFlow knows it statically (not for filtered TFRecords), else None."""
    try:
        n = int(ds.cardinality())
    except (AttributeError, TypeError, ValueError):
        return None
    return n if n >= 0 else None


def _op_error_text(err: tf.errors.OpError) -> str:
    """TensorFlow's own message of an error raised inside ``model.fit``'s traced step, without the
    "Graph execution error / Detected at node ... (most recent call last)" frames around it."""
    text = err.message.strip()
    if "Detected at node" in text:
        text = text.split("\n\n")[-1]
    return re.split(r"\n\t \[\[", text)[0].strip()


class Trainer:
    """Trains a model with ``model.fit``: checkpoint/resume, TensorBoard logs, progress and a loss history.

    Args:
      model: a Keras model with ``train_step(batch) -> {name: scalar}`` (e.g. a ``tfrs.models.Model``).
        Freeze layers *before* the first step: the step function is traced once.
      optimizer: a Keras optimizer; the model is compiled with it.
      run_dir: the run directory (created).
      stage: name of the stage in logs and the history (``train`` / ``finetune``).
      seed: recorded for the epoch datasets (the caller makes them; see :meth:`fit`).
      log_every: steps between progress lines and history points.
      checkpoint_every: steps between checkpoints; one is also written at every epoch end and at the end.
      keep_checkpoints: checkpoints kept on disk.
      verbose: a Keras progress bar per epoch instead of log lines.
      strategy: a ``tf.distribute`` strategy (the model and the optimizer must have been created under its
        scope); None = the current one (the default strategy outside any scope).
      auto_shard: auto-shard policy of the input under a multi-worker strategy (``data`` | ``file`` |
        ``auto`` | ``off``; :func:`tfsr.training.distributed.shard_options`).
    """

    def __init__(
        self,
        model,
        optimizer,
        run_dir: str | pathlib.Path,
        stage: str = "train",
        seed: int = 0,
        log_every: int = 50,
        checkpoint_every: int = 200,
        keep_checkpoints: int = 3,
        verbose: bool = False,
        strategy: tf.distribute.Strategy | None = None,
        auto_shard: str = "data",
    ):
        if log_every <= 0 or checkpoint_every <= 0:
            raise ValueError(
                f"log_every and checkpoint_every must be positive, got {log_every}, {checkpoint_every}"
            )
        self.model = model
        self.optimizer = optimizer
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.seed = int(seed)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.multi_worker = distributed.is_multi_worker(self.strategy)
        self.auto_shard = auto_shard
        distributed.shard_options(auto_shard)  # validates the policy
        with self.strategy.scope():
            model.compile(optimizer=optimizer)
        self.checkpoints = ResumableCheckpoints(
            model, self.run_dir, stage, checkpoint_every, keep_checkpoints, strategy=self.strategy
        )
        self.progress = ProgressLog(self.run_dir, self.checkpoints, stage, log_every, verbose=verbose)
        self.tensorboard = tf.keras.callbacks.TensorBoard(
            str(self.run_dir / TENSORBOARD_DIR), update_freq="epoch", profile_batch=0, write_graph=False
        )
        self.best_epoch: BestEpoch | None = None
        self._built = False

    # ------------------------------------------------------------------ the run's state
    @property
    def step(self) -> tf.Variable:
        return self.checkpoints.step

    @property
    def epoch(self) -> tf.Variable:
        return self.checkpoints.epoch

    @property
    def step_in_epoch(self) -> tf.Variable:
        return self.checkpoints.step_in_epoch

    @property
    def manager(self) -> tf.train.CheckpointManager:
        return self.checkpoints.manager

    @property
    def restored_from(self) -> str | None:
        return self.checkpoints.restored_from

    @property
    def history(self) -> list[dict]:
        return self.progress.history

    @property
    def best(self) -> dict:
        return self.best_epoch.best if self.best_epoch else {}

    def build(self, batch) -> None:
        """Creates the model's and the optimizer's variables from one batch (needed before restoring)."""
        if self._built:
            return
        with self.strategy.scope():
            self.model(_features(batch), training=False)
            self.optimizer.build(self.model.trainable_variables)
        self.progress.batch_size = _rows(_features(batch))
        self._built = True

    def latest_checkpoint(self) -> str | None:
        return self.checkpoints.latest_checkpoint()

    def restore(self) -> bool:
        """Restores the latest checkpoint of the run directory, if there is one. Returns whether it did."""
        self.checkpoints.restore()
        return self.restored_from is not None

    def save(self) -> str:
        """Writes a checkpoint (and the history), refusing to when the weights are not finite."""
        path = self.checkpoints.save()
        self.progress.write()
        return path

    def restore_best(self) -> bool:
        """Loads the best validated epoch's weights into the model; returns whether there were any."""
        return bool(self.best_epoch and self.best_epoch.restore_best())

    # ------------------------------------------------------------------ training
    def _distribute(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.with_options(distributed.shard_options(self.auto_shard)) if self.multi_worker else ds

    def _failed(self, err: tf.errors.OpError, epoch: int) -> Exception:
        """The error that an op failure inside ``model.fit`` means to a user: NaN/Inf inputs or bad data."""
        step = int(self.step.numpy()) + 1  # the step that failed
        last_good = self.checkpoints.last_good()
        bad_inputs = nonfinite_inputs(err.message)
        if bad_inputs:
            names = ", ".join(f"{name!r} ({n} values)" for name, n in bad_inputs.items())
            return NonFiniteError(
                f"{self.stage}: step {step} (epoch {epoch + 1}): NaN/Inf in input feature {names}; "
                f"stopping without writing a checkpoint. {last_good} Fix or filter the records "
                "(the feature's values must be finite)."
            )
        return TrainingDataError(
            f"{self.stage}: step {step} (epoch {epoch + 1}): reading the training data failed: "
            f"{_op_error_text(err)}. Stopped without writing a checkpoint. {last_good}"
        )

    def fit(
        self,
        dataset_fn: Callable[[int], tf.data.Dataset],
        epochs: int,
        max_steps: int | None = None,
        resume: bool = True,
        validation: Validation | None = None,
    ) -> list[dict]:
        """Trains until `epochs` epochs are done, the global step reaches `max_steps`, or `validation` stops
        it early (then, with ``restore_best``, the model holds the best epoch's weights).

        Args:
          dataset_fn: ``epoch -> finite tf.data.Dataset`` of that epoch's batches. It must be deterministic
            for a given epoch (shuffle with ``seed + epoch``) for a mid-epoch resume to skip the right batches.
          epochs: total number of epochs of the run (a resumed run counts the epochs already done).
          max_steps: optional cap on the global step.
          resume: restore the latest checkpoint of the run directory first.
          validation: optional early stopping and best-epoch restore (:class:`Validation`).

        Returns:
          the history (one dict per logged interval and per validated epoch).
        """
        if not self._built:
            # a dataset of its own: iterating one twice may reshuffle, and resuming must see the same order
            for batch in dataset_fn(int(self.epoch.numpy())).take(1):
                self.build(batch)
            if not self._built:
                raise ValueError(f"{self.stage}: the training dataset is empty")
        self.best_epoch = None
        if validation is not None:
            self.best_epoch = BestEpoch(validation, self.checkpoints)
            self.best_epoch.set_model(self.model)  # restore_best may run without a fit (a finished run)
        if resume:
            self.restore()
            if self.best_epoch and self.restored_from:
                self.best_epoch.load()
        self.checkpoints.max_steps = max_steps
        start_epoch = int(self.epoch.numpy())
        first_epoch_ds = dataset_fn(start_epoch)
        self.progress.set_plan(epochs, max_steps, _cardinality(first_epoch_ds))
        skip_first = int(self.step_in_epoch.numpy())
        if skip_first:
            log.info(
                "%s: epoch %d: skipping %d batches already trained", self.stage, start_epoch + 1, skip_first
            )
            first_epoch_ds = first_epoch_ds.skip(skip_first)
        if self.best_epoch and self.best_epoch.stopped_early:
            log.info("%s: this run already stopped early at epoch %d", self.stage, start_epoch)
            epochs = start_epoch
        callbacks = [NonFiniteLossStop(self.checkpoints)]
        callbacks += [self.best_epoch] if self.best_epoch else []
        callbacks += [self.checkpoints, self.progress, self.tensorboard]
        for epoch in range(start_epoch, epochs):
            if self.checkpoints.max_steps_reached():
                break
            ds = first_epoch_ds if epoch == start_epoch else dataset_fn(epoch)
            try:
                self.model.fit(
                    self._distribute(ds),
                    epochs=epoch + 1,
                    initial_epoch=epoch,
                    verbose=0,
                    callbacks=callbacks,
                )
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
                raise self._failed(err, epoch) from None
            except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as err:
                if not self.multi_worker:
                    raise
                raise PeerWorkerError(
                    f"{self.stage}: step {int(self.step.numpy()) + 1} (epoch {epoch + 1}): another worker failed "
                    f"(its log names the cause: {type(err).__name__}). {self.checkpoints.last_good()}"
                ) from None
            except KeyboardInterrupt:
                log.warning(
                    "%s: interrupted at step %d; saving a checkpoint", self.stage, int(self.step.numpy())
                )
                self.save()
                raise
            if self.checkpoints.stopped_mid_epoch or (self.best_epoch and self.best_epoch.stopped_early):
                break
        if self.checkpoints.saved_at is None:  # nothing trained or restored: the initial state
            self.checkpoints.save()
        self.progress.write()
        if validation is not None and validation.restore_best:
            self.restore_best()
        return self.history


def load_histories(run_dir: str | pathlib.Path) -> dict[str, list[dict]]:
    """{stage: history} of a run directory and, through its config's ``pretrained``, of the runs before it."""
    run_dir = pathlib.Path(run_dir)
    out: dict[str, list[dict]] = {}
    seen = set()
    while run_dir and run_dir.is_dir() and run_dir.resolve() not in seen:
        seen.add(run_dir.resolve())
        hist = read_history(run_dir)
        if hist:
            stage = hist[0].get("stage", run_dir.name)
            out.setdefault(stage, hist)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            break
        pretrained = json.loads(cfg_path.read_text(encoding="utf-8")).get("pretrained")
        if not pretrained:
            break
        p = pathlib.Path(pretrained)
        run_dir = p.parent if p.name == "model" else p
    return dict(reversed(list(out.items())))


def history_to_mapping(history: list[Mapping[str, Any]]) -> dict[str, list[float]]:
    keys = sorted({k for h in history for k in h})
    return {k: [h.get(k) for h in history] for k in keys}
