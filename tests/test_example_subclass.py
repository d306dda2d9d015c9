"""The subclassing example: custom encoder and towers train, save, load and take new domains."""

import importlib.util
import pathlib

from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import Domain, FeatureSpec
from tfsr.models import ModelConfig, build_model, load_model, save_model

import numpy as np
import tensorflow as tf

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "team_subclass.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("team_subclass", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


def test_hooks_are_used_and_the_model_round_trips(tmp_path):
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=8)
    config = ModelConfig(
        "team_search_example",
        embedding_dim=4,
        adaptive_units=8,
        expert_units=(8,),
        tower_units=(4,),
        num_hash_bins=64,
        extra={"text_hidden": 6},
    )
    model = build_model(config, spec)
    assert isinstance(model, example.TeamSearchModel)
    assert isinstance(model.feature_encoders["item_title_embedding"], example.DeepTextEncoder)
    assert isinstance(model.towers, example.WideAndDeepTowers)
    records = list(data.synthetic_records(spec, 16, seed=1))
    batch = tf.io.parse_example([spec.to_example(r).SerializeToString() for r in records], spec.parse_spec())
    model.compile()
    model.train_step(batch)
    restored = load_model(save_model(model, tmp_path / "team"))
    assert type(restored) is type(model)
    np.testing.assert_array_equal(restored(batch)["ctr"], model(batch)["ctr"])
    model.add_domain(Domain("team_new", "rec", 0))
    assert model.towers.domain_weights.num_domains == len(spec.domains) + 1


def test_main_runs(tmp_path):
    logs = example.main(num_rows=128, epochs=1, workdir=str(tmp_path))
    assert np.isfinite(logs["loss"])
