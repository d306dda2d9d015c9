"""tfsr.training.loop.Trainer on a toy TFRS model: checkpoints, resume continues the step count."""

import json

from tfsr.training import config as tc
from tfsr.training.loop import Trainer, Validation, read_history

import numpy as np
import pytest
import tensorflow as tf
from training_samples import ToyRankingModel


def _dataset(epoch, seed=0, n=96, batch=16):
    rng = np.random.default_rng(123)
    x = rng.standard_normal((n, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    return tf.data.Dataset.from_tensor_slices({"x": x, "label": y}).shuffle(n, seed=seed + epoch).batch(batch)


def _trainer(run_dir, **kw):
    tf.keras.utils.set_random_seed(0)
    return Trainer(
        ToyRankingModel(), tf.keras.optimizers.Adam(0.05), run_dir, log_every=2, checkpoint_every=4, **kw
    )


def test_fit_writes_checkpoints_history_and_tensorboard(tmp_path):
    trainer = _trainer(tmp_path)
    history = trainer.fit(_dataset, epochs=2)
    assert int(trainer.step.numpy()) == 12  # 96 / 16 = 6 steps per epoch
    assert int(trainer.optimizer.iterations.numpy()) == 12
    assert history[-1]["step"] == 12 and history[0]["loss"] > history[-1]["loss"]
    assert trainer.manager.latest_checkpoint.endswith("ckpt-12")
    assert read_history(tmp_path) == json.loads(json.dumps(history))
    assert list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))


def test_resume_continues_step_count_and_matches_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit(_dataset, epochs=2)

    first = _trainer(tmp_path / "killed")
    first.fit(_dataset, epochs=2, max_steps=8)  # "killed" at step 8 (mid epoch 2, after a checkpoint)
    assert int(first.step.numpy()) == 8

    resumed = _trainer(tmp_path / "killed")
    resumed.fit(_dataset, epochs=2)
    assert resumed.restored_from.endswith("ckpt-8")
    assert int(resumed.step.numpy()) == 12  # continued from 8, not restarted at 0
    assert int(resumed.optimizer.iterations.numpy()) == 12
    np.testing.assert_allclose(resumed.model.dense.kernel.numpy(), full.model.dense.kernel.numpy(), atol=1e-5)
    steps = [h["step"] for h in read_history(tmp_path / "killed")]
    assert steps == sorted(set(steps)) and steps[-1] == 12

    again = _trainer(tmp_path / "killed")  # a finished run does nothing more
    again.fit(_dataset, epochs=2)
    assert int(again.step.numpy()) == 12


def test_config_resolution_precedence(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"batch_size": 256, "epochs": 3, "model": {"gating": "cls"}}))
    c = tc.resolve(
        tc.FINETUNE_DEFAULTS,
        str(cfg),
        {"samples_dir": "s", "output_dir": "o", "epochs": 5},
        ["model.alignment_weight=0.5", 'freeze=["L0"]'],
    )
    assert (c.batch_size, c.epochs, c.split) == (256, 5, "coldstart_finetune")
    assert c.model == {"gating": "cls", "alignment_weight": 0.5} and c.freeze == ["L0"]
    cfg.write_text(json.dumps({"batch_sise": 3}))
    with pytest.raises(ValueError, match="unknown training config keys \\['batch_sise'\\]"):
        tc.resolve({}, str(cfg), {})
    with pytest.raises(ValueError, match="freeze levels must be among"):
        tc.resolve({}, None, {"samples_dir": "s", "output_dir": "o", "freeze": ["L9"]})


def test_verbose_progress_bar(tmp_path, capsys):
    trainer = _trainer(tmp_path, verbose=True)
    trainer.fit(_dataset, epochs=1)
    assert int(trainer.step.numpy()) == 6
    assert "loss" in capsys.readouterr().out


def _scripted_validation(trainer, values, **kw):
    """A Validation whose epoch scores are `values` in turn; records the weights each epoch ended with."""
    seen = []

    def evaluate():
        seen.append(trainer.model.dense.kernel.numpy().copy())
        return {"val_auc": values[len(seen) - 1], "val_loss": 1.0}

    return Validation(evaluate, **kw), seen


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch(tmp_path):
    trainer = _trainer(tmp_path)
    validation, seen = _scripted_validation(trainer, [0.60, 0.70, 0.65, 0.64, 0.9], patience=2)
    trainer.fit(_dataset, epochs=5, validation=validation)
    assert len(seen) == 4  # epochs 3 and 4 did not beat epoch 2: stopped before epoch 5
    assert int(trainer.step.numpy()) == 24
    np.testing.assert_array_equal(trainer.model.dense.kernel.numpy(), seen[1])  # epoch 2's weights
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["epoch"] == 2 and best["value"] == 0.70 and best["stopped_early"]
    val_points = [h for h in read_history(tmp_path) if "val_auc" in h]
    assert [h["epoch"] for h in val_points] == [1, 2, 3, 4]

    # a resumed run of a stopped run trains no further, and still ends on the best weights
    again = _trainer(tmp_path)
    validation, seen_again = _scripted_validation(again, [0.99] * 5, patience=2)
    again.fit(_dataset, epochs=5, validation=validation)
    assert seen_again == [] and int(again.step.numpy()) == 24
    np.testing.assert_array_equal(again.model.dense.kernel.numpy(), seen[1])


def test_loss_monitors_minimise_and_patience_none_runs_every_epoch(tmp_path):
    trainer = _trainer(tmp_path)
    losses = iter([0.5, 0.4, 0.45, 0.6])
    kernels = []

    def evaluate():
        kernels.append(trainer.model.dense.kernel.numpy().copy())
        return {"val_loss": next(losses)}

    trainer.fit(_dataset, epochs=4, validation=Validation(evaluate, monitor="val_loss", patience=None))
    assert len(kernels) == 4
    np.testing.assert_array_equal(trainer.model.dense.kernel.numpy(), kernels[1])
    with pytest.raises(ValueError, match="patience must be a positive int or None, got 0"):
        Validation(evaluate, patience=0)
