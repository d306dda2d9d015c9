"""The training loop: resumable checkpoints, TensorBoard scalars, progress and a loss history.

:class:`Trainer` drives any Keras model with a ``train_step`` (every ``tfrs.models.Model`` has one: it calls
``compute_loss`` + the regularisation losses and applies the optimizer) epoch by epoch, and keeps in one
``tf.train.Checkpoint``: the model, the optimizer (its slots and iteration count), the global ``step``, the
``epoch`` and the ``step_in_epoch``. After a kill, a new :class:`Trainer` on the same run directory restores
the latest checkpoint and carries on: the global step continues from where it was saved, the interrupted
epoch is re-created with the same shuffling seed and the batches already seen in it are skipped, so a
resumed run sees the same data as an uninterrupted one (up to the steps after the last checkpoint, which
are trained again).

Faults: a non-finite value (NaN / Inf) in a float input feature or in the loss stops the run with a
:class:`NonFiniteError` naming the step (and the feature), and no checkpoint is written after it; a
checkpoint is also refused when the weights themselves became non-finite. TFRecords that stop matching the
feature spec mid-run raise :class:`TrainingDataError` naming the step and TensorFlow's message (which names
the feature). Either way the latest checkpoint on disk is the last good one, and re-running resumes from it.

Model selection: given a :class:`Validation` (a callable scoring the model on a validation slice carved
from the training period, never the evaluation split), the trainer scores the model at every epoch end,
keeps the best epoch's weights under ``<run_dir>/best/``, stops after ``patience`` epochs without improvement
and restores the best weights at the end (early stopping with best-epoch restore; the state survives a
kill and resume through ``best.json``).

Distributed: with a ``tf.distribute`` strategy (``tfsr.training.distributed``: MultiWorkerMirroredStrategy
from ``TF_CONFIG``) the step runs under ``strategy.run`` with the loss scaled by ``1 / num_replicas``, the
dataset is auto-sharded, and only the chief writes the run directory (the others save to temp dirs).

Run directory::

    <run_dir>/checkpoints/         ckpt-<step>.{index,data-*}, checkpoint (CheckpointManager)
    <run_dir>/tensorboard/<stage>/ scalars: loss, total_loss, regularization_loss, learning_rate, examples/s
    <run_dir>/history.json         [{"step", "epoch", "loss", ..., "examples_per_sec", "wall_s"}, ...]
    <run_dir>/best/, best.json     the best epoch's weights and {"epoch", "step", "value", "metrics", ...}

Example:
  >>> trainer = Trainer(model, tf.keras.optimizers.Adam(1e-3), "runs/pretrain", seed=0)
  >>> trainer.fit(lambda epoch: make_dataset(..., seed=epoch), epochs=2)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
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


def set_seeds(seed: int) -> None:
    """Seeds python, numpy and TensorFlow (one call: ``tf.keras.utils.set_random_seed``)."""
    tf.keras.utils.set_random_seed(int(seed))


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar through the core summary op (what ``tf.summary.scalar`` writes), so that runs
    log without the ``tensorboard`` package installed; TensorBoard reads the event files as usual."""
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=int(step), metadata=_scalar_metadata())


def read_history(run_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json_atomic(path: pathlib.Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _scalar(value) -> float | None:
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001
        return None
    if arr.size != 1:
        return None
    v = float(arr.reshape(()))
    return v if math.isfinite(v) else None


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_progress(
    stage: str,
    step: int,
    total: int | None,
    epoch: int,
    epochs: int | None,
    point: Mapping[str, Any],
    eta_s: float | None,
) -> str:
    """The compact progress line logged every ``log_every`` steps (unless a progress bar is shown)::

        train: step 150/1,200 12% | epoch 1/2 | loss 0.5123 | 4,210 ex/s | ETA 3m05s

    `total` is the step the run stops at (None while unknown: no percentage, no ETA); `epoch` counts from 1;
    `point` is the history point (its ``loss``, ``total_loss`` when a regularisation term makes it differ,
    and ``examples_per_sec``).
    """
    parts = [f"{stage}: step {step:,}" + (f"/{total:,} {100 * step // max(total, 1)}%" if total else "")]
    parts.append(f"epoch {epoch}" + (f"/{epochs}" if epochs else ""))
    losses = [f"loss {point['loss']:.4f}"] if "loss" in point else []
    total_loss = point.get("total_loss")
    if total_loss is not None and abs(total_loss - point.get("loss", total_loss)) > 1e-6:
        losses.append(f"total_loss {total_loss:.4f}")
    parts += [" ".join(losses)] if losses else []
    parts.append(f"{point.get('examples_per_sec', 0.0):,.0f} ex/s")
    if total and eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return " | ".join(parts)


def _cardinality(ds) -> int | None:
    """Batches in a dataset when TensorFlow knows it statically (not for filtered TFRecords), else None."""
    try:
        n = int(ds.cardinality())
    except (AttributeError, TypeError, ValueError):
        return None
    return n if n >= 0 else None


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


class NonFiniteError(RuntimeError):
    """A NaN / Inf in an input feature, the loss or the weights; the run stopped without checkpointing it."""


class TrainingDataError(ValueError):
    """The training data could not be read or parsed mid-run (e.g. a record that does not match the spec)."""


_NONFINITE = "_nonfinite/"
_EXAMPLES = "_examples"


def _features(batch):
    return batch[0] if isinstance(batch, tuple) else batch


def _rows(features) -> tf.Tensor:
    for value in features.values():
        if isinstance(value, tf.RaggedTensor):
            return tf.cast(value.nrows(), tf.int64)
        return tf.cast(tf.shape(value)[0], tf.int64)
    return tf.constant(0, tf.int64)


def _nonfinite_counts(features) -> dict[str, tf.Tensor]:
    """{feature: number of NaN / Inf values} of every floating-point feature of a batch (in-graph)."""
    counts = {}
    for name, value in sorted(features.items()):
        if not value.dtype.is_floating:
            continue
        values = value.flat_values if isinstance(value, tf.RaggedTensor) else value
        counts[name] = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(values)), tf.int64))
    return counts


def _allow_loss_reduction_under_strategy(model) -> None:
    """Keras losses with the default (mean) reduction refuse to run under a strategy outside ``fit``; the
    TFRS tasks' losses are per-replica means here, and :class:`Trainer` scales them by 1 / replicas itself
    (what ``Model.compile`` does for its own losses)."""
    for module in model.submodules:
        loss = getattr(module, "_loss", None)
        if isinstance(loss, tf.keras.losses.Loss):
            loss._allow_sum_over_batch_size = True  # noqa: SLF001


class Trainer:
    """Trains a model with checkpoint/resume, TensorBoard logs, progress output and a loss history.

    Args:
      model: a Keras model with ``train_step(batch) -> {name: scalar}`` (e.g. a ``tfrs.models.Model``).
        Freeze layers *before* the first step: the step function is traced once.
      optimizer: a Keras optimizer; the model is compiled with it.
      run_dir: the run directory (created).
      stage: name of the stage in logs, TensorBoard and the history (``train`` / ``finetune``).
      seed: recorded for the epoch datasets (the caller makes them; see :meth:`fit`).
      log_every: steps between progress lines, TensorBoard points and history points.
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
        self.log_every = int(log_every)
        self.checkpoint_every = int(checkpoint_every)
        self.verbose = verbose
        self.strategy = strategy or tf.distribute.get_strategy()
        self.distributed = self.strategy.num_replicas_in_sync > 1 or distributed.is_multi_worker(
            self.strategy
        )
        self.multi_worker = distributed.is_multi_worker(self.strategy)
        self.is_chief = not self.multi_worker or distributed.is_chief()
        self.auto_shard = auto_shard
        distributed.shard_options(auto_shard)  # validates the policy
        self.checkpoint_dir = self.run_dir / CHECKPOINT_DIR  # restored from (the chief's)
        self._checkpoint_write_dir = distributed.write_dir(self.checkpoint_dir, self.strategy)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            step=self.step,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            str(self._checkpoint_write_dir),
            max_to_keep=keep_checkpoints if self.is_chief else 1,
            step_counter=self.step,
        )
        self.history: list[dict] = []
        self.best: dict[str, Any] = {}
        self.restored_from: str | None = None
        self._built = False
        self._train_fn = None
        self._writer = None
        self._progress: dict[str, Any] = {}  # fit's epochs, max_steps, steps per epoch, start step and time
        if self.distributed:
            _allow_loss_reduction_under_strategy(model)
        with self.strategy.scope():
            model.compile(optimizer=optimizer)

    # ------------------------------------------------------------------ building and restoring
    def build(self, batch) -> None:
        """Creates the model's and the optimizer's variables from one batch (needed before restoring)."""
        if self._built:
            return
        with self.strategy.scope():
            self.model(_features(batch), training=False)
            self.optimizer.build(self.model.trainable_variables)
        self._built = True

    def latest_checkpoint(self) -> str | None:
        """The latest checkpoint of the run directory (the chief's, on every worker)."""
        return tf.train.latest_checkpoint(str(self.checkpoint_dir))

    def restore(self) -> bool:
        """Restores the latest checkpoint of the run directory, if there is one. Returns whether it did."""
        latest = self.latest_checkpoint()
        if not latest:
            return False
        self.checkpoint.restore(latest).expect_partial()
        self.restored_from = latest
        best_path = self.run_dir / BEST_FILE
        self.best = json.loads(best_path.read_text(encoding="utf-8")) if best_path.exists() else {}
        step = int(self.step.numpy())
        self.history = [
            h
            for h in read_history(self.run_dir)
            if h.get("step", 0) <= step and h.get("stage", self.stage) == self.stage
        ]
        log.info(
            "%s: resumed from %s at step %d (epoch %d, step %d of the epoch)",
            self.stage,
            latest,
            step,
            int(self.epoch.numpy()),
            int(self.step_in_epoch.numpy()),
        )
        return True

    def save(self) -> str:
        """Writes a checkpoint (and the history), refusing to when the weights are not finite."""
        bad = [
            v.name for v in self.model.trainable_variables if not bool(tf.reduce_all(tf.math.is_finite(v)))
        ]
        if bad:
            raise NonFiniteError(
                f"{self.stage}: step {int(self.step.numpy())}: the weights became NaN/Inf ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}); stopping without writing a checkpoint. "
                f"{self._last_good()} Lower the learning rate or set clipnorm."
            )
        path = self.manager.save(checkpoint_number=self.step)
        if self.is_chief:
            _write_json_atomic(self.run_dir / HISTORY_FILE, self.history)
        else:
            distributed.remove_temp(self._checkpoint_write_dir, self.strategy)
        return path

    def _last_good(self) -> str:
        latest = self.latest_checkpoint()
        if not latest:
            return "No checkpoint was written yet."
        return f"The last good checkpoint is {latest}; re-running the command resumes from it."

    def _write_history(self) -> None:
        if self.is_chief:
            _write_json_atomic(self.run_dir / HISTORY_FILE, self.history)

    # ------------------------------------------------------------------ training
    def _summary_writer(self):
        if self._writer is None:
            if self.is_chief:
                self._writer = tf.summary.create_file_writer(str(self.run_dir / TENSORBOARD_DIR / self.stage))
            else:
                self._writer = tf.summary.create_noop_writer()
        return self._writer

    def _make_train_fn(self, element_spec):
        """One ``tf.function`` per run: the train step plus its input checks and example count.

        It returns ``{metric: scalar, "_examples": rows, "_nonfinite/<feature>": count}``, reduced over the
        replicas under a strategy (the metrics by mean, the counts by sum), so that every worker sees the
        same values and stops at the same step.
        """
        model, strategy = self.model, self.strategy

        if not self.distributed:

            def step_fn(batch):
                features = _features(batch)
                outputs = dict(model.train_step(batch))
                outputs[_EXAMPLES] = _rows(features)
                for name, count in _nonfinite_counts(features).items():
                    outputs[_NONFINITE + name] = count
                return outputs

            return tf.function(step_fn, input_signature=[element_spec])

        replicas = float(strategy.num_replicas_in_sync)

        def replica_fn(batch):
            features = _features(batch)
            with tf.GradientTape() as tape:
                loss = model.compute_loss(batch, training=True)
                regularization_loss = tf.reduce_sum([tf.reduce_sum(x) for x in model.losses])
                total_loss = loss + regularization_loss
                scaled = total_loss / replicas  # gradients are summed over the replicas
            gradients = tape.gradient(scaled, model.trainable_variables)
            self.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            metrics = {metric.name: metric.result() for metric in model.metrics}
            metrics.update(loss=loss, regularization_loss=regularization_loss, total_loss=total_loss)
            counts = {_NONFINITE + k: v for k, v in _nonfinite_counts(features).items()}
            counts[_EXAMPLES] = _rows(features)
            return metrics, counts

        def step_fn(batch):
            metrics, counts = strategy.run(replica_fn, args=(batch,))
            mean, total = tf.distribute.ReduceOp.MEAN, tf.distribute.ReduceOp.SUM
            outputs = {k: strategy.reduce(mean, v, axis=None) for k, v in metrics.items()}
            outputs.update({k: strategy.reduce(total, v, axis=None) for k, v in counts.items()})
            return outputs

        return tf.function(step_fn, input_signature=[element_spec])

    def _distribute(self, ds: tf.data.Dataset):
        if not self.distributed:
            return ds
        return self.strategy.experimental_distribute_dataset(
            ds.with_options(distributed.shard_options(self.auto_shard))
        )

    def _batches(self, ds, epoch: int):
        """Iterates a dataset, turning read / parse errors into a :class:`TrainingDataError` naming the step."""
        iterator = iter(ds)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
                raise TrainingDataError(
                    f"{self.stage}: step {int(self.step.numpy()) + 1} (epoch {epoch + 1}): reading the training "
                    f"data failed: {err.message.strip()}. Stopped without writing a checkpoint. "
                    f"{self._last_good()}"
                ) from None
            yield batch

    def _check_finite(self, outputs: Mapping[str, Any], epoch: int) -> None:
        """Raises :class:`NonFiniteError` for a NaN / Inf in an input feature or in a loss of this step."""
        step = int(self.step.numpy()) + 1  # the step that was just run
        bad_inputs = {
            k[len(_NONFINITE) :]: int(v)
            for k, v in outputs.items()
            if k.startswith(_NONFINITE) and int(v) > 0
        }
        if bad_inputs:
            names = ", ".join(f"{name!r} ({n} values)" for name, n in bad_inputs.items())
            raise NonFiniteError(
                f"{self.stage}: step {step} (epoch {epoch + 1}): NaN/Inf in input feature {names}; "
                f"stopping without writing a checkpoint. {self._last_good()} Fix or filter the records "
                "(the feature's values must be finite)."
            )
        bad_losses = {}
        for k, v in outputs.items():
            if "loss" in k and not k.startswith("_"):
                value = float(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else 0.0
                if not math.isfinite(value):
                    bad_losses[k] = value
        if bad_losses:
            shown = ", ".join(f"{k}={v}" for k, v in bad_losses.items())
            raise NonFiniteError(
                f"{self.stage}: step {step} (epoch {epoch + 1}): the loss is not finite ({shown}); "
                f"stopping without writing a checkpoint. {self._last_good()} Lower the learning rate, "
                "set clipnorm, or check the inputs."
            )

    def _learning_rate(self) -> float | None:
        lr = getattr(self.optimizer, "learning_rate", None)
        if lr is None:
            return None
        if callable(lr) and not isinstance(lr, tf.Variable):
            lr = lr(self.optimizer.iterations)
        return _scalar(lr)

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
          the history (one dict per logged interval).
        """
        if not self._built:
            # a dataset of its own: iterating one twice may reshuffle, and resuming must see the same order
            for batch in dataset_fn(int(self.epoch.numpy())).take(1):
                self.build(batch)
            if not self._built:
                raise ValueError(f"{self.stage}: the training dataset is empty")
        if resume:
            self.restore()
        start_epoch = int(self.epoch.numpy())
        first_epoch_ds = dataset_fn(start_epoch)
        self._progress = {
            "epochs": epochs,
            "max_steps": max_steps,
            "steps_per_epoch": _cardinality(first_epoch_ds),
            "start_step": int(self.step.numpy()),
            "start_time": time.perf_counter(),
        }
        skip_first = int(self.step_in_epoch.numpy())
        if skip_first:
            first_epoch_ds = first_epoch_ds.skip(skip_first)
        first_epoch_ds = self._distribute(first_epoch_ds)
        if self._train_fn is None:
            # one trace for every batch, the last (smaller) one included: the batch dimension is None
            self._train_fn = self._make_train_fn(first_epoch_ds.element_spec)
        writer = self._summary_writer()
        last_saved = int(self.step.numpy())
        saved_once = False
        steps_per_epoch: int | None = None
        interval: dict[str, list[float]] = {}
        interval_examples = 0
        interval_start = time.perf_counter()
        if validation is not None and self.best.get("stopped_early"):
            log.info("%s: this run already stopped early at epoch %d", self.stage, int(self.epoch.numpy()))
            epochs = start_epoch
        try:
            for epoch in range(start_epoch, epochs):
                if max_steps is not None and int(self.step.numpy()) >= max_steps:
                    break
                ds = first_epoch_ds if epoch == start_epoch else self._distribute(dataset_fn(epoch))
                skip = skip_first if epoch == start_epoch else 0
                if skip:
                    log.info("%s: epoch %d: skipping %d batches already trained", self.stage, epoch + 1, skip)
                self.epoch.assign(epoch)
                bar = tf.keras.utils.Progbar(steps_per_epoch, unit_name="step") if self.verbose else None
                seen = skip
                for batch in self._batches(ds, epoch):
                    outputs = self._train_fn(batch)
                    self._check_finite(outputs, epoch)
                    self.step.assign_add(1)
                    self.step_in_epoch.assign_add(1)
                    seen += 1
                    step = int(self.step.numpy())
                    interval_examples += int(outputs.pop(_EXAMPLES))
                    values = {k: _scalar(v) for k, v in outputs.items() if not k.startswith("_")}
                    for k, v in values.items():
                        if v is not None:
                            interval.setdefault(k, []).append(v)
                    if bar is not None:
                        bar.update(seen, [(k, v) for k, v in values.items() if v is not None and "loss" in k])
                    if step % self.log_every == 0:
                        self._log_point(step, epoch, interval, interval_examples, interval_start, writer)
                        interval, interval_examples, interval_start = {}, 0, time.perf_counter()
                    if step - last_saved >= self.checkpoint_every:
                        self.save()
                        last_saved, saved_once = step, True
                    if max_steps is not None and step >= max_steps:
                        break
                else:  # the epoch ran to its end
                    steps_per_epoch = self._progress["steps_per_epoch"] = seen
                    self.epoch.assign(epoch + 1)
                    self.step_in_epoch.assign(0)
                    self.model.reset_metrics()
                    if interval:
                        self._log_point(
                            int(self.step.numpy()), epoch, interval, interval_examples, interval_start, writer
                        )
                        interval, interval_examples, interval_start = {}, 0, time.perf_counter()
                    stop = validation is not None and self._validate(validation, epoch, writer)
                    self.save()
                    last_saved, saved_once = int(self.step.numpy()), True
                    if stop:
                        break
                    continue
                break  # max_steps reached inside the epoch
        except KeyboardInterrupt:
            log.warning("%s: interrupted at step %d; saving a checkpoint", self.stage, int(self.step.numpy()))
            self.save()
            raise
        if interval:
            self._log_point(
                int(self.step.numpy()),
                int(self.epoch.numpy()),
                interval,
                interval_examples,
                interval_start,
                writer,
            )
        # the same decision on every worker (saving may be collective): no manager state of a temp dir
        if int(self.step.numpy()) != last_saved or (self.restored_from is None and not saved_once):
            self.save()
        else:
            self._write_history()
        writer.flush()
        if validation is not None and validation.restore_best:
            self.restore_best()
        return self.history

    def _validate(self, validation: Validation, epoch: int, writer) -> bool:
        """Scores the epoch just finished; keeps it when it is the best so far. Returns whether to stop."""
        metrics = {k: float(v) for k, v in validation.evaluate().items()}
        if validation.monitor not in metrics:
            raise ValueError(
                f"validation returned {sorted(metrics)}, not the monitored {validation.monitor!r}"
            )
        value, step = metrics[validation.monitor], int(self.step.numpy())
        self.history.append({"stage": self.stage, "step": step, "epoch": epoch + 1, **metrics})
        with writer.as_default(step=step):
            for k, v in metrics.items():
                write_scalar(k, v, step)
        if validation.better(value, self.best.get("value")):
            self.best = {
                "stage": self.stage,
                "monitor": validation.monitor,
                "epoch": epoch + 1,
                "step": step,
                "value": value,
                "metrics": metrics,
            }
            target = distributed.write_dir(self.run_dir / BEST_DIR, self.strategy)
            tf.train.Checkpoint(model=self.model).write(str(target / "weights"))
            distributed.remove_temp(target, self.strategy)
        since_best = epoch + 1 - int(self.best["epoch"])
        stop = validation.patience is not None and since_best >= validation.patience
        log.info(
            "%s: epoch %d: %s %.4f (best %.4f at epoch %d)%s",
            self.stage,
            epoch + 1,
            validation.monitor,
            value,
            self.best["value"],
            self.best["epoch"],
            f"; no improvement for {since_best} epochs: stopping early" if stop else "",
        )
        self.best["stopped_early"] = stop
        if self.is_chief:
            _write_json_atomic(self.run_dir / BEST_FILE, self.best)
        return stop

    def restore_best(self) -> bool:
        """Loads the best validated epoch's weights into the model; returns whether there were any."""
        if not self.best:
            return False
        tf.train.Checkpoint(model=self.model).read(str(self.run_dir / BEST_DIR / "weights")).expect_partial()
        log.info(
            "%s: restored the best epoch (%d, %s %.4f)",
            self.stage,
            self.best["epoch"],
            self.best["monitor"],
            self.best["value"],
        )
        return True

    def _log_point(self, step, epoch, interval, examples, started, writer) -> None:
        elapsed = max(time.perf_counter() - started, 1e-9)
        point: dict[str, Any] = {"stage": self.stage, "step": int(step), "epoch": int(epoch) + 1}
        for k, vs in interval.items():
            point[k] = float(np.mean(vs))
        point["examples_per_sec"] = round(examples / elapsed, 1)
        lr = self._learning_rate()
        if lr is not None:
            point["learning_rate"] = lr
        point["wall_s"] = round(time.time(), 3)
        self.history.append(point)
        with writer.as_default(step=int(step)):
            for k, v in point.items():
                if k not in ("stage", "step", "epoch", "wall_s") and isinstance(v, float | int):
                    write_scalar(k, v, step)
        if not self.verbose:
            total, eta = self._total_and_eta(int(step))
            epochs = self._progress.get("epochs")
            log.info("%s", format_progress(self.stage, int(step), total, int(epoch) + 1, epochs, point, eta))

    def _total_and_eta(self, step: int) -> tuple[int | None, float | None]:
        """The step this fit stops at (when known) and the seconds left at this fit's pace so far."""
        progress = self._progress
        per_epoch, epochs, max_steps = (progress.get(k) for k in ("steps_per_epoch", "epochs", "max_steps"))
        total = per_epoch * epochs if per_epoch and epochs else None
        if max_steps:
            total = min(total, max_steps) if total else max_steps
        done = step - progress.get("start_step", step)
        if not total or done <= 0:
            return total, None
        elapsed = time.perf_counter() - progress["start_time"]
        return total, max(total - step, 0) * elapsed / done


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
