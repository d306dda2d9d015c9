"""A small end-to-end training run on synthetic records with real signal."""

from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec
from tfsr.models import ModelConfig, build_model

import pytest

SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=8)
WORLD = {"num_users": 15, "num_items": 30, "num_queries": 10}


@pytest.mark.slow
def test_srfoundation_learns_on_synthetic_data(tmp_path):
    train = data.write_synthetic_samples(tmp_path / "train", SPEC, 1500, seed=0, **WORLD)
    test = data.write_synthetic_samples(
        tmp_path / "test", SPEC, 500, seed=0, draw_seed=1, **WORLD
    )  # other rows
    train_ds = data.make_dataset(train, SPEC, 64, seed=0)
    config = ModelConfig(
        "srfoundation",
        embedding_dim=8,
        adaptive_units=16,
        expert_units=(16,),
        tower_units=(8,),
        num_hash_bins=256,
        learning_rate=0.01,
    )
    model = build_model(config, SPEC)
    model.compile()
    train_eval = data.make_dataset(train, SPEC, 1500, shuffle=False)
    before = model.evaluate(train_eval, return_dict=True, verbose=0)
    model.fit(train_ds, epochs=6, verbose=0)
    after = model.evaluate(train_eval, return_dict=True, verbose=0)
    held_out = model.evaluate(data.make_dataset(test, SPEC, 500, shuffle=False), return_dict=True, verbose=0)
    assert after["loss"] < before["loss"] - 0.3, (before["loss"], after["loss"])
    assert after["auc"] > 0.7, after["auc"]
    assert held_out["auc"] > 0.6, held_out["auc"]
    assert 0 < after["alignment_loss"] < 0.1
