"""Progress and history of a run: :class:`ProgressLog` (a Keras callback) writes ``history.json`` and shows
a compact progress line (:func:`format_progress`) or a Keras progress bar."""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

from tfsr.training.callbacks import HISTORY_FILE, ResumableCheckpoints, read_history, write_json_atomic

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfsr.training")


def _scalar(value) -> float | None:
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001
        return None
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
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


class ProgressLog(tf.keras.callbacks.Callback):
    """The run's history (``<run_dir>/history.json``: a point every `log_every` steps with the mean of each
    logged value over the interval, examples/s, the learning rate; and each epoch's validation metrics) and
    its progress: a compact line per point (:func:`format_progress`) or, with `verbose`, a Keras progress
    bar per epoch.

    Args:
      run_dir: the run directory (the chief writes ``history.json`` there).
      checkpoints: the run's :class:`ResumableCheckpoints` (the step, and what was restored).
      stage: the stage name in the history and the progress lines.
      log_every: steps between history points.
      batch_size: rows per step, for examples/s (None: not reported).
      verbose: a progress bar instead of progress lines.
    """

    def __init__(
        self,
        run_dir: str | pathlib.Path,
        checkpoints: ResumableCheckpoints,
        stage: str = "train",
        log_every: int = 50,
        batch_size: int | None = None,
        verbose: bool = False,
    ):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.checkpoints = checkpoints
        self.stage = stage
        self.log_every = int(log_every)
        self.batch_size = batch_size
        self.verbose = verbose
        self.history: list[dict] = []
        self.plan: dict[str, Any] = {}  # epochs, max_steps, steps_per_epoch of the whole run (see `set_plan`)
        self._loaded = False
        self._interval: dict[str, list[float]] = {}
        self._interval_steps = 0
        self._interval_start = self._last_batch_end = time.perf_counter()
        self._epoch = 0
        self._epoch_steps = 0
        self._bar: tf.keras.utils.Progbar | None = None

    def set_plan(self, epochs: int | None, max_steps: int | None, steps_per_epoch: int | None) -> None:
        """The run's length when ``model.fit`` is called once per epoch (its own ``params`` then describe
        one epoch): for the percentage and the ETA of the progress lines."""
        self.plan = {"epochs": epochs, "max_steps": max_steps, "steps_per_epoch": steps_per_epoch}

    def _load(self) -> None:
        """The history of a resumed run, up to the restored step (points after it are trained again)."""
        if self._loaded:
            return
        step = int(self.checkpoints.step.numpy())
        self.history = [
            h
            for h in read_history(self.run_dir)
            if h.get("step", 0) <= step and h.get("stage", self.stage) == self.stage
        ]
        self._loaded = True

    def write(self) -> None:
        if self.checkpoints.is_chief:
            write_json_atomic(self.run_dir / HISTORY_FILE, self.history)

    def on_train_begin(self, logs=None):
        self._load()
        if "start_step" not in self.plan:
            self.plan.setdefault("epochs", self.params.get("epochs"))
            self.plan.setdefault("steps_per_epoch", self.params.get("steps"))
            self.plan.update(start_step=int(self.checkpoints.step.numpy()), start_time=time.perf_counter())
        self._interval, self._interval_steps, self._interval_start = {}, 0, time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_steps = int(self.checkpoints.step_in_epoch.numpy())  # batches a resumed epoch skips
        if self.verbose:
            self._bar = tf.keras.utils.Progbar(self.plan.get("steps_per_epoch"), unit_name="step")

    def on_train_batch_end(self, batch, logs=None):
        values = {k: _scalar(v) for k, v in (logs or {}).items()}
        for k, v in values.items():
            if v is not None:
                self._interval.setdefault(k, []).append(v)
        self._interval_steps += 1
        self._epoch_steps += 1
        self._last_batch_end = time.perf_counter()
        step = int(self.checkpoints.step.numpy())
        if self._bar is not None:
            losses = [(k, v) for k, v in values.items() if v is not None and "loss" in k]
            self._bar.update(self._epoch_steps, losses)
        if step % self.log_every == 0:
            self._point(step)
        if self.checkpoints.saved_at == step:
            self.write()

    def on_epoch_end(self, epoch, logs=None):
        if not self.checkpoints.stopped_mid_epoch:
            self.plan["steps_per_epoch"] = self._epoch_steps
        step = int(self.checkpoints.step.numpy())
        if self._interval:
            self._point(step)
        validated = {k: float(v) for k, v in (logs or {}).items() if k.startswith("val_")}
        if validated:
            self.history.append({"stage": self.stage, "step": step, "epoch": epoch + 1, **validated})
        self.write()

    def on_train_end(self, logs=None):
        if self._interval:
            self._point(int(self.checkpoints.step.numpy()))
        self.write()

    def _point(self, step: int) -> None:
        # up to the interval's last step: an epoch-end point comes after the validation and the checkpoint
        elapsed = max(self._last_batch_end - self._interval_start, 1e-9)
        point: dict[str, Any] = {"stage": self.stage, "step": step, "epoch": self._epoch + 1}
        for k, vs in self._interval.items():
            point[k] = float(np.mean(vs))
        if self.batch_size:
            point["examples_per_sec"] = round(self._interval_steps * self.batch_size / elapsed, 1)
        lr = self._learning_rate()
        if lr is not None:
            point["learning_rate"] = lr
        point["wall_s"] = round(time.time(), 3)
        self.history.append(point)
        self._interval, self._interval_steps, self._interval_start = {}, 0, time.perf_counter()
        if not self.verbose:
            total, eta = self._total_and_eta(step)
            log.info(
                "%s",
                format_progress(
                    self.stage, step, total, self._epoch + 1, self.plan.get("epochs"), point, eta
                ),
            )

    def _learning_rate(self) -> float | None:
        optimizer = self.model.optimizer
        lr = getattr(optimizer, "learning_rate", None)
        if lr is None:
            return None
        if callable(lr) and not isinstance(lr, tf.Variable):
            lr = lr(optimizer.iterations)
        return _scalar(lr)

    def _total_and_eta(self, step: int) -> tuple[int | None, float | None]:
        """The step this run stops at (when known) and the seconds left at this run's pace so far."""
        plan = self.plan
        per_epoch, epochs, max_steps = (plan.get(k) for k in ("steps_per_epoch", "epochs", "max_steps"))
        total = per_epoch * epochs if per_epoch and epochs else None
        if max_steps:
            total = min(total, max_steps) if total else max_steps
        done = step - plan.get("start_step", step)
        if not total or done <= 0:
            return total, None
        elapsed = time.perf_counter() - plan["start_time"]
        return total, max(total - step, 0) * elapsed / done
