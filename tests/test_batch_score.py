"""beam_jobs.batch_score: row parsing, the SavedModel handler, and end-to-end runs over TFRecords and logs."""

import gzip
import json
import pathlib

import tfsr  # noqa: F401  (Keras 2 before TensorFlow)
from beam_jobs import batch_score as bsc
from beam_jobs.reading import LineRef
from tfsr.contract import ASPECTS, ENTITIES, RowError
from tfsr.datasets.logs import CSV_HEADER, format_log_line
from tfsr.datasets.rows import normalize_query

import apache_beam as beam
import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

TEXT_DIM = 16
KEYS = ("domain", "user_id", "item_id", "timestamp", "label")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small exported SavedModel (ContractModel + hashing text encoder) and its feature spec."""
    root = tmp_path_factory.mktemp("batch_score")
    toy = T.export_toy_model(root, TEXT_DIM, export_base="saved", with_text_tables=False)
    return {
        "spec": toy.spec,
        "path": toy.path,
        "signature": tf.saved_model.load(str(toy.path)).signatures["serving_default"],
    }


def _records(n: int, seed: int, start: int) -> list[dict]:
    """Raw records with a label and a unique timestamp (the row's key in these tests)."""
    out = []
    for i, r in enumerate(T.toy_records(n // 2, seed) + T.toy_records(n - n // 2, seed + 1, "rec_drama")):
        out.append(
            {**r, "query_id": normalize_query(r["query_text"]), "label": i % 2, "timestamp": start + i}
        )
    return out


def _expected(model, records) -> dict:
    serialized = [model["spec"].to_example(r, roles=("raw",)).SerializeToString() for r in records]
    out = model["signature"](examples=tf.constant(serialized))
    ctr, gates = out["ctr"].numpy(), out["gate_weights"].numpy()
    return {r["timestamp"]: (float(c), g) for r, c, g in zip(records, ctr, gates, strict=True)}


def _write_tfrecord(path: pathlib.Path, payloads, tail: bytes = b"") -> None:
    with gzip.open(path, "wb") as f:
        for payload in payloads:
            _TFRecordUtil.write_record(f, payload)
        f.write(tail)


def _dead(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "dead_letters").glob("*.jsonl")) for line in f.open()]


def _scores(out: pathlib.Path, suffix: str) -> list:
    lines = [line for f in sorted(out.glob(f"scores-*{suffix}")) for line in f.read_text().splitlines()]
    return [json.loads(line) for line in lines] if suffix == ".jsonl" else lines


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "line, fmt, reason",
    [
        (b'{"domain":"rec_drama","user_id":"u","item_id":"i"', "jsonl", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "jsonl", "malformed_json"),  # RecursionError in json.loads
        (b'{"domain":"rec_drama","user_id":"\\ud800","item_id":"i"}', "jsonl", "invalid_user_id"),
        (b'{"domain":"rec_nope","user_id":"u","item_id":"i"}', "jsonl", "invalid_domain"),
        (b'{"domain":"rec_drama","user_id":"u","item_id":"i","label":7}', "jsonl", "invalid_label"),
        (b'{"domain":"search_tags","user_id":"u","item_id":"i"}', "jsonl", "missing_query"),
        (b'{"domain":"rec_drama","user_id":"u\xff","item_id":"i"}', "jsonl", "invalid_utf8"),
        (b"rec_drama,u1,,i3,War (1960),War,1960s,,soon", "csv", "invalid_timestamp"),
        (b"rec_drama,u1,,i3,War (1960),War,1960s", "csv", "wrong_column_count"),
    ],
)
def test_parse_log_row_reasons(line, fmt, reason):
    with pytest.raises(RowError) as err:
        bsc.parse_log_row(line, fmt, T.toy_spec(TEXT_DIM))
    assert err.value.reason == reason, err.value.detail


def test_parse_log_row_label_and_timestamp_are_optional():
    spec = T.toy_spec(TEXT_DIM)
    row = bsc.parse_log_row(b"search_tags,u1, Space  Movie,m1,T,Sci-Fi|War,1990s,,", "csv", spec)
    assert (row["query_id"], row["item_genres"], row["timestamp"], "label" in row) == (
        "space movie",
        ["Sci-Fi", "War"],
        0,
        False,
    )


def test_parse_example_row():
    spec = T.toy_spec(TEXT_DIM)
    record = {**T.toy_records(1)[0], "label": 1, "timestamp": 5}
    good = spec.to_example(record, roles=("raw", "label", "meta"))
    assert bsc.parse_example_row(good.SerializeToString(), spec)["user_id"] == record["user_id"]
    two = tf.train.Example()
    two.CopyFrom(good)
    two.features.feature["user_id"].bytes_list.value.append(b"again")
    wrong_kind = tf.train.Example()
    wrong_kind.CopyFrom(good)
    wrong_kind.features.feature["item_id"].Clear()
    wrong_kind.features.feature["item_id"].int64_list.value.append(3)
    for payload, reason, needle in [
        (b"\x0a\xff\xff garbage", "malformed_example", "tf.train.Example"),
        (two.SerializeToString(), "invalid_user_id", "got 2"),
        (wrong_kind.SerializeToString(), "invalid_item_id", "expected a string"),
        (b"", "invalid_domain", "missing"),
    ]:
        with pytest.raises(RowError) as err:
            bsc.parse_example_row(payload, spec)
        assert (err.value.reason, needle in err.value.detail) == (reason, True), err.value.detail


def test_parse_fn_with_test_pipeline():
    spec = T.toy_spec(TEXT_DIM)
    good = format_log_line(
        {
            "domain": "rec_drama",
            "user_id": "u1",
            "item_id": "m1",
            "item_genres": [],
            "label": 1,
            "timestamp": 3,
        },
        "jsonl",
    )
    rows = [
        (LineRef("logs", "a.jsonl", 1, ""), ("jsonl", good.encode())),
        (LineRef("logs", "a.jsonl", 2, ""), ("jsonl", b"{")),
        (LineRef("logs", "a.jsonl", 3, ""), ("jsonl", b'{"domain":"x","user_id":"u","item_id":"i"}')),
    ]
    with test_pipeline.TestPipeline() as p:
        parsed = (
            p
            | beam.Create(rows)
            | beam.ParDo(bsc._ParseFn(spec, ("user_id", "label"))).with_outputs(bsc.DEAD, main="rows")
        )
        keys = parsed.rows | "Keys" >> beam.Map(lambda kv: (kv[0][0].line, kv[0][1]))
        reasons = parsed[bsc.DEAD] | "Reasons" >> beam.Map(lambda d: (d["line"], d["reason"]))
        assert_that(keys, equal_to([(1, ("u1", 1))]), label="CheckKeys")
        assert_that(reasons, equal_to([(2, "malformed_json"), (3, "invalid_domain")]), label="CheckDead")


def test_handler_isolates_a_row_that_fails_the_model(model):
    handler = bsc.SavedModelHandler(str(model["path"]))
    loaded = handler.load_model()
    records = _records(3, seed=3, start=0)
    good = [model["spec"].to_example(r, roles=("raw",)).SerializeToString() for r in records]
    results = list(handler.run_inference([good[0], b"not an example", good[1]], loaded))
    assert [r.inference is None for r in results] == [False, True, False]
    assert "InvalidArgumentError" in results[1].model_id
    expected = _expected(model, records)
    np.testing.assert_allclose(
        [results[0].inference["ctr"], results[2].inference["ctr"]],
        [expected[0][0], expected[1][0]],
        rtol=1e-6,
    )


def test_build_summary_reconciles():
    stats = {("read",): 10, ("scored",): 6, ("dead_lettered", "malformed_json"): 2, ("filtered", "header"): 1}
    rec = bsc.build_summary(stats, {"input": "x"})["reconciliation"]
    assert rec["balanced"] is False  # one row unaccounted for
    stats[("dead_lettered", "invalid_domain")] = 1
    rec = bsc.build_summary(stats, {"input": "x"})["reconciliation"]
    assert rec == {
        "read": 10,
        "scored": 6,
        "dead_lettered": {"invalid_domain": 1, "malformed_json": 2},
        "filtered": {"header": 1},
        "balanced": True,
    }


# ------------------------------------------------------------------------------------- end to end
def test_tfrecords_and_logs_end_to_end(model, tmp_path):
    spec = model["spec"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    samples = _records(40, seed=1, start=1000)
    good = [spec.to_example(r, roles=("raw", "label", "meta")).SerializeToString() for r in samples]
    missing_user = spec.to_example(samples[0], roles=("raw",))
    del missing_user.features.feature["user_id"]
    _write_tfrecord(
        inputs / "part-0.tfrecord.gz", [*good[:30], missing_user.SerializeToString(), b"\x0a\xff"]
    )
    _write_tfrecord(inputs / "part-1.tfrecord.gz", good[30:], tail=b"\x05\x00\x00")  # a truncated frame
    logged = _records(10, seed=2, start=2000)
    lines = [format_log_line(r, "jsonl") for r in logged[:6]]
    lines += ['{"domain":"rec_drama"', '{"domain":"rec_nope","user_id":"u","item_id":"i"}', ""]
    (inputs / "logs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    csv_lines = [CSV_HEADER, *(format_log_line(r, "csv") for r in logged[6:])]
    csv_lines.append("rec_drama,u1,,m1,T,,1990s,yes,1")
    (inputs / "logs.csv").write_bytes(("\n".join(csv_lines) + "\n").encode() + b"rec_drama,u\xe9,,m1,T,,,,\n")

    out = tmp_path / "scores"
    argv = [
        "--saved_model",
        str(model["path"].parent),
        "--input",
        str(inputs / "*"),
        "--output_dir",
        str(out),
    ]
    # part-1's corrupt frame ends that file: the job scores what it can, then fails (rows may be lost)
    assert (
        bsc.run([*argv, "--key_fields", ",".join(KEYS), "--max_batch_size", "8"], save_main_session=False)
        == 1
    )

    expected = _expected(model, samples + logged)
    rows = _scores(out, ".jsonl")
    assert sorted(r["timestamp"] for r in rows) == sorted(expected)  # every good row scored, once
    for row in rows:
        ctr, gates = expected[row["timestamp"]]
        assert row["ctr"] == pytest.approx(ctr, rel=1e-6)
        np.testing.assert_allclose(
            [[row["gate_weights"][e][a] for a in ASPECTS] for e in ENTITIES],
            gates,
            rtol=1e-6,
        )
    by_ts = {r["timestamp"]: r for r in samples + logged}
    assert all({k: row[k] for k in KEYS} == {k: by_ts[row["timestamp"]][k] for k in KEYS} for row in rows)

    dead = sorted((pathlib.Path(d["file"]).name, d["line"], d["reason"]) for d in _dead(out))
    assert dead == [
        ("logs.csv", 6, "invalid_label"),
        ("logs.csv", 7, "invalid_utf8"),
        ("logs.jsonl", 7, "malformed_json"),
        ("logs.jsonl", 8, "invalid_domain"),
        ("part-0.tfrecord.gz", 31, "invalid_user_id"),
        ("part-0.tfrecord.gz", 32, "malformed_example"),
        ("part-1.tfrecord.gz", 11, "corrupt_tfrecord"),
    ]
    summary = bsc.read_summary(str(out))
    assert summary["model_version"] == 1 and summary["saved_model"].endswith("/toy/1")
    assert summary["reconciliation"] == {
        "read": 32 + 11 + 9 + 7,
        "scored": 50,
        "dead_lettered": {
            "corrupt_tfrecord": 1,
            "invalid_domain": 1,
            "invalid_label": 1,
            "invalid_user_id": 1,
            "invalid_utf8": 1,
            "malformed_example": 1,
            "malformed_json": 1,
        },
        "filtered": {"blank_line": 1, "header": 1},
        "balanced": True,
    }

    # CSV output of the same rows; refuses to overwrite without --overwrite
    with pytest.raises(SystemExit, match="--overwrite"):
        bsc.run(argv, save_main_session=False)
    csv_out = tmp_path / "csv"
    argv_csv = ["--saved_model", str(model["path"]), "--input", str(inputs / "part-0.tfrecord.gz")]
    assert (
        bsc.run([*argv_csv, "--output_dir", str(csv_out), "--output_format", "csv"], save_main_session=False)
        == 0
    )
    lines = _scores(csv_out, ".csv")
    header = ",".join(bsc.csv_columns(bsc.DEFAULT_KEY_FIELDS))
    assert (
        lines.count(header) == len(list(csv_out.glob("scores-*.csv")))
        and len(lines) - lines.count(header) == 30
    )


@pytest.mark.parametrize("compression", ["gz", "bz2"])
def test_truncated_compressed_logs_fail_the_job_and_are_counted(model, tmp_path, compression):
    """A cut .jsonl.gz / .bz2 is read as build_samples reads it (beam_jobs.reading): the rows before the cut
    are scored, the cut is one truncated_input dead letter naming the last good line, the ledger balances
    and the job returns 1 (Beam's own reader ended such a file silently, the lost rows in no count)."""
    import bz2

    rows = T.toy_records(400, 7, "rec_drama")
    records = [{**r, "label": i % 2, "timestamp": 5000 + i} for i, r in enumerate(rows)]
    data = ("\n".join(format_log_line(r, "jsonl") for r in records) + "\n").encode()
    packed = gzip.compress(data) if compression == "gz" else bz2.compress(data)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / f"cut.jsonl.{compression}").write_bytes(packed[: len(packed) // 2])
    (inputs / "whole.jsonl").write_text(format_log_line(records[0], "jsonl") + "\n", encoding="utf-8")
    out = tmp_path / "scores"
    argv = ["--saved_model", str(model["path"]), "--input", str(inputs / "*"), "--output_dir", str(out)]
    assert bsc.run([*argv, "--key_fields", "timestamp"], save_main_session=False) == 1
    (dead,) = _dead(out)
    good = dead["line"] - 1
    assert dead["reason"] == "truncated_input" and dead["file"].endswith(f"cut.jsonl.{compression}")
    assert f"past line {good} (the last good line)" in dead["detail"] and good < 400
    assert len(records) > good > 0 or compression == "bz2"  # bzip2 decodes whole 900 kB blocks: none here
    scored = sorted(row["timestamp"] for row in _scores(out, ".jsonl"))
    assert scored == sorted([r["timestamp"] for r in records[:good]] + [records[0]["timestamp"]])
    assert bsc.read_summary(str(out))["reconciliation"] == {
        "read": good + 1 + 1,
        "scored": good + 1,
        "dead_lettered": {"truncated_input": 1},
        "filtered": {},
        "balanced": True,
    }


def test_truncated_tfrecord_gz_fails_the_job_and_is_counted(model, tmp_path):
    """A .tfrecord.gz cut mid-stream: the records before the cut are scored, the cut is truncated_input."""
    spec = model["spec"]
    records = _records(300, seed=8, start=9000)
    whole = tmp_path / "whole.tfrecord.gz"
    _write_tfrecord(whole, [spec.to_example(r, roles=("raw",)).SerializeToString() for r in records])
    packed = whole.read_bytes()
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "cut.tfrecord.gz").write_bytes(packed[: len(packed) // 2])
    out = tmp_path / "scores"
    argv = ["--saved_model", str(model["path"]), "--input", str(inputs / "*"), "--output_dir", str(out)]
    assert bsc.run(argv, save_main_session=False) == 1
    (dead,) = _dead(out)
    good = dead["line"] - 1
    assert dead["reason"] == "truncated_input" and 0 < good < 300
    assert f"past record {good} (the last good record)" in dead["detail"]
    rec = bsc.read_summary(str(out))["reconciliation"]
    assert (rec["read"], rec["scored"], rec["dead_lettered"], rec["balanced"]) == (
        good + 1,
        good,
        {"truncated_input": 1},
        True,
    )
