"""Training faults: a real `tfsr train` killed with SIGKILL resumes to the uninterrupted result; NaN/Inf in an
input feature or in the loss stops the run naming the step (and the feature) and keeps the last good
checkpoint; TFRecords that do not match the feature spec fail fast naming the feature."""

import math
import re
import signal
import subprocess
import time

from tfsr import layout
from tfsr.cli import subprocess_command
from tfsr.training import cli
from tfsr.training.loop import NonFiniteError, Trainer, read_history

import numpy as np
import pytest
import tensorflow as tf
from training_samples import (
    ToyRankingModel,
    checkpoint_steps,
    checkpoint_values,
    read_records,
    subprocess_env,
    train_args,
    write_records,
    write_samples_dir,
)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root, _ = write_samples_dir(tmp_path_factory.mktemp("faults") / "samples", rows=600)
    return root


def _copy_with(samples, dst, edit):
    """A copy of the samples dir whose pretrain_train is one shard, with `edit(examples)` applied."""
    dst.mkdir(parents=True)
    (dst / layout.FEATURE_SPEC).write_text((samples / layout.FEATURE_SPEC).read_text())
    examples = read_records(samples)
    edit(examples)
    write_records(dst / layout.PRETRAIN_TRAIN / "part-00000.tfrecord.gz", examples)
    return dst


# ----------------------------------------------------------------------------------------- kill and resume
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(samples, tmp_path):
    """Two real `tfsr train` processes side by side: one runs through, the other is SIGKILLed mid-epoch
    (after checkpoints), then re-run on its run directory; both end at the same step with the same weights."""
    flags = ["--batch_size", 32, "--epochs", 3, "--log_every", 1, "--checkpoint_every", 4]
    full = subprocess.Popen(
        subprocess_command("train", *train_args(samples, tmp_path / "full", *flags)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_run = tmp_path / "killed"
    victim = subprocess.Popen(
        subprocess_command("train", *train_args(samples, killed_run, *flags)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_at = None
    for line in victim.stderr:  # the progress lines: one per step
        if re.search(
            r"train: step 22\b", line
        ):  # mid epoch 2 (16 steps per epoch), after ckpt-16 and ckpt-20
            victim.send_signal(signal.SIGKILL)
            killed_at = 22
            break
    victim.wait(timeout=120)
    assert killed_at and victim.returncode == -signal.SIGKILL
    assert not (killed_run / "model").exists()  # it never finished
    steps_at_kill = checkpoint_steps(killed_run)
    assert 20 in steps_at_kill and max(steps_at_kill) < 48, steps_at_kill

    started = time.perf_counter()
    resumed = subprocess.run(
        subprocess_command("train", *train_args(samples, killed_run, *flags)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    resume_s = time.perf_counter() - started
    assert full.wait(timeout=120) == 0
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed_run / 'checkpoints'}/ckpt-{max(steps_at_kill)}" in resumed.stderr
    assert "after 48 steps" in resumed.stdout

    a = checkpoint_values(str(tmp_path / "full" / "checkpoints" / "ckpt-48"))
    b = checkpoint_values(str(killed_run / "checkpoints" / "ckpt-48"))
    assert a.keys() == b.keys() and len(a) > 20
    diffs = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].dtype.kind == "f"}
    worst = max(diffs.values())
    loss_full = [h["loss"] for h in read_history(tmp_path / "full")]
    loss_resumed = [h["loss"] for h in read_history(killed_run)]
    print(
        f"\nkill/resume: killed at step ~{killed_at} (checkpoints {steps_at_kill}), resumed in {resume_s:.1f} s; "
        f"final loss uninterrupted {loss_full[-1]:.6f} vs resumed {loss_resumed[-1]:.6f}; "
        f"max |weight diff| {worst:.2e} over {len(diffs)} tensors"
    )
    assert worst < 1e-4
    assert len(loss_resumed) == 48 and np.allclose(loss_full, loss_resumed, atol=1e-4)


# ------------------------------------------------------------------------------------------- NaN / Inf
def test_nan_embedding_in_tfrecord_stops_naming_step_and_feature(samples, tmp_path, capsys):
    def poison(examples):
        examples[300].features.feature["item_title_embedding"].float_list.value[1] = float("nan")

    bad = _copy_with(samples, tmp_path / "nan_samples", poison)
    run = tmp_path / "run"
    rc = cli.train_main(train_args(bad, run, "--batch_size", 32, "--epochs", 2, "--checkpoint_every", 3))
    err = capsys.readouterr().err
    assert rc == 1
    assert (
        "tfsr train: error: train: step " in err and "NaN/Inf in input feature 'item_title_embedding'" in err
    )
    failed_step = int(err.split("train: step ")[1].split()[0])
    saved = checkpoint_steps(run)
    assert saved and max(saved) < failed_step, (saved, failed_step)  # nothing written at or after the NaN
    assert f"last good checkpoint is {run / 'checkpoints'}/ckpt-{max(saved)}" in err
    assert not (run / "model").exists()
    values = checkpoint_values(str(run / "checkpoints" / f"ckpt-{max(saved)}"))
    assert all(np.isfinite(v).all() for v in values.values() if v.dtype.kind == "f")


def test_huge_learning_rate_stops_on_non_finite_loss_keeping_last_good_checkpoint(samples, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--batch_size", 32, "--epochs", 1, "--checkpoint_every", 1, "--learning_rate", 1e20]
    assert cli.train_main(train_args(samples, run, *args)) == 1
    err = capsys.readouterr().err
    assert "tfsr train: error: train: step " in err
    assert "the loss is not finite" in err or "the weights became NaN/Inf" in err
    failed_step = int(err.split("train: step ")[1].split()[0])
    saved = checkpoint_steps(run)
    assert saved and max(saved) < failed_step
    values = checkpoint_values(str(run / "checkpoints" / f"ckpt-{max(saved)}"))
    assert all(np.isfinite(v).all() for v in values.values() if v.dtype.kind == "f")


class _PoisonedModel(ToyRankingModel):
    """A toy ranking model whose loss turns NaN from global step `poison_at` (1-based) on."""

    def __init__(self, poison_at):
        super().__init__()
        self.poison_at = poison_at

    def compute_loss(self, features, training=False):
        loss = super().compute_loss(features, training=training)
        step = self.optimizer.iterations + 1
        return loss + tf.where(step >= self.poison_at, tf.constant(math.nan), 0.0)


def _toy_dataset(epoch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices({"x": x, "label": (x[:, 0] > 0).astype("float32")}).batch(16)


def test_injected_nan_loss_stops_at_that_step_and_resume_keeps_last_good_checkpoint(tmp_path):
    tf.keras.utils.set_random_seed(0)
    trainer = Trainer(_PoisonedModel(9), tf.keras.optimizers.Adam(0.05), tmp_path, checkpoint_every=4)
    with pytest.raises(NonFiniteError, match=r"train: step 9 \(epoch 2\): the loss is not finite \(loss=nan"):
        trainer.fit(_toy_dataset, epochs=3)
    # at step 4 and at the end of epoch 1 (6 steps); the next one (step 10) never came
    assert checkpoint_steps(tmp_path) == [4, 6]
    assert int(trainer.step.numpy()) == 8

    fixed = Trainer(_PoisonedModel(10**9), tf.keras.optimizers.Adam(0.05), tmp_path, checkpoint_every=4)
    fixed.fit(_toy_dataset, epochs=3)  # the cause removed, the run resumes from the last good checkpoint
    assert fixed.restored_from.endswith("ckpt-6") and int(fixed.step.numpy()) == 18
    assert np.isfinite(fixed.model.dense.kernel.numpy()).all()


# ------------------------------------------------------------------------------- feature spec mismatch
def test_tfsr_train_on_records_not_matching_the_spec_fails_fast_naming_the_feature(samples, tmp_path, capsys):
    # every record: the embedding is one value short -> make_dataset's first-record check, before any step
    def shorten(examples):
        for ex in examples:
            del ex.features.feature["query_text_embedding"].float_list.value[-1]

    bad = _copy_with(samples, tmp_path / "short", shorten)
    started = time.perf_counter()
    assert cli.train_main(train_args(bad, tmp_path / "run1", "--batch_size", 32)) == 1
    err = capsys.readouterr().err
    assert "does not match the feature spec" in err and "query_text_embedding" in err
    assert not checkpoint_steps(tmp_path / "run1") and time.perf_counter() - started < 30

    # one record deep in the file lacks a required feature -> the read fails mid-epoch, naming step and feature
    def drop(examples):
        del examples[400].features.feature["user_id"]

    bad = _copy_with(samples, tmp_path / "missing", drop)
    run = tmp_path / "run2"
    args = ["--batch_size", 32, "--epochs", 2, "--checkpoint_every", 3]
    assert cli.train_main(train_args(bad, run, *args)) == 1
    err = capsys.readouterr().err
    assert "tfsr train: error: train: step " in err and "reading the training data failed" in err
    assert "user_id" in err
    failed_step = int(err.split("train: step ")[1].split()[0])
    assert checkpoint_steps(run) and max(checkpoint_steps(run)) < failed_step
