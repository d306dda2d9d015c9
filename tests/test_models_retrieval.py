"""The two-tower retrieval models: towers, the in-batch softmax with sampling-bias correction (against a
numpy computation), save / load, a new domain that leaves the warm domains' embeddings as they were, and
initialisation from a pretrained ranker."""

from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec
from tfsr.models import (
    CANDIDATE_PROBABILITY,
    ModelConfig,
    build_model,
    load_model,
    save_model,
    warm_registry,
)
from tfsr.models.retrieval import NEGATIVE_PREFIX

import numpy as np
import pytest
import tensorflow as tf

WARM = warm_registry(MOVIELENS_DOMAINS)
SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=6)
WARM_SPEC = FeatureSpec(SPEC.features, WARM, SPEC.text_dim)
VOCABS = {"user_id": [f"u{i}" for i in range(10)], "item_genres": ["Action", "Comedy", "Drama"]}
SMALL = {"embedding_dim": 4, "tower_units": (8, 4), "num_hash_bins": 64}


def _model(model_type="retrieval", **kwargs):
    config = ModelConfig(model_type, **{**SMALL, **kwargs}).with_registry(WARM)
    return build_model(config, SPEC, VOCABS)


def _batch(n=16, seed=0, spec=WARM_SPEC):
    records = list(data.synthetic_records(spec, n, seed=seed))
    serialized = tf.constant([spec.to_example(r).SerializeToString() for r in records])
    return tf.io.parse_example(serialized, spec.parse_spec())


def _perturb(model):
    for i, variable in enumerate(model.trainable_variables):
        variable.assign_add(tf.random.stateless_normal(variable.shape, seed=[i, 3], stddev=0.2))


@pytest.mark.parametrize("model_type", ["retrieval", "id_two_tower"])
def test_towers_shapes_and_normalisation(model_type):
    model = _model(model_type)
    out = model(_batch())
    width = 4
    assert out["context"].shape == (16, width) and out["candidate"].shape == (16, width)
    norms = np.linalg.norm(out["context"].numpy(), axis=1)
    if model_type == "retrieval":
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    # the candidate tower needs no domain: items alone give the same vectors
    batch = _batch()
    items = {k: batch[k] for k in ("item_id", "item_title_embedding", "item_genres", "item_decade")}
    np.testing.assert_allclose(model.candidate_embeddings(items).numpy(), out["candidate"].numpy(), rtol=1e-6)


@pytest.mark.parametrize("num_negatives", [0, 5])
def test_loss_is_the_corrected_softmax_over_the_batch_and_the_sampled_items(num_negatives):
    model = _model(retrieval_temperature=0.1)
    _perturb(model)
    batch = _batch(12, seed=1)
    labels = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1])
    items = np.array([f"i{j}".encode() for j in range(12)])
    items[5] = items[4]  # an accidental hit: row 5's item is row 4's too
    q = np.linspace(0.01, 0.2, 12).astype(np.float32)
    batch = {
        **batch,
        "label": tf.constant(labels),
        "item_id": tf.constant(items),
        CANDIDATE_PROBABILITY: tf.constant(q),
    }
    candidates = {k: batch[k] for k in ("item_id", "item_title_embedding", "item_genres", "item_decade")}
    if num_negatives:
        sampled = _batch(num_negatives, seed=9)
        sampled_ids = np.array([b"i3"] + [f"n{j}".encode() for j in range(1, num_negatives)])  # i3: a hit
        negatives = {
            **{k: sampled[k] for k in ("item_title_embedding", "item_genres", "item_decade")},
            "item_id": tf.constant(sampled_ids),
            CANDIDATE_PROBABILITY: tf.fill([num_negatives], 0.03),
        }
        batch.update({f"{NEGATIVE_PREFIX}{k}": v for k, v in negatives.items()})
    loss = float(model.compute_loss(batch))

    u = model.context_embeddings(batch).numpy()
    v = model.candidate_embeddings(candidates).numpy()
    all_ids, all_q = items, q
    if num_negatives:
        v = np.concatenate([v, model.candidate_embeddings(negatives).numpy()])
        all_ids, all_q = (
            np.concatenate([items, sampled_ids]),
            np.concatenate([q, np.full(num_negatives, 0.03)]),
        )
    logits = u @ v.T / 0.1 - np.log(all_q)[None, :]
    diagonal = np.eye(12, len(all_ids), dtype=bool)
    hits = (items[:, None] == all_ids[None, :]) & ~diagonal
    logits = np.where(hits, -np.inf, logits)  # accidental hits removed
    top = logits.max(1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    per_row = -log_softmax[diagonal]
    expected = (per_row * labels).sum() / labels.sum()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_domain_loss_weights_weigh_the_rows():
    model = _model(
        domain_loss_weights={"rec_action": 0.0, "rec_comedy": 0.0, "rec_drama": 0.0, "rec_other": 0.0}
    )
    batch = _batch(12, seed=2)
    domains = batch["domain"].numpy().astype(str)
    assert "search_tags" in domains and (domains != "search_tags").any()
    full = _model()
    full.set_weights(model.get_weights())
    labels = tf.ones([12], tf.int64)
    batch = {**batch, "label": labels}
    only_search = float(model.compute_loss(batch))
    # the same rows with the other domains' clicks turned into non-clicks: the same sum, more rows divided
    masked = {**batch, "label": tf.constant((domains == "search_tags").astype(np.int64))}
    search_rows = float((domains == "search_tags").sum())
    assert only_search == pytest.approx(float(full.compute_loss(masked)) * search_rows / 12, rel=1e-5)


def test_save_load_round_trip(tmp_path):
    model = _model()
    _perturb(model)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded).__name__ == "RetrievalModel"
    batch = _batch()
    for key in ("context", "candidate"):
        np.testing.assert_allclose(loaded(batch)[key].numpy(), model(batch)[key].numpy(), rtol=1e-6)


def test_new_domain_keeps_the_warm_domains_and_the_index():
    model = _model()
    _perturb(model)
    warm_batch = _batch(16, seed=3)
    before = model(warm_batch)
    model.add_domain(SPEC.domains["rec_children"])
    model.freeze("L0", "L1", "L2_shared")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    cold = _batch(16, seed=4, spec=FeatureSpec(SPEC.features, model.domain_registry, SPEC.text_dim))
    cold = {**cold, "domain": tf.fill([16], "rec_children"), "label": tf.ones([16], tf.int64)}
    context_before = model.context_embeddings(cold).numpy()
    for _ in range(3):
        model.train_step(cold)
    after = model(warm_batch)
    # float rounding only (the per-domain output layers are one grouped matmul over one more domain)
    np.testing.assert_allclose(after["context"].numpy(), before["context"].numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(after["candidate"].numpy(), before["candidate"].numpy())
    assert np.abs(model.context_embeddings(cold).numpy() - context_before).max() > 1e-3


def test_init_from_ranker_copies_the_encoders():
    ranker = build_model(
        ModelConfig(
            "srfoundation", embedding_dim=4, adaptive_units=8, expert_units=(8,), num_hash_bins=64
        ).with_registry(WARM),
        SPEC,
        VOCABS,
    )
    for i, variable in enumerate(ranker.trainable_variables):
        variable.assign_add(tf.random.stateless_normal(variable.shape, seed=[i, 5], stddev=0.2))
    model = _model()
    copied = model.init_from_ranker(ranker)
    assert "user_id_encoder" in copied and "user_fusion" in copied and "query_fusion" in copied
    assert "item_fusion" not in copied  # the item gets one gate for every domain
    for name in ("user_id", "item_title_embedding"):
        for mine, theirs in zip(
            model.feature_encoders[name].get_weights(),
            ranker.feature_encoders[name].get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(mine, theirs)


def test_a_retrieval_model_has_no_alignment():
    with pytest.raises(ValueError, match="no alignment"):
        _model(alignment="js")
