"""Keras-native training: a team's subclass trains with plain `model.fit` and gets what `tfsr train` gets
(the checked train step, the run's callbacks), and the Trainer is `model.fit` underneath."""

import json

from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec
from tfsr.models import ModelConfig, SRFoundationModel
from tfsr.models.train_step import nonfinite_inputs
from tfsr.training.callbacks import NonFiniteLossStop, ResumableCheckpoints, read_history
from tfsr.training.loop import Trainer
from tfsr.training.progress import ProgressLog

import numpy as np
import pytest
import tensorflow as tf

SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=4)
CONFIG = ModelConfig(
    "srfoundation",
    embedding_dim=8,
    adaptive_units=16,
    expert_units=(16,),
    tower_units=(8,),
    num_hash_bins=256,
)


class TeamModel(SRFoundationModel):
    """A team's subclass that changes nothing of training: it must inherit the whole behaviour."""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return data.write_synthetic_samples(tmp_path_factory.mktemp("samples"), SPEC, 256, seed=0, num_shards=1)


def _dataset(records, epoch=0):
    return data.make_dataset(records, SPEC, 32, shuffle=True, seed=epoch)


def _model():
    tf.keras.utils.set_random_seed(0)
    return TeamModel(CONFIG, SPEC)


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


def test_trainer_is_model_fit_with_callbacks(records, tmp_path):
    plain = _model()
    plain.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    plain.fit(_dataset(records, 0), epochs=1, verbose=0)
    plain.fit(_dataset(records, 1), epochs=2, initial_epoch=1, verbose=0)

    trainer = Trainer(_model(), tf.keras.optimizers.Adam(0.01), tmp_path, log_every=4, checkpoint_every=100)
    trainer.fit(lambda epoch: _dataset(records, epoch), epochs=2)
    assert int(trainer.step.numpy()) == 16  # 256 rows / 32, two epochs
    for a, b in zip(_weights(plain), _weights(trainer.model), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_plain_fit_refuses_a_nan_input_before_changing_any_weight(records):
    model = _model()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    batch = next(iter(_dataset(records)))
    model(batch)
    before = _weights(model)
    poisoned = dict(batch)
    poisoned["item_title_embedding"] = tf.tensor_scatter_nd_update(
        batch["item_title_embedding"], [[3, 1], [5, 0]], [np.nan, np.inf]
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        model.fit(tf.data.Dataset.from_tensors(poisoned), epochs=1, verbose=0)
    assert nonfinite_inputs(raised.value.message) == {"item_title_embedding": 2}
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plain_fit_with_the_run_callbacks_checkpoints_logs_and_resumes(records, tmp_path):
    def run(epochs):
        model = _model()
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
        model(next(iter(_dataset(records))))
        model.optimizer.build(model.trainable_variables)
        checkpoints = ResumableCheckpoints(model, tmp_path, checkpoint_every=3)
        initial_epoch = checkpoints.restore()
        callbacks = [
            NonFiniteLossStop(checkpoints),
            checkpoints,
            ProgressLog(tmp_path, checkpoints, log_every=2, batch_size=32),
        ]
        model.fit(
            _dataset(records), epochs=epochs, initial_epoch=initial_epoch, verbose=0, callbacks=callbacks
        )
        return model, checkpoints

    _, first = run(epochs=1)
    assert int(first.step.numpy()) == 8 and first.latest_checkpoint().endswith("ckpt-8")
    resumed_model, resumed = run(epochs=2)  # the second epoch only: the first is restored
    assert resumed.restored_from.endswith("ckpt-8") and int(resumed.step.numpy()) == 16
    assert int(resumed_model.optimizer.iterations.numpy()) == 16
    history = read_history(tmp_path)
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(h["examples_per_sec"] > 0 and np.isfinite(h["loss"]) for h in history)
    assert json.loads((tmp_path / "history.json").read_text()) == history
