"""Tests of the feature specification: validation, tf.Example round-trips and derived specs."""

import json
import os
import subprocess
import sys

from tfsr.contract import RowError
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import Domain, DomainRegistry, Feature, FeatureSpec

import numpy as np
import pytest
import tensorflow as tf

TEXT_DIM = 4


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=TEXT_DIM)


def full_record(**overrides):
    record = {
        "domain": "search_tags",
        "user_id": "u1",
        "query_id": "dark comedy",
        "query_text": "Dark Comedy",
        "item_id": "m42",
        "item_title": "Fargo (1996)",
        "item_genres": ["Comedy", "Crime"],
        "item_decade": "1990s",
        "query_text_embedding": [0.5, -0.5, 0.25, 0.0],
        "item_title_embedding": [1.0, 0.0, 0.0, 0.0],
        "label": 1,
        "timestamp": 1445714994,
        "is_cold_item": 0,
    }
    record.update(overrides)
    return record


def test_example_round_trip_through_parse_spec(spec):
    record = full_record()
    serialized = spec.to_example(record).SerializeToString()
    parsed = tf.io.parse_example(tf.constant([serialized]), spec.parse_spec())
    assert parsed["domain"].numpy()[0] == b"search_tags"
    assert parsed["item_genres"].to_list() == [[b"Comedy", b"Crime"]]
    np.testing.assert_allclose(parsed["query_text_embedding"].numpy()[0], record["query_text_embedding"])
    assert parsed["label"].numpy()[0] == 1
    assert parsed["timestamp"].numpy()[0] == 1445714994


def test_defaults_fill_optional_features_in_python_and_in_parsing(spec):
    record = full_record(domain="rec_drama")
    for name in ("query_id", "query_text", "item_decade", "item_genres", "is_cold_item"):
        del record[name]
    values = spec.validate(record)
    assert values["query_text"] == "" and values["item_genres"] == [] and values["is_cold_item"] == 0

    # A serving request carries only some raw features; parsing fills the defaults.
    minimal = tf.train.Example()
    for name, value in (("domain", b"rec_drama"), ("user_id", b"u"), ("item_id", b"m")):
        minimal.features.feature[name].bytes_list.value.append(value)
    parsed = tf.io.parse_example(tf.constant([minimal.SerializeToString()]), spec.parse_spec(roles=("raw",)))
    assert parsed["query_text"].numpy()[0] == b""
    assert parsed["item_genres"].to_list() == [[]]
    assert set(parsed) == {f.name for f in spec.raw_features}


@pytest.mark.parametrize(
    "overrides, field, problem",
    [
        ({"user_id": None}, "user_id", "required feature is missing"),
        ({"user_id": 7}, "user_id", "expected a string, got int"),
        ({"item_title": b"\xff\xfe"}, "item_title", "not valid UTF-8"),
        ({"label": 2}, "label", "label must be 0 or 1"),
        ({"label": 0.5}, "label", "expected an integer"),
        ({"domain": "rec_westerns"}, "domain", "unknown domain 'rec_westerns'"),
        ({"item_genres": "Comedy"}, "item_genres", "expected a list of string"),
        ({"query_text_embedding": [1.0, 2.0]}, "query_text_embedding", "expected 4 values"),
        ({"item_title_embedding": [float("nan")] * 4}, "item_title_embedding", "finite"),
        ({"timestamp": "yesterday"}, "timestamp", "expected an integer"),
    ],
)
def test_validator_names_field_and_problem(spec, overrides, field, problem):
    with pytest.raises(RowError) as err:
        spec.validate(full_record(**overrides))
    assert err.value.field == field
    assert problem in err.value.problem
    assert f"feature '{field}'" in str(err.value)


def test_validator_rejects_non_mapping(spec):
    with pytest.raises(RowError, match="expected a mapping"):
        spec.validate(["not", "a", "dict"])


def test_missing_derived_feature_says_how_to_compute_it(spec):
    record = full_record()
    del record["item_title_embedding"]
    with pytest.raises(RowError, match="compute it from 'item_title'"):
        spec.validate(record)
    # ...but a raw-only record (what logs carry) does not need it.
    assert "item_title_embedding" not in spec.validate(record, roles=("raw", "label", "meta"))


def test_bytes_strings_are_decoded(spec):
    assert spec.validate(full_record(user_id=b"caf\xc3\xa9"))["user_id"] == "café"


def test_derived_views_agree(spec):
    model_names = {f.name for f in spec.model_features}
    assert model_names == {
        "domain",
        "user_id",
        "query_id",
        "item_id",
        "item_genres",
        "item_decade",
        "query_text_embedding",
        "item_title_embedding",
    }
    inputs = spec.keras_inputs()
    assert set(inputs) == model_names
    assert inputs["item_title_embedding"].shape.as_list() == [None, TEXT_DIM]
    assert isinstance(inputs["item_genres"].type_spec, tf.RaggedTensorSpec)

    serving = spec.serving_tensor_specs()
    assert set(serving) == {f.name for f in spec.raw_features}
    assert "label" not in serving and "item_title_embedding" not in serving
    assert serving["item_genres"].shape.as_list() == [None, None]
    assert serving["user_id"].dtype == tf.string


def test_json_round_trip(spec):
    again = FeatureSpec.loads(spec.dumps())
    assert again == spec
    assert again.domains["rec_children"].cold_start


def test_json_rejects_other_schema_version(spec):
    data = spec.to_json()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version 99"):
        FeatureSpec.from_json(data)


def test_domain_registry():
    assert [d.name for d in MOVIELENS_DOMAINS.cold()] == ["rec_children"]
    assert len(MOVIELENS_DOMAINS.warm()) == 5
    assert MOVIELENS_DOMAINS["search_tags"].kind == "search"
    with pytest.raises(KeyError, match="unknown domain 'x'"):
        MOVIELENS_DOMAINS["x"]
    with pytest.raises(ValueError, match=r"ids must be exactly 0..1, got \[0, 2\]"):
        DomainRegistry([Domain("a", "rec", 0), Domain("b", "rec", 2)])
    with pytest.raises(ValueError, match="kind must be one of"):
        Domain("a", "ads", 0)
    assert DomainRegistry.from_json(json.loads(json.dumps(MOVIELENS_DOMAINS.to_json()))) == MOVIELENS_DOMAINS


def test_bad_feature_definitions_are_rejected():
    with pytest.raises(ValueError, match="aspect must be one of"):
        Feature("x", "string", "item", aspect="image")
    with pytest.raises(ValueError, match="needs a source"):
        Feature("x", "float32", "item", role="derived", shape=(3,))
    with pytest.raises(ValueError, match="unique"):
        FeatureSpec([Feature("domain", "string", "context"), Feature("domain", "string", "context")])


def test_keras3_already_loaded_raises_clear_import_error():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow as tf; tf.keras.layers; import tfsr"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert (
        "TF_USE_LEGACY_KERAS=1" in result.stderr and "import tfsr` before `import tensorflow" in result.stderr
    )


def test_import_tfsr_selects_keras2():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tfsr, tensorflow as tf; print(tf.keras.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")
