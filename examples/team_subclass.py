"""How a team customises the S&R Foundation model without copying it.

The search team wants (1) a deeper projection of the frozen text vectors (a custom *aspect
encoder*) and (2) towers whose logit adds a per-domain linear term to a shared MLP (a custom
*tower*). Both are hooks of :class:`tfsr.models.MultiDomainModel`; the custom tower keeps its
per-domain weights in :class:`tfsr.layers.DomainWeights`, so `add_domain()` extends it too. The
class is registered under its own `model_type`, so `tfsr.models.load_model` rebuilds it.

Run: `python examples/team_subclass.py` (trains a few steps on synthetic records with plain `model.fit`
and tfsr's run callbacks: checkpoints, NaN/Inf stop, progress and history).
"""

from __future__ import annotations

import tempfile

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr import data
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import Feature, FeatureSpec
from tfsr.layers import AspectEncoder, DomainWeights, select_domain
from tfsr.models import ModelConfig, SRFoundationModel, build_model, load_model, register_model, save_model
from tfsr.training.callbacks import NonFiniteLossStop, ResumableCheckpoints
from tfsr.training.progress import ProgressLog

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="team_search")
class DeepTextEncoder(AspectEncoder):
    """Two-layer projection of a frozen text vector `[B, T] -> [B, H]`; zero vectors are absent."""

    def __init__(self, embedding_dim: int, hidden: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim, self.hidden = embedding_dim, hidden

    def build(self, input_shape):
        self.hidden_layer = tf.keras.layers.Dense(self.hidden, activation="gelu")
        self.output_layer = tf.keras.layers.Dense(self.embedding_dim)
        super().build(input_shape)

    def call(self, inputs):
        return self.output_layer(self.hidden_layer(inputs))

    def presence(self, inputs):
        return tf.reduce_any(inputs != 0, axis=-1)

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim, "hidden": self.hidden}


@tf.keras.utils.register_keras_serializable(package="team_search")
class WideAndDeepTowers(tf.keras.layers.Layer):
    """`logit = mlp(h) + h . w_d + b_d`: a shared deep part and a per-domain wide part."""

    def __init__(self, num_domains: int, hidden: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.domain_weights = DomainWeights(num_domains, name="wide")

    def build(self, input_shape):
        self.deep = tf.keras.Sequential(
            [tf.keras.layers.Dense(self.hidden, activation="relu"), tf.keras.layers.Dense(1)]
        )
        self.domain_weights.add_family("w", (int(input_shape[-1]),), "zeros")
        self.domain_weights.add_family("b", (), "zeros")
        super().build(input_shape)

    def call(self, inputs, domain_ids):
        wide = tf.einsum("bd,kd->bk", inputs, self.domain_weights.stacked("w")) + self.domain_weights.stacked(
            "b"
        )
        return self.deep(inputs)[:, 0] + select_domain(wide, domain_ids)

    def get_config(self):
        return {**super().get_config(), "num_domains": self.domain_weights.num_domains, "hidden": self.hidden}


@register_model("team_search_example")
class TeamSearchModel(SRFoundationModel):
    """SRFoundation with a deeper text encoder and wide-and-deep towers (`config.extra["text_hidden"]`)."""

    def build_feature_encoder(self, feature: Feature) -> tf.keras.layers.Layer:
        if feature.aspect == "text":
            return DeepTextEncoder(
                self.config.embedding_dim,
                self.config.extra.get("text_hidden", 32),
                name=f"{feature.name}_encoder",
            )
        return super().build_feature_encoder(feature)

    def build_towers(self) -> tf.keras.layers.Layer:
        return WideAndDeepTowers(len(self.domain_registry), self.config.tower_units[0], name="towers")


def main(num_rows: int = 400, epochs: int = 2, workdir: str | None = None) -> dict:
    """Trains the team's model on synthetic records, saves and reloads it; returns the last logs."""
    workdir = workdir or tempfile.mkdtemp(prefix="tfsr-team-example-")
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=8)
    pattern = data.write_synthetic_samples(f"{workdir}/train", spec, num_rows, seed=0)
    config = ModelConfig(
        "team_search_example",
        embedding_dim=8,
        adaptive_units=16,
        expert_units=(16,),
        tower_units=(8,),
        num_hash_bins=256,
        learning_rate=0.01,
        extra={"text_hidden": 16},
    )
    model = build_model(config, spec)
    model.compile()
    # Plain Keras `fit`, with the callbacks `tfsr train` uses: checkpoints every 100 steps and at each epoch
    # end (re-running resumes at the last one), a NaN/Inf loss stops before it is checkpointed, progress
    # lines and history.json. The model's own train step refuses NaN/Inf inputs (docs/TRAINING.md).
    train = data.make_dataset(pattern, spec, 64)
    model(next(iter(train)))  # builds the weights, so that a checkpoint can be restored into them
    model.optimizer.build(model.trainable_variables)
    run_dir = f"{workdir}/run"
    checkpoints = ResumableCheckpoints(model, run_dir, checkpoint_every=100)
    callbacks = [
        NonFiniteLossStop(checkpoints),
        checkpoints,
        ProgressLog(run_dir, checkpoints, log_every=5, batch_size=64),
    ]
    history = model.fit(
        train, epochs=epochs, initial_epoch=checkpoints.restore(), verbose=0, callbacks=callbacks
    )
    restored = load_model(save_model(model, f"{workdir}/model"))
    batch = next(iter(data.make_dataset(pattern, spec, 8, shuffle=False)))
    gates = restored(batch)["gate_weights"].numpy().mean(axis=0).round(3)
    print(
        f"{type(restored).__name__}: auc={history.history['auc'][-1]:.3f}; mean gate weights "
        f"(rows user/query/item, cols id/text/sparse):\n{gates}"
    )
    return {key: values[-1] for key, values in history.history.items()}


if __name__ == "__main__":
    main()
