"""The multi-domain models: outputs, config, save/load, per-domain loss masking, freezing, new domains,
explicit interactions and the DeepFM / DCN-v2 baselines."""

import json

from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import Domain, DomainRegistry, FeatureSpec
from tfsr.layers import ASPECTS, ENTITIES
from tfsr.models import (
    LEVELS,
    MODEL_TYPES,
    ModelConfig,
    SRFoundationModel,
    build_model,
    load_model,
    save_model,
    warm_registry,
)

import numpy as np
import pytest
import tensorflow as tf

SPEC = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=6)
VOCABS = {"user_id": [f"u{i}" for i in range(10)], "item_genres": ["Action", "Comedy", "Drama"]}
SMALL = {
    "embedding_dim": 4,
    "adaptive_units": 8,
    "expert_units": (8,),
    "tower_units": (4,),
    "num_hash_bins": 64,
    "num_experts": 2,
}


def _config(model_type="srfoundation", **kwargs):
    return ModelConfig(model_type, **{**SMALL, **kwargs})


def _batch(n=32, seed=0, spec=SPEC):
    records = list(data.synthetic_records(spec, n, seed=seed))
    serialized = tf.constant([spec.to_example(r).SerializeToString() for r in records])
    return tf.io.parse_example(serialized, spec.parse_spec())


BATCH = _batch()


def _train_step(model, batch=BATCH):
    """One eager optimisation step (no `fit`: tracing the train function costs seconds)."""
    return model.train_step(batch)


def _perturb(model):
    """Moves every weight off its initial value, deterministically."""
    for i, variable in enumerate(model.trainable_variables):
        variable.assign_add(tf.random.stateless_normal(variable.shape, seed=[i, 7], stddev=0.1))


def test_config_json_round_trip_and_validation():
    config = _config(
        alignment="mmd",
        domain_loss_weights={"rec_action": 2.0},
        domains=SPEC.domains.to_json(),
        extra={"team": "search"},
    )
    text = json.dumps(config.to_json())
    assert ModelConfig.from_json(text) == config
    assert ModelConfig.loads(config.dumps()) == config
    assert config.loss_weight("rec_action") == 2.0 and config.loss_weight("rec_drama") == 1.0
    with pytest.raises(ValueError, match="gating must be one of .* got 'max'"):
        ModelConfig(gating="max")
    with pytest.raises(ValueError, match="alignment must be one of .* got 'kl'"):
        ModelConfig(alignment="kl")
    with pytest.raises(ValueError, match="embedding_dim must be a positive int, got 0"):
        ModelConfig(embedding_dim=0)
    with pytest.raises(ValueError, match="tower_units must be a non-empty list of positive ints"):
        ModelConfig(tower_units=())
    with pytest.raises(ValueError, match=r"domain_loss_weights names unknown domains \['nope'\]"):
        ModelConfig(domains=SPEC.domains.to_json(), domain_loss_weights={"nope": 1.0})
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['colour'\]"):
        ModelConfig.from_json({"colour": "red"})
    with pytest.raises(ValueError, match="unknown model_type 'gpt'"):
        build_model(ModelConfig("gpt"), SPEC)
    with_interactions = _config(interactions=["dot", "cross"], cross_projection_dim=3, num_cross_layers=1)
    assert with_interactions.interactions == ("dot", "cross")
    assert ModelConfig.from_json(json.dumps(with_interactions.to_json())) == with_interactions
    assert ModelConfig.from_json(_config(interactions=()).to_json()).interactions == ()
    with pytest.raises(ValueError, match=r"interactions must be distinct kinds of .* got \('dot', 'mlp'\)"):
        ModelConfig(interactions=("dot", "mlp"))
    with pytest.raises(ValueError, match="interactions must be a list of kinds, got the string 'dot'"):
        ModelConfig(interactions="dot")
    with pytest.raises(ValueError, match="cross_projection_dim must be a positive int or None, got 0"):
        ModelConfig(cross_projection_dim=0)
    with pytest.raises(ValueError, match="num_cross_layers must be a positive int, got 0"):
        ModelConfig(num_cross_layers=0)


def test_defaults_resolve_per_model_type():
    sr = build_model(_config(), SPEC, VOCABS)
    assert (sr.config.gating, sr.config.alignment) == ("domain", "js")
    assert sr.config.domains == SPEC.domains.to_json()
    mmoe = build_model(_config("mmoe"), SPEC, VOCABS)
    assert (mmoe.config.gating, mmoe.config.alignment) == ("mean", "none")
    assert sr.config.interactions == ("dot", "cross") and mmoe.config.interactions == ()
    assert (
        mmoe.interactions is None and build_model(_config(interactions=()), SPEC, VOCABS).interactions is None
    )
    for model_type, kinds in (("deepfm", ("fields", "fm")), ("dcn_v2", ("cross",))):
        model = build_model(_config(model_type), SPEC, VOCABS)
        assert (model.config.gating, model.config.alignment) == ("mean", "none")
        assert model.config.interactions == kinds and model.interactions.kinds == kinds


def test_output_format_and_gate_weights():
    model = build_model(_config(), SPEC, VOCABS)
    out = model(BATCH)
    assert set(out) == {"ctr", "logit", "gate_weights"}
    assert (
        out["ctr"].shape == (32,) and out["logit"].shape == (32,) and out["gate_weights"].shape == (32, 3, 3)
    )
    assert out["ctr"].dtype == tf.float32 and out["gate_weights"].dtype == tf.float32
    np.testing.assert_allclose(out["ctr"], tf.sigmoid(out["logit"]), rtol=1e-6)
    weights = out["gate_weights"].numpy()
    user, query, item = (ENTITIES.index(e) for e in ("user", "query", "item"))
    text, sparse = ASPECTS.index("text"), ASPECTS.index("sparse")
    np.testing.assert_allclose(weights[:, user], np.tile([1.0, 0.0, 0.0], (32, 1)))  # the user has ids only
    np.testing.assert_allclose(weights[:, item].sum(-1), 1.0, rtol=1e-6)
    has_query = BATCH["query_id"].numpy() != b""
    assert has_query.any() and (~has_query).any()
    np.testing.assert_allclose(weights[has_query, query].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(weights[~has_query, query], 0.0)  # rec samples: the "no query" vector
    assert np.all(weights[:, query, sparse] == 0) and np.all(weights[:, item, text] > 0)


def test_no_text_ablation_gives_text_zero_weight():
    model = build_model(_config(use_text=False), SPEC, VOCABS)
    assert not any("embedding" in name for name in model.feature_encoders)
    np.testing.assert_array_equal(model(BATCH)["gate_weights"][:, :, ASPECTS.index("text")], 0.0)


def test_unknown_domain_fails():
    model = build_model(_config(domains=warm_registry(SPEC.domains).to_json()), SPEC, VOCABS)
    batch = dict(BATCH, domain=tf.fill([32], "rec_children"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown domain name"):
        model(batch)


ALL_TYPES = sorted(
    ["srfoundation", "single_domain", "shared_bottom", "mmoe", "ple", "star", "deepfm", "dcn_v2"]
)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_save_load_same_predictions(model_type, tmp_path):
    model = build_model(_config(model_type), SPEC, VOCABS)
    _perturb(model)
    expected = model(BATCH)
    restored = load_model(save_model(model, tmp_path / model_type))
    assert type(restored) is MODEL_TYPES[model_type] and restored.config == model.config
    for key, value in restored(BATCH).items():
        np.testing.assert_array_equal(value, expected[key])


def test_checkpoint_resumes_model_and_optimizer(tmp_path):
    model = build_model(_config(), SPEC, VOCABS)
    model.compile()
    _train_step(model)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "ckpt"))
    _train_step(model)
    resumed = build_model(model.config, SPEC, VOCABS)
    resumed.compile()
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).read(str(tmp_path / "ckpt"))
    _train_step(resumed)
    np.testing.assert_allclose(resumed(BATCH)["logit"], model(BATCH)["logit"], rtol=1e-5, atol=1e-6)


def test_call_traces_in_a_tf_function_with_a_serving_signature():
    model = build_model(_config(), SPEC, VOCABS)
    signature = {
        f.name: (
            tf.RaggedTensorSpec([None, None], tf.string, 1, tf.int64)
            if f.varlen
            else tf.TensorSpec([None, *f.shape], tf.float32 if f.dtype == "float32" else tf.string)
        )
        for f in SPEC.model_features
    }
    serve = tf.function(lambda features: model(features), input_signature=[signature])
    features = {name: BATCH[name] for name in signature}
    np.testing.assert_allclose(serve(features)["ctr"], model(features)["ctr"], rtol=1e-6)


def test_each_domain_loss_sees_only_its_own_samples():
    model = build_model(
        _config(
            alignment="none", domain_loss_weights={d.name: 0.0 for d in SPEC.domains if d.name != "rec_drama"}
        ),
        SPEC,
        VOCABS,
    )
    drama = BATCH["domain"].numpy() == b"rec_drama"
    assert drama.any() and (~drama).any()
    loss = float(model.compute_loss(BATCH))
    flipped = dict(BATCH, label=tf.where(drama, BATCH["label"], 1 - BATCH["label"]))
    assert float(model.compute_loss(flipped)) == pytest.approx(loss, rel=1e-6)  # other domains' labels
    logits = model(BATCH)["logit"].numpy()[drama].astype(np.float64)
    labels = BATCH["label"].numpy()[drama]
    bce = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    assert loss == pytest.approx(bce, rel=1e-5)  # the mean over rec_drama's samples only
    weighted = build_model(
        model.config.replace(domain_loss_weights={**model.config.domain_loss_weights, "rec_drama": 3.0}),
        SPEC,
        VOCABS,
    )
    weighted.set_weights(model.get_weights())
    assert float(weighted.compute_loss(BATCH)) == pytest.approx(3 * loss, rel=1e-5)


def test_alignment_is_added_with_its_weight():
    base = build_model(_config(alignment="none"), SPEC, VOCABS)
    for kind in ("js", "mmd"):
        model = build_model(base.config.replace(alignment=kind, alignment_weight=0.5), SPEC, VOCABS)
        model.set_weights(base.get_weights())
        outputs = model.forward(BATCH)
        reg = float(model.alignment_loss(outputs["representation"], outputs["domain_ids"]))
        assert reg > 0
        assert float(model.compute_loss(BATCH)) == pytest.approx(
            float(base.compute_loss(BATCH)) + 0.5 * reg, rel=1e-5
        )


def _snapshot(layers):
    return {v.ref(): v.numpy().copy() for layer in layers for v in layer.weights}


def test_freeze_keeps_frozen_weights_bit_identical():
    model = build_model(_config(), SPEC, VOCABS)
    model.freeze("L0", "L1")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    frozen = _snapshot(model.level_layers("L0") + model.level_layers("L1"))
    trained = _snapshot([model.experts, model.towers])
    _train_step(model)
    assert frozen and all(np.array_equal(ref.deref().numpy(), value) for ref, value in frozen.items())
    assert any(not np.array_equal(ref.deref().numpy(), value) for ref, value in trained.items())
    frozen_ids = set(frozen)
    assert not any(v.ref() in frozen_ids for v in model.trainable_variables)
    model.unfreeze("L0", "L1")
    assert len(model.trainable_variables) == len(model.variables) - len(
        [v for v in model.variables if not v.trainable]
    )
    with pytest.raises(ValueError, match="level must be one of .* got 'L3'"):
        model.freeze("L3")
    assert LEVELS == ("L0", "L1", "L2_shared")


def test_freeze_shared_experts_only():
    model = build_model(_config(), SPEC, VOCABS)
    model.freeze("L2_shared")
    # the interactions' weights are shared too: the dot products' logit weights and the cross network
    interactions = model.interactions
    assert model.level_layers("L2_shared") == [
        interactions.dot_logit,
        interactions.cross,
        model.experts.experts,
    ]
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    frozen = _snapshot(model.level_layers("L2_shared"))
    gates = _snapshot([model.experts.domain_weights])
    _train_step(model)
    assert all(np.array_equal(ref.deref().numpy(), value) for ref, value in frozen.items())
    assert any(not np.array_equal(ref.deref().numpy(), value) for ref, value in gates.items())


def test_add_domain_then_fine_tune_with_lower_levels_frozen(tmp_path):
    warm = warm_registry(SPEC.domains)
    model = build_model(_config(domains=warm.to_json()), SPEC, VOCABS)
    model.compile()
    warm_batch = _batch(64, seed=1)
    warm_batch = {k: v for k, v in warm_batch.items()}
    keep = warm_batch["domain"] != "rec_children"
    warm_batch = {
        k: tf.ragged.boolean_mask(v, keep) if isinstance(v, tf.RaggedTensor) else tf.boolean_mask(v, keep)
        for k, v in warm_batch.items()
    }
    _train_step(model, warm_batch)
    before = model(warm_batch)

    added = model.add_domain(SPEC.domains["rec_children"], init_from="rec_other")
    assert added.id == len(warm) and model.domain_registry.names[-1] == "rec_children"
    assert model.config.registry.names == model.domain_registry.names
    after = model(warm_batch)
    for key in before:  # existing domains are unchanged by adding one
        np.testing.assert_array_equal(after[key], before[key])

    cold = {k: v for k, v in _batch(32, seed=2).items()}
    cold["domain"] = tf.fill([32], "rec_children")
    cold["query_id"] = tf.fill([32], "")
    cold["query_text_embedding"] = tf.zeros_like(cold["query_text_embedding"])
    model.freeze("L0", "L1")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    # The new domain's own gate rows stay trainable; every pretrained weight of L0 and L1 (and the new
    # domain's adaptive-map correction) stays frozen, bit-identical.
    new_rows = {v.ref() for v in model.new_domain_variables}
    assert new_rows and new_rows <= {v.ref() for v in model.trainable_variables}
    assert not new_rows & {v.ref() for v in model.non_trainable_variables}
    snapshot = _snapshot(model.level_layers("L0") + model.level_layers("L1"))
    frozen = {ref: value for ref, value in snapshot.items() if ref not in new_rows}
    assert frozen and not set(frozen) & {v.ref() for v in model.trainable_variables}
    logs = _train_step(model, cold)
    assert "rec_children_auc" in logs
    assert all(np.array_equal(ref.deref().numpy(), value) for ref, value in frozen.items())
    moved = {ref for ref in new_rows if not np.array_equal(ref.deref().numpy(), snapshot[ref])}
    # The item gate learns (the query gate gets no gradient: no query in a rec domain).
    assert model.fusions["item"].domain_weights.families["gate"][-1].ref() in moved
    assert new_rows == {
        v.ref()
        for f in model.fusions.values()
        for family in f.domain_weights.families.values()
        for v in family[-1:]
    }
    assert model.domain_adapter.domain_weights.families["kernel"][-1].ref() in frozen
    model.unfreeze("L0", "L1")
    assert not model.new_domain_variables
    assert model(cold)["ctr"].shape == (32,)

    restored = load_model(save_model(model, tmp_path / "finetuned"))
    np.testing.assert_array_equal(restored(cold)["ctr"], model(cold)["ctr"])
    with pytest.raises(ValueError, match="already one of"):
        model.add_domain(Domain("rec_children", "rec", 9))


def test_model_get_config_round_trip():
    model = build_model(_config("star"), SPEC, VOCABS)
    clone = type(model).from_config(model.get_config())
    assert isinstance(clone, type(model)) and clone.config == model.config and clone.vocabularies == VOCABS
    assert isinstance(build_model(_config(), SPEC, VOCABS), SRFoundationModel)


@pytest.mark.parametrize("model_type", ["single_domain", "srfoundation"])
def test_build_model_for_domains_other_than_the_specs_first(model_type):
    """`build_model` builds on a dummy batch of the model's own domains, not the spec's first search/rec."""
    registry = DomainRegistry([Domain("rec_comedy", "rec", 0)])
    model = build_model(_config(model_type, domains=registry.to_json()), SPEC, VOCABS)
    assert model.domain_registry.names == ["rec_comedy"]
    batch = dict(BATCH)
    batch["domain"] = tf.fill([32], "rec_comedy")
    outputs = model(batch)
    assert outputs["ctr"].shape == (32,)
    assert np.all(np.isfinite(outputs["ctr"]))


def test_gate_options_reach_the_fusion_layers():
    model = build_model(_config(gate_scale=2.0, gate_init_stddev=0.1, learn_gate_scale=False), SPEC, VOCABS)
    for fusion in model.fusions.values():
        assert (fusion.gate_scale, fusion.gate_init_stddev, fusion.learn_gate_scale) == (2.0, 0.1, False)
    defaults = build_model(_config(), SPEC, VOCABS)
    fusion = defaults.fusions["item"]
    assert fusion.gate_scale == 1.0 and fusion.learn_gate_scale and fusion.gate_init_stddev == 0.0
    assert "log_scale" in fusion.domain_weights.families
    with pytest.raises(ValueError, match="gate_scale must be positive or None"):
        _config(gate_scale=0.0)
    with pytest.raises(ValueError, match="gate_init_stddev must be >= 0"):
        _config(gate_init_stddev=-1.0)


def test_a_model_saved_before_the_gate_options_loads_with_its_old_fixed_scale(tmp_path):
    old = _config(gate_scale=None, learn_gate_scale=False)
    path = save_model(build_model(old, SPEC, VOCABS), tmp_path / "old")
    saved = json.loads((path / "model_config.json").read_text())
    for key in ("gate_scale", "learn_gate_scale", "gate_init_stddev"):
        del saved[key]
    (path / "model_config.json").write_text(json.dumps(saved))
    restored = load_model(path)
    assert restored.config.gate_scale is None and not restored.config.learn_gate_scale


def _spy_interactions(model, shift=0.0):
    """Records what `model.interactions` receives; adds `shift` to its logit term."""
    seen, call = {}, model.interactions.call

    def spy(fields, field_mask, domain_ids=None):
        seen.update(fields=fields, field_mask=field_mask, domain_ids=domain_ids)
        out = dict(call(fields, field_mask, domain_ids))
        out["logit"] = out.get("logit", 0.0) + shift
        return out

    model.interactions.call = spy
    return seen


def test_srfoundation_interactions_see_the_fused_entities_with_absent_query_masked():
    model = build_model(_config(), SPEC, VOCABS)
    seen = _spy_interactions(model)
    out = model.forward(BATCH)
    assert seen["fields"].shape == (32, len(ENTITIES), 4)
    has_query = BATCH["query_id"].numpy() != b""
    np.testing.assert_array_equal(
        seen["field_mask"].numpy(), np.stack([np.ones(32), has_query, np.ones(32)], 1)
    )
    rec = np.flatnonzero(~has_query)[0]  # the "no query" vector, masked out of the products
    np.testing.assert_allclose(seen["fields"][rec, 1], model.missing_entities["query"].vector, rtol=1e-6)
    dots = model.interactions.dot(seen["fields"], seen["field_mask"]).numpy()
    assert np.all(dots[~has_query][:, [0, 2]] == 0) and np.all(dots[has_query] != 0)
    # the experts read [x_hat; dots (3); cross (3H)]
    assert model.experts.experts.kernels[0].shape[1] == model.config.adaptive_units + 3 + 3 * 4
    assert out["logit"].shape == (32,)


def test_field_baselines_see_the_unfused_aspects_and_add_the_fm_term_to_the_logit():
    model = build_model(_config("deepfm"), SPEC, VOCABS)
    before = model(BATCH)["logit"].numpy()
    seen = _spy_interactions(model, shift=0.5)
    after = model(BATCH)["logit"].numpy()
    np.testing.assert_allclose(after, before + 0.5, rtol=1e-5, atol=1e-5)  # the logit term is additive
    # fields: user id; query id, text; item id, text, sparse (ENTITIES x ASPECTS with a feature)
    expected, masks = [], []
    for entity, aspects in (("user", ["id"]), ("query", ["id", "text"]), ("item", ["id", "text", "sparse"])):
        vectors, mask = model.encode_entity(BATCH, entity)
        for aspect in aspects:
            expected.append(vectors[:, ASPECTS.index(aspect)])
            masks.append(mask[:, ASPECTS.index(aspect)])
    np.testing.assert_allclose(seen["fields"], tf.stack(expected, 1), rtol=1e-6)
    np.testing.assert_array_equal(seen["field_mask"], tf.stack(masks, 1))
    np.testing.assert_array_equal(seen["domain_ids"], model.domain_ids(BATCH["domain"]))
    # the deep MLP reads [mean-fused x (3H); 6 fields + the domain field (7H)]
    assert model.experts.dense_layers[0].kernel.shape[0] == 3 * 4 + 7 * 4
    dcn = build_model(_config("dcn_v2", cross_projection_dim=2, num_cross_layers=3), SPEC, VOCABS)
    assert [layer._projection_dim for layer in dcn.interactions.cross.cross_layers] == [2, 2, 2]
    assert dcn.level_layers("L2_shared") == [dcn.interactions.cross, dcn.experts]


@pytest.mark.parametrize("model_type", ["deepfm", "dcn_v2"])
def test_field_baselines_train_and_take_a_new_domain(model_type, tmp_path):
    warm = warm_registry(SPEC.domains)
    model = build_model(_config(model_type, domains=warm.to_json()), SPEC, VOCABS)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    batch = _batch(64, seed=1)
    keep = batch["domain"] != "rec_children"
    batch = {
        k: tf.ragged.boolean_mask(v, keep) if isinstance(v, tf.RaggedTensor) else tf.boolean_mask(v, keep)
        for k, v in batch.items()
    }
    losses = [float(_train_step(model, batch)["loss"]) for _ in range(8)]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    before = model(batch)
    model.add_domain(SPEC.domains["rec_children"], init_from="rec_other")
    for key in before:  # the domain field grew a row; existing domains are unchanged
        np.testing.assert_array_equal(model(batch)[key], before[key])
    assert model.interactions.num_domains == len(warm) + 1
    cold = dict(BATCH, domain=tf.fill([32], "rec_children"))
    restored = load_model(save_model(model, tmp_path / model_type))
    np.testing.assert_array_equal(restored(cold)["ctr"], model(cold)["ctr"])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["deepfm", "dcn_v2"])
def test_field_baselines_export_for_serving(model_type, tmp_path):
    """tfsr.export serves the new baselines with the same scores as the in-memory model, core ops only."""
    from tfsr import export, layout

    import serving_doubles as T

    spec = T.toy_spec(8)
    encoder = T.HashingTextEncoder(8)
    samples = T.write_samples_dir(tmp_path / "samples", spec, encoder)
    vocabularies = {name: layout.read_vocab(samples, name) for name in T.TOY_VOCABULARIES}
    model = build_model(_config(model_type), spec, vocabularies)
    _perturb(model)
    path = export.export_model(
        model, spec, encoder, tmp_path / "saved_models", model_type, samples_dir=samples
    )
    records = T.toy_records(12, seed=1) + T.toy_records(6, seed=2, domain="rec_drama")
    expected = T.in_memory_outputs(spec, model, encoder, records)
    got = tf.saved_model.load(str(path)).signatures["serving_default"](examples=T.serialize(spec, records))
    np.testing.assert_allclose(got["ctr"].numpy(), expected["ctr"].numpy(), rtol=1e-5, atol=1e-6)
    ops = T.classify_graph_ops(path)
    assert not ops["forbidden"] and not ops["other"], (ops["forbidden"], sorted(ops["other"]))
