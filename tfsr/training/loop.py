"""The training loop: resumable checkpoints, TensorBoard scalars, progress and a loss history.

:class:`Trainer` drives any Keras model with a ``train_step`` (every ``tfrs.models.Model`` has one: it calls
``compute_loss`` + the regularisation losses and applies the optimizer) epoch by epoch, and keeps in one
``tf.train.Checkpoint``: the model, the optimizer (its slots and iteration count), the global ``step``, the
``epoch`` and the ``step_in_epoch``. After a kill, a new :class:`Trainer` on the same run directory restores
the latest checkpoint and carries on: the global step continues from where it was saved, the interrupted
epoch is re-created with the same shuffling seed and the batches already seen in it are skipped, so a
resumed run sees the same data as an uninterrupted one (up to the steps after the last checkpoint, which
are trained again).

Run directory::

    <run_dir>/checkpoints/         ckpt-<step>.{index,data-*}, checkpoint (CheckpointManager)
    <run_dir>/tensorboard/<stage>/ scalars: loss, total_loss, regularization_loss, learning_rate, examples/s
    <run_dir>/history.json         [{"step", "epoch", "loss", ..., "examples_per_sec", "wall_s"}, ...]

Example:
  >>> trainer = Trainer(model, tf.keras.optimizers.Adam(1e-3), "runs/pretrain", seed=0)
  >>> trainer.fit(lambda epoch: make_dataset(..., seed=epoch), epochs=2)
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfsr.training")

CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
HISTORY_FILE = "history.json"


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


def _batch_size(batch) -> int:
    features = batch[0] if isinstance(batch, tuple) else batch
    for value in features.values():
        if isinstance(value, tf.RaggedTensor):
            return int(value.nrows())
        return int(tf.shape(value)[0])
    return 0


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
            str(self.run_dir / CHECKPOINT_DIR),
            max_to_keep=keep_checkpoints,
            step_counter=self.step,
        )
        self.history: list[dict] = []
        self.restored_from: str | None = None
        self._built = False
        self._train_fn = None
        self._writer = None
        model.compile(optimizer=optimizer)

    # ------------------------------------------------------------------ building and restoring
    def build(self, batch) -> None:
        """Creates the model's and the optimizer's variables from one batch (needed before restoring)."""
        if self._built:
            return
        features = batch[0] if isinstance(batch, tuple) else batch
        self.model(features, training=False)
        self.optimizer.build(self.model.trainable_variables)
        self._built = True

    def restore(self) -> bool:
        """Restores the latest checkpoint of the run directory, if there is one. Returns whether it did."""
        latest = self.manager.latest_checkpoint
        if not latest:
            return False
        self.checkpoint.restore(latest).expect_partial()
        self.restored_from = latest
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
        path = self.manager.save(checkpoint_number=self.step)
        _write_json_atomic(self.run_dir / HISTORY_FILE, self.history)
        return path

    # ------------------------------------------------------------------ training
    def _summary_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / TENSORBOARD_DIR / self.stage))
        return self._writer

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
    ) -> list[dict]:
        """Trains until `epochs` epochs are done or the global step reaches `max_steps`.

        Args:
          dataset_fn: ``epoch -> finite tf.data.Dataset`` of that epoch's batches. It must be deterministic
            for a given epoch (shuffle with ``seed + epoch``) for a mid-epoch resume to skip the right batches.
          epochs: total number of epochs of the run (a resumed run counts the epochs already done).
          max_steps: optional cap on the global step.
          resume: restore the latest checkpoint of the run directory first.

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
        first_epoch_ds = dataset_fn(int(self.epoch.numpy()))
        if self._train_fn is None:
            # one trace for every batch, the last (smaller) one included: the batch dimension is None
            self._train_fn = tf.function(self.model.train_step, input_signature=[first_epoch_ds.element_spec])
        writer = self._summary_writer()
        last_saved = int(self.step.numpy())
        steps_per_epoch: int | None = None
        interval: dict[str, list[float]] = {}
        interval_examples = 0
        interval_start = time.perf_counter()
        start_epoch = int(self.epoch.numpy())
        try:
            for epoch in range(start_epoch, epochs):
                if max_steps is not None and int(self.step.numpy()) >= max_steps:
                    break
                ds = first_epoch_ds if epoch == start_epoch else dataset_fn(epoch)
                skip = int(self.step_in_epoch.numpy()) if epoch == start_epoch else 0
                if skip:
                    ds = ds.skip(skip)
                    log.info("%s: epoch %d: skipping %d batches already trained", self.stage, epoch + 1, skip)
                self.epoch.assign(epoch)
                bar = tf.keras.utils.Progbar(steps_per_epoch, unit_name="step") if self.verbose else None
                seen = skip
                for batch in ds:
                    outputs = self._train_fn(batch)
                    self.step.assign_add(1)
                    self.step_in_epoch.assign_add(1)
                    seen += 1
                    step = int(self.step.numpy())
                    interval_examples += _batch_size(batch)
                    values = {k: _scalar(v) for k, v in outputs.items()}
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
                        last_saved = step
                    if max_steps is not None and step >= max_steps:
                        break
                else:  # the epoch ran to its end
                    steps_per_epoch = seen
                    self.epoch.assign(epoch + 1)
                    self.step_in_epoch.assign(0)
                    self.model.reset_metrics()
                    if interval:
                        self._log_point(
                            int(self.step.numpy()), epoch, interval, interval_examples, interval_start, writer
                        )
                        interval, interval_examples, interval_start = {}, 0, time.perf_counter()
                    self.save()
                    last_saved = int(self.step.numpy())
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
        if int(self.step.numpy()) != last_saved or self.manager.latest_checkpoint is None:
            self.save()
        else:
            _write_json_atomic(self.run_dir / HISTORY_FILE, self.history)
        writer.flush()
        return self.history

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
            shown = " ".join(
                f"{k} {point[k]:.4f}" for k in ("loss", "total_loss", "regularization_loss") if k in point
            )
            log.info(
                "%s: step %d epoch %d %s (%.0f ex/s)",
                self.stage,
                step,
                epoch + 1,
                shown,
                point["examples_per_sec"],
            )


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
