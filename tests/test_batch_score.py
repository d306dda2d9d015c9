"""beam_jobs.batch_score: row parsing, the SavedModel handler, and end-to-end runs over TFRecords and logs."""

import gzip
import json
import pathlib

import tfsr  # noqa: F401  (Keras 2 before TensorFlow)
from beam_jobs import batch_score as bsc
from beam_jobs.reading import LineRef
from tfsr import layout
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


# ---------------------------------------------------------------------------------- batch retrieval
ITEMS = 30
CONTEXT_INPUTS = ("domain", "user_id", "query_id", "query_text")


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    """A small export with the `retrieve` signature: an untrained retrieval model that knows the warm domains
    only (not rec_children), over a catalogue of 30 items."""
    root = tmp_path_factory.mktemp("batch_retrieve")
    toy = T.export_toy_model(root, TEXT_DIM, export_base="saved", retrieval_items=ITEMS)
    return {"toy": toy, "loaded": tf.saved_model.load(str(toy.path))}


def _direct_top_k(retrieval, contexts, k) -> list[tuple[list[str], np.ndarray]]:
    """The `retrieve` signature called directly on `contexts` (missing query features: empty)."""
    inputs = {name: tf.constant([c.get(name, "") for c in contexts]) for name in CONTEXT_INPUTS}
    out = retrieval["loaded"].signatures["retrieve"](**inputs, k=tf.constant(k, tf.int32))
    ids, scores = out["item_ids"].numpy(), out["scores"].numpy()
    return [([i.decode() for i in row], s) for row, s in zip(ids, scores, strict=True)]


def _retrieved(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for f in sorted(out.glob("retrieved-*.jsonl")) for line in f.open()]


def _assert_rows_equal_direct(retrieval, rows, contexts, k):
    expected = dict(
        zip(
            [(c["domain"], c["user_id"]) for c in contexts],
            _direct_top_k(retrieval, contexts, k),
            strict=True,
        )
    )
    assert sorted((r["domain"], r["user_id"]) for r in rows) == sorted(expected)  # one row per context
    for row in rows:
        items, scores = expected[(row["domain"], row["user_id"])]
        assert row["items"] == items, row
        np.testing.assert_allclose(row["scores"], scores, rtol=1e-5, atol=1e-6)


def test_parse_context_rows_and_the_domain_filter():
    spec = bsc.context_spec(T.toy_spec(TEXT_DIM))
    assert "item_id" not in spec and {"domain", "user_id", "query_text", "label", "timestamp"} <= {
        f.name for f in spec.features
    }
    row = bsc.parse_context_row(
        b'{"domain":"search_tags","user_id":"u1","query_text":" Space  Movie"}', "jsonl", spec
    )
    assert (row["query_id"], row["query_text"], "item_id" in row) == ("space movie", " Space  Movie", False)
    csv_row = bsc.parse_context_row(b"rec_drama,u2,,,,,,,7", "csv", spec)  # a log row, item columns empty
    assert (csv_row["domain"], csv_row["user_id"], csv_row["timestamp"]) == ("rec_drama", "u2", 7)
    sample = {**T.toy_records(1)[0], "label": 1}
    example = T.toy_spec(TEXT_DIM).to_example(sample, roles=("raw", "label", "meta")).SerializeToString()
    assert bsc.parse_context_row(example, bsc.TFRECORD, spec)["query_id"] == sample["query_id"]
    assert bsc.parse_context_row(b"u9", bsc.USER_VOCAB, spec, "rec_action")["domain"] == "rec_action"
    for raw, fmt, reason in [
        (b'{"domain":"rec_nope","user_id":"u"}', "jsonl", "invalid_domain"),
        (b'{"domain":"rec_drama"}', "jsonl", "invalid_user_id"),
        (b'{"domain":"rec_drama","user_id":"u","query":"x"}', "jsonl", "unknown_column"),
        (b"u\xff", bsc.USER_VOCAB, "invalid_utf8"),
    ]:
        with pytest.raises(RowError) as err:
            bsc.parse_context_row(raw, fmt, spec, "rec_drama")
        assert err.value.reason == reason, err.value.detail

    rows = [
        (LineRef("logs", "c.jsonl", 1, ""), ("jsonl", b'{"domain":"rec_drama","user_id":"u1"}')),
        (LineRef("logs", "c.jsonl", 2, ""), ("jsonl", b'{"domain":"rec_action","user_id":"u2"}')),
        (LineRef("logs", "c.jsonl", 3, ""), ("jsonl", b'{"domain":"rec_drama"}')),
    ]
    with test_pipeline.TestPipeline() as p:
        parsed = (
            p
            | beam.Create(rows)
            | beam.ParDo(
                bsc._ParseContextFn(T.toy_spec(TEXT_DIM), ("user_id",), "rec_drama", keep_domain=True)
            ).with_outputs(bsc.FILTERED, bsc.DEAD, main="rows")
        )
        kept = parsed.rows | "Kept" >> beam.Map(lambda kv: (kv[0][0].line, kv[0][1], sorted(kv[1])))
        filtered = parsed[bsc.FILTERED] | "Filtered" >> beam.Map(lambda f: (f[0].line, f[1]))
        dead = parsed[bsc.DEAD] | "Dead" >> beam.Map(lambda d: (d["line"], d["reason"]))
        assert_that(kept, equal_to([(1, ("u1",), sorted(CONTEXT_INPUTS))]), label="CheckKept")
        assert_that(filtered, equal_to([(2, "other_domain")]), label="CheckFiltered")
        assert_that(dead, equal_to([(3, "invalid_user_id")]), label="CheckDead")
    row = {"domain": "rec_drama", "user_id": "u,1", "items": ["m1", "m2"], "scores": [0.5, -1.0]}
    assert bsc.format_retrieved(row, "csv", ["domain", "user_id"]) == 'rec_drama,"u,1",m1|m2,0.5|-1.0'


def test_retrieve_handler_runs_a_failing_batch_row_by_row(retrieval):
    handler = bsc.RetrieveHandler(str(retrieval["toy"].path), k=4)
    good = [
        {"domain": "rec_drama", "user_id": "u2", "query_id": "", "query_text": ""},
        {"domain": "search_tags", "user_id": "u3", "query_id": "space", "query_text": "space"},
    ]
    unknown = {**good[0], "domain": "rec_children"}  # in the spec, unknown to the warm-only retrieval model
    results = list(handler.run_inference([good[0], unknown, good[1]], retrieval["loaded"]))
    assert [r.inference is None for r in results] == [False, True, False]
    assert "InvalidArgumentError" in results[1].model_id and "unknown domain" in results[1].model_id
    for result, (items, scores) in zip(
        [results[0], results[2]], _direct_top_k(retrieval, good, 4), strict=True
    ):
        assert result.inference["items"] == items
        np.testing.assert_allclose(result.inference["scores"], scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        bsc.RetrieveHandler(str(retrieval["toy"].path), k=0)


def test_retrieval_for_every_user_of_a_domain(retrieval, tmp_path):
    """--users_from: one row per user of the vocabulary, each the retrieve signature's own top-K; K larger
    than the catalogue returns the whole catalogue, best first."""
    toy = retrieval["toy"]
    out = tmp_path / "top"
    argv = ["--saved_model", str(toy.path.parent), "--retrieve_top_k", "1000", "--domain", "rec_drama"]
    argv += ["--users_from", str(toy.samples_dir), "--output_dir", str(out), "--max_batch_size", "8"]
    assert bsc.run(argv, save_main_session=False) == 0
    users = layout.read_vocab(toy.samples_dir, "user_id")
    rows = _retrieved(out)
    assert all(set(r) == {"domain", "user_id", "items", "scores"} for r in rows)
    assert all(len(r["items"]) == ITEMS and r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    _assert_rows_equal_direct(retrieval, rows, [{"domain": "rec_drama", "user_id": u} for u in users], 1000)
    summary = bsc.read_summary(str(out))
    assert summary["retrieval"]["items_per_row"] == ITEMS and summary["retrieval"]["k"] == 1000
    assert summary["reconciliation"] == {
        "read": len(users),
        "scored": len(users),
        "dead_lettered": {},
        "filtered": {},
        "balanced": True,
    }


def test_retrieval_of_input_contexts_dead_letters_an_unknown_domain(retrieval, tmp_path):
    """--input contexts (JSONL and TFRecord samples): each good context gets the signature's top-K; a domain
    the retrieval model does not know fails its batch, which goes row by row: only that row is a dead letter
    naming the domain, and read = retrieved + dead-lettered + filtered."""
    toy, spec = retrieval["toy"], retrieval["toy"].spec
    inputs = tmp_path / "in"
    inputs.mkdir()
    contexts = [
        {"domain": "search_tags", "user_id": "u3", "query_text": "space"},
        {"domain": "search_tags", "user_id": "u7", "query_text": "Robots in  Love"},
        {"domain": "rec_children", "user_id": "u1"},  # known to the spec, not to the retrieval model
        {"domain": "rec_drama", "user_id": "u2"},
        {"domain": "rec_action", "user_id": "never_seen_user"},
    ]
    lines = [json.dumps(c) for c in contexts]
    lines += ['{"domain":"no_such_domain","user_id":"u1"}', '{"domain":', ""]
    (inputs / "contexts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples = [{**r, "label": 1} for r in T.toy_records(2, seed=4, domain="rec_comedy")]
    _write_tfrecord(
        inputs / "samples.tfrecord.gz",
        [spec.to_example(r, roles=("raw", "label", "meta")).SerializeToString() for r in samples],
    )
    out = tmp_path / "top"
    argv = ["--saved_model", str(toy.path), "--retrieve_top_k", "5", "--input", str(inputs / "*")]
    assert bsc.run([*argv, "--output_dir", str(out), "--max_batch_size", "4"], save_main_session=False) == 0

    good = [
        {**c, "query_id": normalize_query(c.get("query_text", ""))}
        for c in contexts
        if c["domain"] != "rec_children"
    ]
    good += [{name: s[name] for name in CONTEXT_INPUTS} for s in samples]
    rows = _retrieved(out)
    assert all(
        len(r["items"]) == 5 and set(r) == {"domain", "user_id", "query_text", "items", "scores"}
        for r in rows
    )
    _assert_rows_equal_direct(retrieval, rows, good, 5)
    dead = sorted((pathlib.Path(d["file"]).name, d["line"], d["reason"]) for d in _dead(out))
    assert dead == [
        ("contexts.jsonl", 3, "unknown_domain"),
        ("contexts.jsonl", 6, "invalid_domain"),
        ("contexts.jsonl", 7, "malformed_json"),
    ]
    (unknown,) = [d for d in _dead(out) if d["reason"] == "unknown_domain"]
    assert "'rec_children'" in unknown["detail"] and "InvalidArgumentError" in unknown["detail"]
    assert bsc.read_summary(str(out))["reconciliation"] == {
        "read": 8 + 2,
        "scored": 4 + 2,
        "dead_lettered": {"invalid_domain": 1, "malformed_json": 1, "unknown_domain": 1},
        "filtered": {"blank_line": 1},
        "balanced": True,
    }


def test_retrieval_usage_errors_come_before_the_pipeline(retrieval, tmp_path):
    toy = retrieval["toy"]
    contexts = tmp_path / "contexts.jsonl"
    contexts.write_text('{"domain":"rec_drama","user_id":"u1"}\n', encoding="utf-8")
    base = ["--saved_model", str(toy.path), "--output_dir", str(tmp_path / "out")]
    users = ["--users_from", str(toy.samples_dir)]
    cases = [
        (["--retrieve_top_k", "0", "--input", str(contexts)], "positive number of items, got 0"),
        (["--retrieve_top_k", "-3", *users, "--domain", "rec_drama"], "positive number of items, got -3"),
        (["--retrieve_top_k", "5", *users], "--users_from needs --domain"),
        (["--retrieve_top_k", "5", *users, "--input", str(contexts), "--domain", "rec_drama"], "exactly one"),
        (["--retrieve_top_k", "5"], "exactly one"),
        (["--retrieve_top_k", "5", *users, "--domain", "rec_children"], "the retrieval model knows only"),
        (["--retrieve_top_k", "5", *users, "--domain", "rec_nope"], "not a domain of the export"),
        (["--retrieve_top_k", "5", "--input", str(contexts), "--key_fields", "user_id,item_id"], "item_id"),
        (["--input", str(contexts), *users], "--users_from is for batch retrieval"),
        (
            ["--retrieve_top_k", "5", "--users_from", str(tmp_path), "--domain", "rec_drama"],
            "no user vocabulary",
        ),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            bsc.run([*base, *args], save_main_session=False)
    # an export without a retrieval model (only its tfsr_export.json is read before the pipeline)
    ranker_only = tmp_path / "ranker_only" / "1"
    (ranker_only / "assets.extra").mkdir(parents=True)
    (ranker_only / "saved_model.pb").write_bytes(b"")
    info = json.loads((toy.path / bsc.EXPORT_INFO).read_text())
    info["signatures"] = {k: v for k, v in info["signatures"].items() if not k.startswith("retrieve")}
    del info["retrieval"]
    (ranker_only / bsc.EXPORT_INFO).write_text(json.dumps(info))
    no_retrieve = ["--saved_model", str(ranker_only), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="has no 'retrieve' signature"):
        bsc.run([*no_retrieve, "--retrieve_top_k", "5", "--input", str(contexts)], save_main_session=False)
    assert not (tmp_path / "out").exists()
