"""Contracts owned in one place: the row-error type, the positive-int check, what the spec derives."""

from beam_jobs import text_features, vocabularies
from tfsr.contract import RowError, check_positive_int
from tfsr.datasets import logs
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec

import pytest


def test_one_row_error_for_parsing_and_validation():
    parse = RowError("malformed_json", "Expecting value at column 1")
    assert (parse.reason, parse.field, str(parse)) == (
        "malformed_json",
        None,
        "malformed_json: Expecting value at column 1",
    )
    invalid = RowError.invalid("user_id", "expected a string")
    assert (invalid.reason, invalid.field, invalid.problem) == (
        "invalid_user_id",
        "user_id",
        "expected a string",
    )
    assert str(invalid) == "feature 'user_id': expected a string"
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=4)
    with pytest.raises(RowError) as err:
        spec.validate({"domain": "rec_drama", "user_id": 7, "item_id": "m"}, roles=("raw",))
    assert err.value.reason == "invalid_user_id"


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "2", None])
def test_check_positive_int_refuses(value):
    with pytest.raises(ValueError, match=f"n must be a positive int, got {value!r}"):
        check_positive_int("n", value)


def test_check_positive_int_accepts():
    assert check_positive_int("n", 3) == 3


def test_feature_spec_needs_its_domains():
    with pytest.raises(TypeError, match="DomainRegistry"):
        FeatureSpec()


def test_beam_and_log_columns_derive_from_the_spec():
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=4)
    assert set(vocabularies.VOCAB_FEATURES) == {f.name for f in spec.vocab_features}
    assert set(text_features.TEXT_FEATURES) == set(spec.text_embeddings)
    assert spec.text_embeddings == {
        "query_text": "query_text_embedding",
        "item_title": "item_title_embedding",
    }
    assert (
        tuple(
            f.name
            for f in spec.features
            if f.role in ("raw", "label", "meta") and f.name not in logs.COMPUTED
        )
        == logs.COLUMNS
    )
