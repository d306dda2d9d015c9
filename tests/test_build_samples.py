"""beam_jobs.build_samples: transform unit tests (TestPipeline + assert_that) and end-to-end runs."""

import collections
import json
import pathlib
import shutil

import tfsr  # noqa: F401  (Keras 2 before TensorFlow)
from beam_jobs import build_samples as bs
from beam_jobs import catalogue, core, reading, sources, text_features, vocabularies, writing
from beam_jobs import manifest as bmanifest
from beam_jobs import splits as bsplits
from beam_jobs.sample_coder import SampleRecord
from beam_jobs.text_inference import TextEncoderModelHandler, saved_model_dim
from tfsr import layout
from tfsr.data import make_items_dataset
from tfsr.datasets import movielens as ml
from tfsr.datasets import splits
from tfsr.datasets.movielens import MOVIELENS_DOMAINS
from tfsr.features import RECORD_ROLES, FeatureSpec
from tfsr.text.lookup import TextLookup

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

DATA = pathlib.Path(__file__).parent / "data"
TEXT_DIM = 32
# The counts published in docs/DATA.md (default options).
DATA_CARD_COUNTS = {
    "pretrain_train": {
        "rec_action": 21154,
        "rec_comedy": 19452,
        "rec_drama": 16325,
        "rec_other": 6445,
        "search_tags": 13115,
    },
    "pretrain_valid": {
        "rec_action": 2870,
        "rec_comedy": 2651,
        "rec_drama": 2312,
        "rec_other": 951,
        "search_tags": 1950,
    },
    "pretrain_eval": {
        "rec_action": 5275,
        "rec_comedy": 5381,
        "rec_drama": 5085,
        "rec_other": 2078,
        "search_tags": 3350,
    },
    "coldstart_finetune": {"rec_children": 1000},
    "coldstart_valid": {"rec_children": 200},
    "coldstart_eval": {"rec_children": 3257},
}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    """The tiny random text encoder, exported once as the SavedModel the pipeline runs."""
    from tfsr.text import export_text_encoder, tiny_text_encoder

    return export_text_encoder(
        tiny_text_encoder(seed=0, dim=TEXT_DIM), tmp_path_factory.mktemp("enc") / "encoder"
    )


def _samples(records) -> list[SampleRecord]:
    """Records as the job's element type (the split and vocabulary transforms are typed for it)."""
    return [SampleRecord(r) for r in records]


def _rec(user, ts, item="1", domain="rec_drama", label=1):
    return {"domain": domain, "user_id": user, "item_id": item, "timestamp": ts, "label": label}


# --------------------------------------------------------------------------------- unit transforms
def test_read_numbered_lines_and_row_step_dead_letter_with_reasons(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"userId,movieId,rating,timestamp\n1,3,4.0,10\n1,3,abc,11\n\n1,\xff,4.0,12\n2,3,2.0,13")
    movies = {3: ml.Movie(3, "Heat (1995)", ("Action",))}
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        lines = p | sources.ReadNumberedLines(str(path), "ratings", lambda _: ml.HEADERS["ratings"])
        parsed = lines.rows | core.row_step(ml.parse_rating, "ratings", movies)
        assert_that(
            parsed.rows | "Ok" >> beam.Map(lambda r: (r[0].line, r[1].rating)),
            equal_to([(2, 4.0), (6, 2.0)]),
            label="Rows",
        )
        assert_that(
            parsed[reading.DEAD]
            | "Why" >> beam.Map(lambda d: (d["source"], d["line"], d["reason"], d["raw"])),
            equal_to(
                [
                    ("ratings", 3, "non_numeric_rating", "1,3,abc,11"),
                    ("ratings", 5, "invalid_utf8", "1,\\xff,4.0,12"),
                ]
            ),
            label="Dead",
        )
        assert_that(
            lines[reading.FILTERED] | "Filtered" >> beam.Map(lambda f: (f[0].line, f[1])),
            equal_to([(1, "header"), (4, "blank_line")]),
            label="Filtered",
        )


@pytest.mark.parametrize("order", [lambda c: c, reversed, lambda c: sorted(c, key=lambda tc: -tc[1])])
def test_exact_quantile_from_timestamp_counts(order):
    counts = [(5, 2), (1, 1), (3, 3)]  # six rows: 1, 3, 3, 3, 5, 5
    quantile = lambda f: splits.time_quantile(order(counts), f)  # noqa: E731
    assert [quantile(f) for f in (0.0, 0.2, 0.5, 0.67, 0.8, 1.0)] == [1, 3, 3, 5, 5, 5]
    # rank = ceil(6 f): 1 -> 1, ceil(1.2) = 2 -> 3, 3 -> 3, ceil(4.02) = 5 -> 5, ceil(4.8) = 5 -> 5, 6 -> 5
    assert (
        splits.time_quantile([(t, 1) for t in range(1, 11)], 1.0 - (0.2 + 0.1)) == 7
    )  # 7 rows, not ceil(7.0000001)
    assert splits.time_quantile([], 0.5) is None
    # the global cutoff equals the per-user one over the same timestamps
    stamps = [1, 3, 3, 3, 5, 5]
    assert all(
        splits.time_quantile(counts, 1 - f) == splits.user_eval_cutoff(stamps, f) for f in (0.1, 0.2, 0.5)
    )


def test_split_warm_per_user_and_global():
    records = [_rec("a", t) for t in (1, 2, 3, 4, 5)] + [_rec("b", t) for t in (100, 100, 101)]
    # per user, eval 0.2 + valid 0.2: a (5 rows) keeps ceil(4) rows before eval, ceil(3) before valid;
    # b (3 rows): ceil(2.4) = 3 -> no eval row, ceil(1.8) = 2 -> its last row is validation.
    # global (8 rows): eval cutoff = 7th timestamp (100), valid cutoff = ceil(4.8) = 5th (5).
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        per_user = (
            p | "PU" >> beam.Create(_samples(records)) | "SplitPU" >> bsplits.SplitWarm("per_user", 0.2, 0.2)
        )
        assert_that(
            per_user["rows"] | "PUKeys" >> beam.Map(lambda sr: (sr[1]["user_id"], sr[1]["timestamp"], sr[0])),
            equal_to(
                [("a", t, "pretrain_train") for t in (1, 2, 3)]
                + [("a", 4, "pretrain_valid"), ("a", 5, "pretrain_eval")]
                + [("b", 100, "pretrain_train")] * 2
                + [("b", 101, "pretrain_valid")]
            ),
            label="PerUser",
        )
        assert_that(per_user["cutoffs"], equal_to([]), label="PerUserCutoffs")
        glob = (
            p
            | "G" >> beam.Create(_samples(records[::-1]))
            | "SplitG" >> bsplits.SplitWarm("global", 0.2, 0.2)
        )
        assert_that(
            glob["rows"] | "GKeys" >> beam.Map(lambda sr: (sr[1]["timestamp"], sr[0])),
            equal_to(
                [(t, "pretrain_train") for t in (1, 2, 3, 4, 5)]
                + [(100, "pretrain_valid")] * 2
                + [(101, "pretrain_eval")]
            ),
            label="Global",
        )
        assert_that(
            glob["cutoffs"],
            equal_to(
                [(("cutoff", "pretrain", "eval_cutoff"), 100), (("cutoff", "pretrain", "valid_cutoff"), 5)]
            ),
            label="GlobalCutoffs",
        )
    with pytest.raises(ValueError, match="valid_fraction"):
        bsplits.SplitWarm("per_user", 0.5, 0.5)


def test_split_cold_keeps_the_future_out_of_fine_tuning():
    records = [_rec(str(t % 3), t, domain="rec_children") for t in range(1, 21)]
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        # 20 rows, eval 0.25: cutoff = 15th timestamp; then 2 validation rows, 5 fine-tune rows
        split = (
            p
            | beam.Create(_samples(records))
            | bsplits.SplitCold(eval_fraction=0.25, finetune_rows=5, valid_rows=2)
        )
        assert_that(
            split["rows"] | beam.Map(lambda sr: (sr[1]["timestamp"], sr[0])),
            equal_to(
                [(t, "coldstart_finetune") for t in range(9, 14)]
                + [(t, "coldstart_valid") for t in (14, 15)]
                + [(t, "coldstart_eval") for t in range(16, 21)]
            ),
            label="Splits",
        )
        assert_that(
            split[reading.FILTERED], equal_to([bsplits.COLDSTART_FILTER_REASON] * 8), label="Filtered"
        )
        assert_that(
            split["cutoffs"],
            equal_to(
                [
                    (("cutoff", "coldstart", "eval_cutoff"), 15),
                    (("cutoff", "coldstart", "valid_start"), 14),
                    (("cutoff", "coldstart", "finetune_start"), 9),
                ]
            ),
            label="Cutoffs",
        )


def test_split_cold_breaks_timestamp_ties_by_sample_key_not_by_order():
    tied = [_rec("u", 5, item=str(i), domain="rec_children") for i in range(10)]
    later = [_rec("u", 9, item=f"late{i}", domain="rec_children") for i in range(4)]
    # 14 rows, eval 0.3: rank ceil(9.8) = 10 -> cutoff 5, the 4 later rows are eval; of the 10 tied
    # rows the 2 with the largest keys are validation, the next 3 fine-tune, the other 5 filtered
    by_key = sorted(tied, key=lambda r: splits.sample_key(r, 7), reverse=True)
    expected = (
        [(r["item_id"], "coldstart_valid") for r in by_key[:2]]
        + [(r["item_id"], "coldstart_finetune") for r in by_key[2:5]]
        + [(r["item_id"], "coldstart_eval") for r in later]
    )
    for order in (tied + later, later + tied[::-1]):
        with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
            split = (
                p
                | beam.Create(_samples(order))
                | bsplits.SplitCold(0.3, finetune_rows=3, valid_rows=2, seed=7)
            )
            assert_that(split["rows"] | beam.Map(lambda sr: (sr[1]["item_id"], sr[0])), equal_to(expected))
    assert splits.sample_key(tied[0], 7) == splits.sample_key(dict(reversed(tied[0].items())), 7)
    assert splits.sample_key(tied[0], 7) != splits.sample_key(tied[0], 8)


def test_cold_bounds_share_a_short_domain_pro_rata():
    latest = [(9, 1), (8, 4), (8, 2), (7, 0), (6, 3), (5, 5)]
    assert splits.cold_bounds(latest, valid_rows=1, finetune_rows=2) == {
        "valid_start": (9, 1),
        "finetune_start": (8, 2),
    }
    # 6 rows for 2 + 10 wanted: 6 * 2 // 12 = 1 validation row, 5 fine-tune rows
    assert splits.cold_bounds(latest, 2, 10) == {"valid_start": (9, 1), "finetune_start": (5, 5)}
    assert splits.cold_bounds([], 2, 10) == {"valid_start": None, "finetune_start": None}


def test_shards_are_sized_by_rows_and_cover_the_key_range():
    rows = [0, 9, 1_000, 3_257, 87_000, 1_000_000, 10**9]
    assert [writing.num_shards(n) for n in rows] == [1, 1, 1, 4, 8, 40, writing.MAX_SHARDS]
    assert [writing.shard_of(k, 8) for k in (0, 2**60 - 1, 2**60, 2**62, 2**63 - 1)] == [0, 0, 1, 4, 7]
    assert (
        writing.shard_path("o", "pretrain_valid", 3, 8) == "o/pretrain_valid/part-00003-of-00008.tfrecord.gz"
    )


def test_mark_cold_items_counts_what_the_model_trained_on():
    rows = (
        [("pretrain_train", {"item_id": "hot"})] * 3
        + [("pretrain_train", {"item_id": "rare"})]
        + [("coldstart_finetune", {"item_id": "kid"})] * 3
        + [(s, {"item_id": i}) for s in bsplits.HELD_OUT_SPLITS for i in ("hot", "rare", "kid", "new")]
    )
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        marked = p | beam.Create(rows) | bsplits.MarkColdItems(max_train_count=1)
        assert_that(
            marked | beam.Map(lambda sr: (sr[0], sr[1]["item_id"], sr[1].get("is_cold_item"))),
            equal_to(
                [("pretrain_train", "hot", None)] * 3
                + [("pretrain_train", "rare", None)]
                + [("coldstart_finetune", "kid", None)] * 3
                + [
                    (split, item, cold)
                    for split in ("pretrain_valid", "pretrain_eval")
                    for item, cold in (("hot", 0), ("rare", 1), ("kid", 1), ("new", 1))
                ]
                + [
                    (split, item, cold)
                    for split in ("coldstart_valid", "coldstart_eval")
                    for item, cold in (("hot", 0), ("rare", 1), ("kid", 0), ("new", 1))
                ]
            ),
        )


def test_write_vocabularies_most_frequent_first(tmp_path):
    base = {"query_id": "", "item_decade": "", "item_genres": []}
    records = [
        {**base, "user_id": u, "item_id": i, "item_genres": g}
        for u, i, g in [
            ("b", "1", ["Drama"]),
            ("a", "1", ["Drama", "War"]),
            ("b", "2", ["War"]),
            ("b", "1", ["Drama"]),
        ]
    ]
    (tmp_path / layout.VOCAB_DIR).mkdir()
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        sizes = (
            p
            | beam.Create(_samples(records))
            | vocabularies.WriteVocabularies(str(tmp_path), min_frequency=2)
        )
        assert_that(
            sizes,
            equal_to(
                [
                    (("vocab_size", f), n)
                    for f, n in [
                        ("user_id", 1),
                        ("item_id", 1),
                        ("item_genres", 2),
                        ("query_id", 0),
                        ("item_decade", 0),
                    ]
                ]
            ),
        )
    assert layout.read_vocab(tmp_path, "user_id") == ["b"]
    assert layout.read_vocab(tmp_path, "item_genres") == ["Drama", "War"]  # 3 > 2 uses
    assert layout.read_vocab(tmp_path, "item_decade") == []


def test_text_encoder_model_handler(encoder_dir):
    handler = TextEncoderModelHandler(encoder_dir, chunk_size=2)
    model = handler.load_model()
    texts = ["a much longer title about space (1999)", "heist", "", "love story"]
    results = list(handler.run_inference(texts, model))
    assert [r.example for r in results] == texts
    direct = model.signatures["serving_default"](texts=tf.constant(texts))["embeddings"].numpy()
    np.testing.assert_allclose(np.stack([r.inference for r in results]), direct, rtol=1e-5, atol=1e-6)
    assert saved_model_dim(encoder_dir) == TEXT_DIM
    with pytest.raises(ValueError, match="min_batch_size"):
        TextEncoderModelHandler(encoder_dir, min_batch_size=0)


def test_embed_texts_encodes_each_unique_text_once(tmp_path, encoder_dir):
    records = [
        {"query_text": q, "item_title": t}
        for q, t in [("", "A (1990)"), ("space", "A (1990)"), ("space", "B (1991)")]
    ]
    with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
        tables = p | beam.Create(records) | text_features.EmbedTexts(encoder_dir, str(tmp_path), TEXT_DIM)
        assert_that(
            tables["query_text"]
            | "Q" >> beam.Map(lambda kv: (kv[0], len(tf.train.Feature.FromString(kv[1]).float_list.value))),
            equal_to([("space", TEXT_DIM)]),
            label="Query",
        )
        assert_that(
            tables["item_title"] | "T" >> beam.Map(lambda kv: kv[0]),
            equal_to(["A (1990)", "B (1991)"]),
            label="Title",
        )
    from tfsr.text.cache import EMBEDDING_KEY, TEXT_KEY

    parsed = [
        tf.io.parse_single_example(
            r,
            {
                TEXT_KEY: tf.io.FixedLenFeature([], tf.string),
                EMBEDDING_KEY: tf.io.FixedLenFeature([TEXT_DIM], tf.float32),
            },
        )
        for r in tf.data.TFRecordDataset(str(layout.text_embeddings_path(tmp_path, "item_title")), "GZIP")
    ]
    assert sorted(p[TEXT_KEY].numpy() for p in parsed) == [b"A (1990)", b"B (1991)"]


class _Group:
    """Grouped values as runners give them: iterable again and again, never a list; counts the passes."""

    def __init__(self, values):
        self.values, self.passes = values, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.values)


def test_text_join_reads_each_group_lazily_and_appends_the_vector():
    rows = [("pretrain_train", {"item_title": "A"}, (b"q",)), ("pretrain_eval", {"item_title": "A"}, (b"",))]
    group = _Group([rows[0], (text_features.TABLE_ENTRY, {}, (b"vector-A",)), rows[1]])
    joined = text_features._with_vector_of_text(("A", group), "item_title")
    assert group.passes == 0  # a generator: nothing is read before the writer asks
    assert list(joined) == [
        ("pretrain_train", {"item_title": "A"}, (b"q", b"vector-A")),
        ("pretrain_eval", {"item_title": "A"}, (b"", b"vector-A")),
    ]
    assert group.passes == 2  # up to the table's entry, then row by row
    only_vector = _Group([(text_features.TABLE_ENTRY, {}, (b"vector-B",))])  # a text of no written row
    assert list(text_features._with_vector_of_text(("B", only_vector), "item_title")) == []
    with pytest.raises(ValueError, match="item_title 'C' has no embedding"):
        list(text_features._with_vector_of_text(("C", _Group(rows)), "item_title"))


def test_build_manifest_reconciles():
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=TEXT_DIM)
    stats = {
        ("read", "ratings"): 10,
        ("used", "ratings"): 7,
        ("dead_lettered", "ratings", "invalid_utf8"): 2,
        ("filtered", "ratings", "header"): 1,
        ("samples_built",): 7,
        ("samples", "pretrain_train", "rec_drama"): 4,
        ("positives", "pretrain_train", "rec_drama"): 1,
        ("cold_items", "pretrain_train", "rec_drama"): 0,
        ("samples", "coldstart_eval", "rec_children"): 2,
        ("positives", "coldstart_eval", "rec_children"): 2,
        ("cold_items", "coldstart_eval", "rec_children"): 1,
        ("samples_filtered", "coldstart_before_finetune_window"): 1,
        ("vocab_size", "user_id"): 3,
        ("unique_texts", "item_title"): 5,
        ("cutoff", "pretrain", "eval_cutoff"): 400,
        ("cutoff", "pretrain", "valid_cutoff"): 300,
        ("cutoff", "coldstart", "eval_cutoff"): 90,
        ("cutoff", "coldstart", "finetune_start"): 10,
        ("shards", "pretrain_train"): 8,
        ("shards", "coldstart_eval"): 1,
        ("items",): 6,
    }
    options = {
        "seed": 0,
        "split_mode": "global",
        "eval_fraction": 0.2,
        "valid_fraction": 0.1,
        "coldstart_eval_fraction": 0.3,
        "coldstart_valid_rows": 0,
        "coldstart_finetune_rows": 5,
        "shuffle_seed": 3,
    }
    manifest = bmanifest.build_manifest(stats, spec, {"name": "tiny"}, "tfsr preprocess --x", options)
    assert manifest["split_cutoffs"] == {
        "pretrain": {
            "mode": "global",
            "eval_fraction": 0.2,
            "valid_fraction": 0.1,
            "eval_cutoff": 400,
            "valid_cutoff": 300,
        },
        "coldstart": {
            "eval_fraction": 0.3,
            "valid_rows": 0,
            "finetune_rows": 5,
            "eval_cutoff": 90,
            "valid_start": None,
            "finetune_start": 10,
        },
        "shuffle_seed": 3,
    }
    assert manifest["shards"] == {
        split: {"pretrain_train": 8, "coldstart_eval": 1}.get(split, 0) for split in layout.SPLITS
    }
    assert manifest["items"] == 6
    assert bmanifest.build_manifest({}, spec, {}, "", options)["items"] == 0  # no item, no catalogue row
    per_user = bmanifest.build_manifest(stats, spec, {}, "", options | {"split_mode": "per_user"})
    assert "eval_cutoff" not in per_user["split_cutoffs"]["pretrain"]  # one cutoff per user
    assert manifest["counts"]["pretrain_train"]["rec_drama"] == {
        "samples": 4,
        "positives": 1,
        "cold_items": 0,
        "label_rate": 0.25,
    }
    assert manifest["counts"]["pretrain_eval"] == {}
    assert manifest["reconciliation"]["rows"]["ratings"]["balanced"]
    assert manifest["reconciliation"]["samples"] == {
        "built": 7,
        "written": 6,
        "balanced": True,
        "filtered": {"coldstart_before_finetune_window": 1},
    }
    assert manifest["reconciliation"]["balanced"]
    assert FeatureSpec.from_json(manifest["feature_spec"]) == spec
    assert manifest["text_features"] == layout.TEXT_KEYS  # the default of tfsr preprocess
    vector = options | {"text_features": layout.TEXT_VECTORS}
    assert bmanifest.build_manifest(stats, spec, {}, "", vector)["text_features"] == layout.TEXT_VECTORS
    stats[("used", "ratings")] = 6  # a row lost without a trace must show
    assert not bmanifest.build_manifest(stats, spec, {}, "", {})["reconciliation"]["balanced"]


# -------------------------------------------------------------------------------------- end to end
def _read_split(out: pathlib.Path, split: str) -> list[dict]:
    """Every feature the samples carry: with their embeddings in vector mode, their texts only in key mode."""
    spec = layout.read_feature_spec(out)
    vectors = layout.text_features_mode(out) == layout.TEXT_VECTORS
    parse_spec = spec.parse_spec() if vectors else spec.parse_spec(roles=("raw", "label", "meta"))
    files = sorted(tf.io.gfile.glob(layout.split_pattern(out, split)))
    dataset = (
        tf.data.TFRecordDataset(files, compression_type="GZIP")
        .batch(4096)
        .map(lambda s: tf.io.parse_example(s, parse_spec))
    )
    rows = []
    for batch in dataset:
        batch = {k: (v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy()) for k, v in batch.items()}
        rows += [{k: batch[k][i] for k in batch} for i in range(len(batch["label"]))]
    return rows


def _dead_letters(out: pathlib.Path) -> list[dict]:
    return [
        json.loads(line)
        for f in sorted((out / layout.DEAD_LETTERS_DIR).glob("*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
    ]


def _examples(out: pathlib.Path, split: str) -> list[tf.train.Example]:
    """A split's samples in file order (shard after shard, each in key order)."""
    files = sorted(tf.io.gfile.glob(layout.split_pattern(out, split)))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, "GZIP")]


def _text_table(out: pathlib.Path, feature: str) -> dict[bytes, np.ndarray]:
    from tfsr.export import read_text_embeddings

    texts, matrix = read_text_embeddings(layout.text_embeddings_path(out, feature), TEXT_DIM)
    return dict(zip(texts, matrix, strict=True))


def _run(tmp_path, encoder_dir, *args, name: str = "samples") -> pathlib.Path:
    out = tmp_path / name
    code = bs.run(
        [*args, "--output_dir", str(out), "--text_encoder_dir", encoder_dir],
        save_main_session=False,
    )
    assert code == 0
    return out


def test_corrupted_movielens_finishes_dead_letters_each_bad_row_and_keeps_good_rows(tmp_path, encoder_dir):
    data = tmp_path / "ml"
    shutil.copytree(DATA / "ml_corrupt", data)
    with open(data / "ratings.csv", "ab") as f:
        f.write(b"3,6,4.0," + b"9" * (1 << 20) + b"\n")  # line 25: a 1 MB field
    with open(data / "tags.csv", "ab") as f:
        f.write(b"3,6," + b"z" * (1 << 20) + b",1100000400\n")  # line 12: a 1 MB tag
    out = _run(tmp_path, encoder_dir, "--movielens_dir", str(data), "--num_negatives", "2")
    dead = {(d["source"], d["line"]): d for d in _dead_letters(out)}
    expected = {
        (r.source, r.line): r.reason for r in ml.read_movielens(data).rejections if r.reason != "blank_line"
    }
    assert {k: d["reason"] for k, d in dead.items()} == expected
    assert expected[("ratings", 25)] == expected[("tags", 12)] == "field_too_long"
    assert all(len(d["raw"]) <= reading.RAW_SNIPPET_CHARS and d["detail"] for d in dead.values())

    manifest = layout.read_manifest(out)
    rows = manifest["reconciliation"]["rows"]
    assert rows["ratings"] == {
        "read": 25,
        "used": 13,
        "balanced": True,
        "filtered": {"header": 1, "blank_line": 1},
        "dead_lettered": dict(collections.Counter(r for (s, _), r in expected.items() if s == "ratings")),
    }
    assert (rows["movies"]["used"], rows["tags"]["used"]) == (6, 6)
    assert manifest["reconciliation"]["balanced"]
    written = {split: _read_split(out, split) for split in layout.SPLITS}
    samples = manifest["reconciliation"]["samples"]
    assert samples["built"] >= 13 + 6  # every rating, and at least the clicked row of every tag
    assert sum(len(v) for v in written.values()) == samples["built"] - sum(samples["filtered"].values())
    assert manifest["shards"] == {split: int(bool(rows)) for split, rows in written.items()}
    assert manifest["vocab_sizes"]["user_id"] == 3
    assert len(_check_catalogue(out)) == manifest["items"] > 0  # tagged-movie negatives included


@pytest.fixture(scope="module")
def generic_logs_samples(tmp_path_factory, encoder_dir) -> dict[str, pathlib.Path]:
    """The corrupted generic logs built in both text-feature modes: {mode: samples directory}."""
    root = tmp_path_factory.mktemp("generic_logs")
    logs = root / "logs"
    logs.mkdir()
    for name in ("logs_corrupt.jsonl", "logs_corrupt.csv"):
        shutil.copy(DATA / name, logs / name)
    with open(logs / "logs_corrupt.jsonl", "ab") as f:
        f.write(
            b'{"domain":"rec_drama","user_id":"u1","item_id":"i3","label":1,"item_title":"'
            + b"t" * (1 << 20)
            + b'"}\n'
        )
    return {
        layout.TEXT_KEYS: _run(root, encoder_dir, "--logs", str(logs / "*"), name="key"),  # the default
        layout.TEXT_VECTORS: _run(
            root, encoder_dir, "--logs", str(logs / "*"), "--text_features", "vector", name="vector"
        ),
    }


def test_corrupted_generic_logs(generic_logs_samples):
    out = generic_logs_samples[layout.TEXT_KEYS]
    reasons = sorted((pathlib.Path(d["file"]).suffix, d["line"], d["reason"]) for d in _dead_letters(out))
    assert reasons == sorted(
        [
            (".jsonl", 7, "malformed_json"),
            (".jsonl", 8, "invalid_domain"),
            (".jsonl", 9, "invalid_label"),
            (".jsonl", 10, "invalid_user_id"),
            (".jsonl", 11, "missing_query"),
            (".jsonl", 12, "unexpected_query"),
            (".jsonl", 13, "invalid_timestamp"),
            (".jsonl", 14, "invalid_utf8"),
            (".jsonl", 15, "unknown_column"),
            (".jsonl", 16, "malformed_json"),
            (".jsonl", 17, "item_title_too_long"),
            (".csv", 5, "invalid_label"),
            (".csv", 6, "wrong_column_count"),
            (".csv", 7, "malformed_csv"),
        ]
    )
    manifest = layout.read_manifest(out)
    assert manifest["reconciliation"]["rows"]["logs"] | {"dead_lettered": None} == {
        "read": 24,
        "used": 9,
        "filtered": {"header": 1},
        "dead_lettered": None,
        "balanced": True,
    }
    written = [r for split in layout.SPLITS for r in _read_split(out, split)]
    assert len(written) == 9  # every good row is kept
    assert {r["item_title"].decode() for r in written} >= {"War Front, The (1960)", "Star Galaxy (1990)"}


# ------------------------------------------------------------------------ text features: key or vector
EMBEDDINGS = ("query_text_embedding", "item_title_embedding")


def test_key_mode_samples_carry_their_texts_and_no_vectors(generic_logs_samples):
    out = generic_logs_samples[layout.TEXT_KEYS]
    assert layout.read_manifest(out)["text_features"] == layout.text_features_mode(out) == "key"
    examples = [e for split in layout.SPLITS for e in _examples(out, split)]
    assert len(examples) == 9
    for example in examples:
        names = set(example.features.feature)
        assert {"item_title", "query_text"} <= names
        assert not names & set(EMBEDDINGS), names
    # the texts are in the lookup tables the readers use
    tables = {f: _text_table(out, f) for f in ("item_title", "query_text")}
    for example in examples:
        for feature, table in tables.items():
            (text,) = example.features.feature[feature].bytes_list.value
            assert text in table or not text


def test_vector_mode_samples_carry_exactly_their_texts_table_vectors(generic_logs_samples):
    out = generic_logs_samples[layout.TEXT_VECTORS]
    assert layout.read_manifest(out)["text_features"] == layout.text_features_mode(out) == "vector"
    spec = layout.read_feature_spec(out)
    tables = {source: _text_table(out, source) for source in spec.text_embeddings}
    rows = [r for split in layout.SPLITS for r in _read_split(out, split)]
    assert len(rows) == 9
    empty = 0
    for row in rows:
        for source, derived in spec.text_embeddings.items():
            text = row[source]
            expected = tables[source][text] if text else np.zeros(TEXT_DIM, np.float32)
            np.testing.assert_array_equal(row[derived], expected)
            empty += not text
    assert empty and empty < len(rows) * 2  # both paths: joined vectors and zeros for empty queries
    # several rows share a title or a query: the join fans a vector out to all of them
    assert max(collections.Counter(r["item_title"] for r in rows).values()) >= 2


def test_both_modes_write_the_same_rows_in_the_same_order(generic_logs_samples):
    """Vector samples are key samples plus the derived features, shard by shard, row by row."""

    def raw(example: tf.train.Example) -> bytes:
        for name in EMBEDDINGS:
            del example.features.feature[name]
        return example.SerializeToString(deterministic=True)

    key, vector = generic_logs_samples[layout.TEXT_KEYS], generic_logs_samples[layout.TEXT_VECTORS]
    for split in layout.SPLITS:
        key_files = sorted(p.name for p in (key / split).glob("part-*"))
        assert key_files == sorted(p.name for p in (vector / split).glob("part-*")), split
        key_rows = [e.SerializeToString(deterministic=True) for e in _examples(key, split)]
        assert key_rows == [raw(e) for e in _examples(vector, split)], split
    # the item catalogue holds raw item features only: the same bytes in both modes (and so in any rerun)
    key_items, vector_items = (sorted((out / layout.ITEMS_DIR).glob("part-*")) for out in (key, vector))
    assert [p.name for p in key_items] == [p.name for p in vector_items] != []
    assert [p.read_bytes() for p in key_items] == [p.read_bytes() for p in vector_items]
    manifests = [layout.read_manifest(out) for out in (key, vector)]
    for entry in ("counts", "shards", "items", "text_embeddings", "vocab_sizes", "reconciliation"):
        assert manifests[0][entry] == manifests[1][entry], entry


# ------------------------------------------------------------------------------------ item catalogue
def _item_values(example_or_row, names) -> tuple:
    """The item features of a catalogue Example or of a `_read_split` row, as tuples of bytes."""
    if isinstance(example_or_row, tf.train.Example):
        return tuple(tuple(example_or_row.features.feature[n].bytes_list.value) for n in names)
    values = [example_or_row[n] for n in names]
    return tuple(tuple(v) if isinstance(v, list) else (v,) for v in values)


def _catalogue_examples(out: pathlib.Path) -> list[tf.train.Example]:
    """The catalogue's Examples in file order (shard after shard)."""
    files = sorted(tf.io.gfile.glob(layout.items_pattern(out)))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, "GZIP")]


def _check_catalogue(out: pathlib.Path) -> dict[bytes, tuple]:
    """Checks ``items/`` against the samples of every split; returns item_id -> its item features."""
    spec = layout.read_feature_spec(out)
    names = [f.name for f in spec.select(["raw"], entity="item")]
    assert names == ["item_id", "item_title", "item_genres", "item_decade"]
    by_item = {}
    for path in sorted((out / layout.ITEMS_DIR).glob(f"part-*{layout.TFRECORD_SUFFIX}")):
        examples = [
            tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path), "GZIP")
        ]
        ids = [e.features.feature["item_id"].bytes_list.value[0] for e in examples]
        assert ids == sorted(ids), path  # each shard in item_id order
        for example in examples:
            assert set(example.features.feature) <= set(names)  # raw item features only: no embedding
            item = example.features.feature["item_id"].bytes_list.value[0]
            assert item not in by_item, item  # once each
            by_item[item] = _item_values(example, names)
    rows = collections.defaultdict(set)  # item -> the item features of its rows (positives, negatives)
    for split in layout.SPLITS:
        for row in _read_split(out, split):
            rows[row["item_id"]].add(_item_values(row, names))
    assert set(by_item) == set(rows)  # exactly the distinct items of all splits
    for item, values in by_item.items():
        # the item's features as its rows hold them; rows that disagree: the smallest, whatever their order
        assert values == min(rows[item]), (item, values, rows[item])
    assert layout.read_manifest(out)["items"] == len(by_item)
    return by_item


def test_item_catalogue_holds_every_item_of_every_split_once(generic_logs_samples):
    out = generic_logs_samples[layout.TEXT_KEYS]
    by_item = _check_catalogue(out)
    assert sorted(by_item) == [b"i1", b"i2", b"i3", b"i4", b"i5"]  # i2: a negative; i5: cold-start
    # i3's rows name it "War Front, The (1960)" and "War Front (1960)": the smallest tuple is kept
    assert by_item[b"i3"] == ((b"i3",), (b"War Front (1960)",), (b"War", b"Drama"), (b"1960s",))
    assert {p.name for p in (out / layout.ITEMS_DIR).iterdir()} == {"part-00000-of-00001.tfrecord.gz"}


def test_write_item_catalogue_does_not_depend_on_row_order(tmp_path):
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=TEXT_DIM)
    rows = [
        ("pretrain_train", {"item_id": "b", "item_title": "B", "item_genres": ["x", "y"]}),
        ("pretrain_eval", {"item_id": "a", "item_title": "A (1990)", "label": 0, "item_decade": "1990s"}),
        (
            "coldstart_eval",
            {"item_id": "b", "item_title": "B", "item_genres": ["x"], "domain": "rec_children"},
        ),
        ("pretrain_valid", {"item_id": "c", "query_id": "q", "query_text": "q", "domain": "search_tags"}),
    ]
    records = [
        (split, spec.validate({**_rec("u", 1), **row}, RECORD_ROLES) | {"is_cold_item": 0})
        for split, row in rows
    ]
    written = []
    for name, order in (("forward", records), ("backward", records[::-1])):
        with test_pipeline.TestPipeline(runner=core.LOCAL_RUNNER) as p:
            ledger = p | beam.Create(order) | catalogue.WriteItemCatalogue(spec, str(tmp_path / name))
            assert_that(ledger, equal_to([(("items",), 3)]))
        (path,) = (tmp_path / name / layout.ITEMS_DIR).iterdir()
        written.append(path.read_bytes())
    assert written[0] == written[1]
    examples = _catalogue_examples(tmp_path / "forward")
    assert [e.features.feature["item_id"].bytes_list.value[0] for e in examples] == [b"a", b"b", b"c"]
    assert list(examples[1].features.feature["item_genres"].bytes_list.value) == [b"x"]  # ("x",) < ("x", "y")
    assert sorted(examples[2].features.feature) == ["item_decade", "item_genres", "item_id", "item_title"]


@pytest.mark.parametrize("mode", layout.TEXT_FEATURE_MODES)
def test_make_items_dataset_reads_the_catalogue_with_title_vectors(generic_logs_samples, mode):
    out = generic_logs_samples[mode]
    spec = layout.read_feature_spec(out)
    lookup = TextLookup.from_samples(out, spec, missing="error")
    batches = list(make_items_dataset(out, spec, batch_size=2, text_lookup=lookup))
    assert [len(b["item_id"]) for b in batches] == [2, 2, 1]
    for batch in batches:
        assert set(batch) == {"item_id", "item_title", "item_genres", "item_decade", "item_title_embedding"}
        size = len(batch["item_id"])
        for name in ("item_id", "item_title", "item_decade"):
            assert batch[name].shape == [size] and batch[name].dtype == tf.string, name
        assert isinstance(batch["item_genres"], tf.RaggedTensor)
        assert batch["item_title_embedding"].shape == [size, TEXT_DIM]
    table = _text_table(out, "item_title")
    ids, read = [], {}
    for batch in batches:
        for i, item in enumerate(batch["item_id"].numpy()):
            ids.append(item)
            title = batch["item_title"][i].numpy()
            np.testing.assert_array_equal(batch["item_title_embedding"][i].numpy(), table[title])
            read[item] = (
                (item,),
                (title,),
                tuple(batch["item_genres"][i].numpy()),
                (batch["item_decade"][i].numpy(),),
            )
    # the file order, every pass; the features as written
    examples = _catalogue_examples(out)
    assert ids == [e.features.feature["item_id"].bytes_list.value[0] for e in examples]
    assert read == _check_catalogue(out)
    plain = list(make_items_dataset(out, spec, batch_size=8))
    assert len(plain) == 1 and "item_title_embedding" not in plain[0]
    assert plain[0]["item_id"].numpy().tolist() == ids


def test_make_items_dataset_names_the_fix_for_samples_without_a_catalogue(generic_logs_samples, tmp_path):
    source = generic_logs_samples[layout.TEXT_KEYS]
    spec = layout.read_feature_spec(source)
    old = tmp_path / "old"
    shutil.copytree(source, old, ignore=shutil.ignore_patterns(layout.ITEMS_DIR))
    with pytest.raises(FileNotFoundError, match=r"predates the catalogue; re-run `tfsr preprocess`"):
        make_items_dataset(old, spec, batch_size=8)
    catalogue._write_empty_catalogue(0, str(old))  # a job that wrote no item: an empty catalogue
    assert list(make_items_dataset(old, spec, batch_size=8)) == []


def _descendants(p: beam.Pipeline, root: str, ledger: str) -> tuple[set, list]:
    """The PCollections computed from the transforms labelled `root`... (except through the `ledger`
    transform: the manifest's counts), and every leaf transform of `p` in topological order."""
    leaves = []

    class Leaves(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            leaves.append(node)

    p.visit(Leaves())
    derived = set()
    for node in leaves:
        inputs = [*node.main_inputs.values(), *(s.pvalue for s in node.side_inputs)]
        if node.full_label.startswith(ledger):
            continue
        if node.full_label.startswith(root) or any(pc in derived for pc in inputs):
            derived.update(node.outputs.values())
    return derived, leaves


@pytest.mark.parametrize("mode", layout.TEXT_FEATURE_MODES)
def test_no_side_input_is_built_from_the_text_tables(tmp_path, encoder_dir, mode):
    args = bs._parser().parse_args(
        ["--logs", str(tmp_path / "*.jsonl"), "--output_dir", str(tmp_path / "o"), "--text_features", mode]
    )
    spec = FeatureSpec.default(MOVIELENS_DOMAINS, text_dim=TEXT_DIM)
    p = beam.Pipeline(runner=core.LOCAL_RUNNER)  # built, never run
    bs.build_pipeline(p, args, spec, encoder_dir, {}, "tfsr preprocess")
    from_texts, leaves = _descendants(p, "TextFeatures/", ledger="AllStats")
    # Beam's own file sink of text_embeddings/ passes its file names between its steps as side inputs
    readers = [node for node in leaves if not node.full_label.startswith("TextFeatures/Write_")]
    assert [s for node in readers for s in node.side_inputs]  # the shard counts, the split cutoffs...
    assert not [(n.full_label, s) for n in readers for s in n.side_inputs if s.pvalue in from_texts]
    (write,) = [node for node in leaves if node.full_label == "WriteSplits/WriteShards"]
    assert [s.pvalue.producer.full_label for s in write.side_inputs] == ["WriteSplits/ShardsPerSplit"]
    joins = {node.full_label.split("/")[1] for node in leaves if "/JoinEmbeddings_" in node.full_label}
    expected = {"JoinEmbeddings_query_text", "JoinEmbeddings_item_title"} if mode == "vector" else set()
    assert joins == expected


@pytest.mark.slow
def test_movielens_end_to_end(tmp_path, encoder_dir, movielens_dir):
    out = _run(tmp_path, encoder_dir, "--movielens_dir", str(movielens_dir))
    manifest = layout.read_manifest(out)
    counts = {split: {d: e["samples"] for d, e in per.items()} for split, per in manifest["counts"].items()}
    assert counts == DATA_CARD_COUNTS  # the numbers published in docs/DATA.md
    assert manifest["reconciliation"]["balanced"]
    assert manifest["reconciliation"]["rows"]["ratings"] == {
        "read": 100837,
        "used": 100836,
        "dead_lettered": {},
        "filtered": {"header": 1},
        "balanced": True,
    }
    assert manifest["text_encoder"]["dim"] == TEXT_DIM
    assert manifest["vocab_sizes"]["user_id"] == len(layout.read_vocab(out, "user_id")) == 610
    assert len(_check_catalogue(out)) == manifest["items"]
    assert manifest["items"] >= len(layout.read_vocab(out, "item_id"))  # the vocabulary: pretrain_train only

    train = _read_split(out, "pretrain_train")
    evaluation = _read_split(out, "pretrain_eval")
    assert (len(train), len(evaluation)) == (
        sum(counts["pretrain_train"].values()),
        sum(counts["pretrain_eval"].values()),
    )
    last_train = collections.defaultdict(int)
    for r in train:
        last_train[r["user_id"]] = max(last_train[r["user_id"]], r["timestamp"])
    assert all(r["timestamp"] > last_train[r["user_id"]] for r in evaluation)  # no eval row older than train
    assert all(r["is_cold_item"] == 0 for r in train)
    search_eval_users = {r["user_id"] for r in evaluation if r["domain"] == b"search_tags"}
    assert len(search_eval_users) >= 20  # the search evaluation is not a handful of users
    finetune, cold_eval = _read_split(out, "coldstart_finetune"), _read_split(out, "coldstart_eval")
    assert max(r["timestamp"] for r in finetune) < min(r["timestamp"] for r in cold_eval)
    assert {r["domain"] for r in finetune + cold_eval} == {b"rec_children"}
    assert manifest["text_features"] == "key"  # samples carry titles; their vectors are in the table
    assert "item_title_embedding" not in evaluation[0]
    titles = _text_table(out, "item_title")
    assert np.allclose(
        np.linalg.norm(np.stack([titles[r["item_title"]] for r in evaluation[:100]]), axis=1),
        1.0,
        atol=1e-4,
    )


def test_refuses_to_mix_with_an_existing_samples_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not samples")
    overwrite = ["--movielens_dir", "x", "--output_dir", str(tmp_path), "--overwrite"]
    bs._check_args(bs._parser().parse_args(overwrite))
    assert (tmp_path / "notes.txt").exists()  # --overwrite never deletes a directory that is not samples
    (tmp_path / layout.PRETRAIN_TRAIN).mkdir()
    args = bs._parser().parse_args(["--movielens_dir", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="pass --overwrite"):
        bs._check_args(args)
    bs._check_args(
        bs._parser().parse_args(["--movielens_dir", "x", "--output_dir", str(tmp_path), "--overwrite"])
    )
    assert not tmp_path.exists()
    with pytest.raises(SystemExit, match="matches no file"):
        bs._check_args(bs._parser().parse_args(["--logs", str(tmp_path / "*.jsonl"), "--output_dir", "o"]))


def test_type_hints_say_what_flows_checked_at_run_time(tmp_path, encoder_dir):
    """Beam's pipeline type check runs on every job (at construction); here Beam also checks the elements
    against the declared hints as they flow (--performance_runtime_type_check), over MovieLens rows with
    bad lines: a hint that named a type the records are not (a plain dict for SampleRecord) fails here.

    Not over generic logs: Beam 2.78's run-time check also holds a step's dead letters (tagged outputs)
    against the hint of the step that reads its main output, and the log parser's consumer is typed."""
    out = _run(
        tmp_path, encoder_dir, "--movielens_dir", str(DATA / "ml_corrupt"), "--performance_runtime_type_check"
    )
    assert layout.read_manifest(out)["reconciliation"]["balanced"]
