"""Small model-ready samples directories for the training fault and distributed tests (no Beam)."""

from __future__ import annotations

import pathlib
import subprocess

from tfsr import data, layout
from tfsr.cli import subprocess_command
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import FeatureSpec

import tensorflow as tf
import tensorflow_recommenders as tfrs

REPO = pathlib.Path(__file__).resolve().parents[1]

# a tiny model: the tests exercise the loop, not the model's quality
MODEL_FLAGS = [
    "--set",
    "model.embedding_dim=8",
    "--set",
    "model.adaptive_units=16",
    "--set",
    "model.expert_units=[16]",
    "--set",
    "model.tower_units=[8]",
    "--set",
    "model.num_hash_bins=1000",
]


class ToyRankingModel(tfrs.models.Model):
    """The smallest TFRS ranking model: `x` [B, 4] -> Dense(1) logit, BCE on `label` (loop tests)."""

    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1)
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))

    def call(self, features, training=False):
        return tf.squeeze(self.dense(features["x"]), -1)

    def compute_loss(self, features, training=False):
        return self.task(labels=features["label"], predictions=self(features, training=training))


def write_samples_dir(root: pathlib.Path, rows: int = 600, text_dim: int = 4, shards: int = 2, seed: int = 0):
    """feature_spec.json + pretrain_train/part-*.tfrecord.gz of synthetic records. Returns (root, spec)."""
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=text_dim)
    root.mkdir(parents=True, exist_ok=True)
    (root / layout.FEATURE_SPEC).write_text(spec.dumps(), encoding="utf-8")
    data.write_synthetic_samples(root / layout.PRETRAIN_TRAIN, spec, rows, seed=seed, num_shards=shards)
    return root, spec


def read_records(samples: pathlib.Path) -> list[tf.train.Example]:
    """Every example of a samples directory's pretrain_train shards, in shard order."""
    out = []
    for path in sorted((samples / layout.PRETRAIN_TRAIN).glob("*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
            out.append(tf.train.Example.FromString(raw.numpy()))
    return out


def write_records(path: pathlib.Path, examples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def train_args(samples, run, *extra) -> list[str]:
    return ["--samples_dir", str(samples), "--output_dir", str(run), *MODEL_FLAGS, *map(str, extra)]


def subprocess_env(**extra) -> dict:
    import os

    env = dict(os.environ)
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_tfsr(*args, timeout=120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        subprocess_command(*args),
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def checkpoint_steps(run: pathlib.Path) -> list[int]:
    return sorted(
        int(p.name[len("ckpt-") : -len(".index")]) for p in (run / "checkpoints").glob("ckpt-*.index")
    )


def checkpoint_values(prefix: str) -> dict:
    """{variable key: numpy value} of a checkpoint (model and optimizer), read without building a model."""
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "/.ATTRIBUTES/" in k}
