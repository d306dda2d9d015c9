"""On-disk layout of a preprocessed sample directory (the output of `tfsr preprocess`).

```
<samples_dir>/
  manifest.json            schema version, feature spec, counts per domain and split, vocab sizes,
                           text-encoder identity, the command that built it, the split cutoffs
                           and shard counts it used, the number of items in items/, reconciliation
  feature_spec.json        FeatureSpec.to_json()
  vocab/<feature>.txt      one value per line, most frequent first (user_id, item_id, query_id,
                           item_genres, item_decade)
  text_embeddings/<feature>.tfrecord.gz
                           tf.train.Examples {text: bytes, embedding: float[text_dim]} for every unique
                           text of a text feature (query_text, item_title): the lookup table of training
                           (key-mode samples) and of the export
  <split>/part-SSSSS-of-NNNNN.tfrecord.gz
                           gzip TFRecords of tf.train.Example samples, one directory per split. Every
                           sample carries its texts; with manifest "text_features": "vector" it also
                           carries their embeddings (the derived features), with "key" (the default)
                           readers look them up in text_embeddings/ (tfsr.text.lookup). Rows
                           are spread over the shards by a seeded random key and each shard is in key
                           order, so every shard (and any read order of them) mixes domains and users
  items/part-SSSSS-of-NNNNN.tfrecord.gz
                           the item catalogue: one tf.train.Example per distinct item_id of all splits
                           (positives and negatives, warm and cold-start domains) holding the spec's raw
                           item features only (item_id, item_title, item_genres, item_decade; no
                           embeddings: readers look item_title up in text_embeddings/). Items are spread
                           over the shards by a hash of their id, each shard in item_id order
  dead_letters/*.jsonl     rows that could not be used: {"source", "line", "reason", "raw"}
```
"""

from __future__ import annotations

import json
import pathlib

# Splits, all by time (docs/DATA.md): training rows, then a validation slice carved from the end of the
# training period (for early stopping / model selection), then the evaluation rows.
PRETRAIN_TRAIN = "pretrain_train"
PRETRAIN_VALID = "pretrain_valid"
PRETRAIN_EVAL = "pretrain_eval"
COLDSTART_FINETUNE = "coldstart_finetune"
COLDSTART_VALID = "coldstart_valid"
COLDSTART_EVAL = "coldstart_eval"
SPLITS = (PRETRAIN_TRAIN, PRETRAIN_VALID, PRETRAIN_EVAL, COLDSTART_FINETUNE, COLDSTART_VALID, COLDSTART_EVAL)

MANIFEST = "manifest.json"
FEATURE_SPEC = "feature_spec.json"
VOCAB_DIR = "vocab"
TEXT_EMBEDDINGS_DIR = "text_embeddings"
DEAD_LETTERS_DIR = "dead_letters"
ITEMS_DIR = "items"  # the item catalogue (samples written before it have none: re-run `tfsr preprocess`)
TFRECORD_SUFFIX = ".tfrecord.gz"

# How samples hold their text embeddings (manifest "text_features"): only the text, its embedding looked up
# from text_embeddings/ when read (TEXT_KEYS), or the embedding vector itself (TEXT_VECTORS; samples
# written before issue 14 have no such entry and are read as vectors).
TEXT_KEYS = "key"
TEXT_VECTORS = "vector"
TEXT_FEATURE_MODES = (TEXT_KEYS, TEXT_VECTORS)


# Beam's file sinks write into a temp folder beside their output and move the finished files up:
# `fileio.WriteToFiles` into `.temp<uuid>/`, which it leaves behind, empty, on a local filesystem (the
# split shards were written with it before issue 12); `WriteToTFRecord` / `WriteToText` into
# `beam-temp-<name>-<uuid>/`, which they delete.
BEAM_TEMP_PATTERNS = (".temp*", "beam-temp-*")


def remove_temp_dirs(samples_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Deletes the empty temp folders Beam's file sinks leave in a samples directory (local paths only: an
    object store such as ``gs://`` keeps no empty folder). Non-empty ones are kept: a file in one means a
    sink that did not finish. Returns the folders removed."""
    root = pathlib.Path(samples_dir)
    if "://" in str(samples_dir) or not root.is_dir():
        return []
    removed = []
    found = {p for pattern in BEAM_TEMP_PATTERNS for p in root.rglob(pattern)}
    for path in sorted(found, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            removed.append(path)
    return removed


def split_pattern(samples_dir: str | pathlib.Path, split: str) -> str:
    """Glob pattern of one split's TFRecord shards."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {SPLITS}")
    return str(pathlib.Path(samples_dir) / split / f"part-*{TFRECORD_SUFFIX}")


def items_pattern(samples_dir: str | pathlib.Path) -> str:
    """Glob pattern of the item catalogue's TFRecord shards."""
    return str(pathlib.Path(samples_dir) / ITEMS_DIR / f"part-*{TFRECORD_SUFFIX}")


def vocab_path(samples_dir: str | pathlib.Path, feature: str) -> pathlib.Path:
    return pathlib.Path(samples_dir) / VOCAB_DIR / f"{feature}.txt"


def read_vocab(samples_dir: str | pathlib.Path, feature: str) -> list[str]:
    """A vocabulary file as a list (most frequent first)."""
    path = vocab_path(samples_dir, feature)
    if not path.exists():
        raise FileNotFoundError(f"no vocabulary for feature {feature!r} at {path}")
    return path.read_text(encoding="utf-8").splitlines()


def text_embeddings_path(samples_dir: str | pathlib.Path, feature: str) -> pathlib.Path:
    return pathlib.Path(samples_dir) / TEXT_EMBEDDINGS_DIR / f"{feature}{TFRECORD_SUFFIX}"


def read_manifest(samples_dir: str | pathlib.Path) -> dict:
    path = pathlib.Path(samples_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{samples_dir} is not a tfsr samples directory: {path} is missing (run `tfsr preprocess` first)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def text_features_mode(samples_dir: str | pathlib.Path) -> str:
    """How the samples of `samples_dir` hold text embeddings: TEXT_KEYS or TEXT_VECTORS (the manifest's
    "text_features"; samples without a manifest, or from before that entry, hold vectors)."""
    path = pathlib.Path(samples_dir) / MANIFEST
    if not path.exists():
        return TEXT_VECTORS
    return json.loads(path.read_text(encoding="utf-8")).get("text_features", TEXT_VECTORS)


def read_feature_spec(samples_dir: str | pathlib.Path):
    """The FeatureSpec a samples directory was written with."""
    from tfsr.features import FeatureSpec

    return FeatureSpec.loads((pathlib.Path(samples_dir) / FEATURE_SPEC).read_text(encoding="utf-8"))
