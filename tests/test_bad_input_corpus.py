"""The bad-input corpus (tests/bad_inputs) through build_samples, batch_score and the model server.

Each input gets what the table in docs/RELIABILITY.md says: the Beam jobs finish, dead-letter each bad row
with its reason and keep every good row (counts reconcile); the server answers every request with a status
code (OK via OOV for odd-but-valid strings, INVALID_ARGUMENT for malformed examples) and keeps serving.
"""

import json
import pathlib

from beam_jobs import batch_score as bsc
from beam_jobs import build_samples as bs
from beam_jobs import core, reading, sources, vocabularies
from serving import client as client_lib
from serving import config as config_lib
from serving import server as server_lib
from tfsr import layout

import bad_inputs as corpus
import grpc
import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

TEXT_DIM = 16
STRING_FEATURES = ("user_id", "item_id", "query_text", "item_title", "item_genres", "item_decade", "domain")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A toy model exported with the tiny BERT encoder: unseen texts go through real TF Text tokenization."""
    from tfsr.text import export_text_encoder, tiny_text_encoder

    root = tmp_path_factory.mktemp("corpus")
    encoder = tiny_text_encoder(seed=0, dim=TEXT_DIM)
    toy = T.export_toy_model(root, TEXT_DIM, encoder=encoder, export_base="saved", with_text_tables=False)
    encoder_dir = export_text_encoder(encoder, root / "encoder")
    return {"root": root, "spec": toy.spec, "path": toy.path, "encoder_dir": str(encoder_dir)}


def _dead(out: pathlib.Path) -> dict[tuple[str, int], str]:
    rows = [
        json.loads(line) for f in (out / "dead_letters").glob("*.jsonl") for line in f.open(encoding="utf-8")
    ]
    return {(pathlib.Path(d["file"]).name, d["line"]): d["reason"] for d in rows}


def _expected_ledger(cases, outcome) -> tuple[dict, dict, int]:
    dead, filtered, ok = {}, {}, 0
    for case in cases:
        result = outcome(case)
        if result == corpus.OK:
            ok += 1
        elif result.startswith("filtered:"):
            reason = result.split(":", 1)[1]
            filtered[reason] = filtered.get(reason, 0) + 1
        else:
            dead[result] = dead.get(result, 0) + 1
    return dead, filtered, ok


def test_build_samples_on_the_corpus(exported, tmp_path):
    cases = corpus.write_logs(tmp_path / "logs", crashers=True)
    out = tmp_path / "samples"
    code = bs.run(
        [
            "--logs",
            str(tmp_path / "logs" / "*"),
            "--output_dir",
            str(out),
            "--text_encoder_dir",
            exported["encoder_dir"],
        ],
        save_main_session=False,
    )
    assert code == 0
    expected_dead = {
        k: c.expected for k, c in cases.items() if c.expected != corpus.OK and ":" not in c.expected
    }
    assert _dead(out) == expected_dead
    dead, filtered, ok = _expected_ledger(cases.values(), lambda c: c.expected)
    ledger = layout.read_manifest(out)["reconciliation"]["rows"]["logs"]
    assert ledger == {
        "read": len(cases),
        "used": ok,
        "dead_lettered": dead,
        "filtered": filtered,
        "balanced": True,
    }
    written = sum(
        1
        for split in layout.SPLITS
        for f in out.glob(f"{split}/part-*")
        for _ in tf.data.TFRecordDataset(str(f), compression_type="GZIP")
    )
    assert written == ok  # every good row is kept (all corpus domains are warm: nothing filtered)
    assert list(tmp_path.glob("samples.incomplete-*")) == []  # the staging directory was moved into place
    for (
        feature
    ) in vocabularies.VOCAB_FEATURES:  # every vocabulary line is one value: sizes match the manifest
        values = layout.read_vocab(out, feature)
        assert len(values) == len(set(values)) == layout.read_manifest(out)["vocab_sizes"][feature]


def _good_jsonl_rows(n: int) -> list[bytes]:
    row = '{"domain":"rec_drama","user_id":"u%d","item_id":"m%d","item_title":"Movie %d","label":%d,"timestamp":%d}'
    return [(row % (i, i % 7, i % 7, i % 2, 1000 + i)).encode() for i in range(n)]


@pytest.mark.parametrize("compression", ["gz", "bz2"])
def test_build_samples_fails_loudly_on_a_truncated_compressed_file(exported, tmp_path, compression):
    """A cut .gz / .bz2 is a dead letter naming the file and the last good line; the job returns 1 and the
    output directory is not created (the incomplete output is kept aside, its ledger still balanced)."""
    import bz2
    import gzip

    data = b"\n".join(_good_jsonl_rows(400)) + b"\n"
    packed = gzip.compress(data) if compression == "gz" else bz2.compress(data)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / f"cut.jsonl.{compression}").write_bytes(packed[: len(packed) // 2])
    (logs / "whole.jsonl").write_bytes(b"\n".join(_good_jsonl_rows(10)) + b"\n")
    out = tmp_path / "samples"
    argv = [
        "--logs",
        str(logs / "*"),
        "--output_dir",
        str(out),
        "--text_encoder_dir",
        exported["encoder_dir"],
    ]
    assert bs.run(argv, save_main_session=False) == 1
    assert not out.exists()
    (staging,) = tmp_path.glob("samples.incomplete-*")
    dead = [json.loads(line) for f in (staging / "dead_letters").glob("*.jsonl") for line in f.open()]
    assert [d["reason"] for d in dead] == ["truncated_input"]
    good_lines = dead[0]["line"] - 1
    assert good_lines < 400 and f"cut.jsonl.{compression}" in dead[0]["file"]
    assert f"past line {good_lines} (the last good line)" in dead[0]["detail"]
    ledger = layout.read_manifest(staging)["reconciliation"]["rows"]["logs"]
    assert ledger == {
        "read": good_lines + 1 + 10,
        "used": good_lines + 10,
        "dead_lettered": {"truncated_input": 1},
        "filtered": {},
        "balanced": True,
    }


@pytest.mark.parametrize("compression", ["gz", "bz2"])
def test_reader_names_the_file_and_last_good_line_of_a_truncated_file(tmp_path, compression):
    import bz2
    import gzip

    data = b"\n".join(_good_jsonl_rows(400)) + b"\n"
    packed = gzip.compress(data) if compression == "gz" else bz2.compress(data)
    path = tmp_path / f"cut.jsonl.{compression}"
    path.write_bytes(packed[: len(packed) // 2])
    out = list(sources._NumberedLinesFn("logs", lambda _path: None).process(str(path)))
    rows, (last,) = out[:-1], out[-1:]
    assert [ref.line for ref, _ in rows] == list(range(1, len(rows) + 1)) and len(rows) < 400
    assert len(rows) > 0 or compression == "bz2"  # bzip2 decodes whole 900 kB blocks: none here
    assert [raw for _, raw in rows] == _good_jsonl_rows(len(rows))  # every row before the cut is intact
    assert last.tag == reading.DEAD and last.value["reason"] == "truncated_input"
    assert last.value["line"] == len(rows) + 1 and last.value["file"] == str(path)
    assert f"past line {len(rows)} (the last good line)" in last.value["detail"]
    whole = tmp_path / f"whole.jsonl.{compression}"
    whole.write_bytes(packed)
    assert [raw for _, raw in sources._NumberedLinesFn("logs", lambda _path: None).process(str(whole))] == (
        _good_jsonl_rows(400)
    )


def test_build_samples_row_exception_is_a_dead_letter_not_a_crash():
    """Any unexpected exception of a row function becomes a `row_exception` dead letter."""

    def explode(value):
        raise KeyError(value)

    ref = reading.LineRef("logs", "f.jsonl", 3, "raw")
    (out,) = list(core.RowStep(explode, "logs").process((ref, "x")))
    assert out.tag == reading.DEAD
    assert (out.value["reason"], out.value["line"], out.value["detail"]) == (
        "row_exception",
        3,
        "KeyError: 'x'",
    )


LINE_BREAKERS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\t"]


def test_vocabularies_read_back_as_written(tmp_path):
    """Ids holding a control character or line break are refused; every id accepted is one vocabulary
    line, so the nastiest strings that pass read back exactly as written (order and count)."""
    from tfsr.contract import RowError
    from tfsr.datasets.movielens import MOVIELENS_DOMAINS
    from tfsr.features import FeatureSpec

    spec = FeatureSpec.default(MOVIELENS_DOMAINS)
    candidates = [*corpus.adversarial_strings().values(), "a\u00a0b", "\u200b", "x\ufeff", "\U0001f600\u200d"]
    candidates += [f"a{c}b" for c in LINE_BREAKERS] + [f"ab{c}" for c in LINE_BREAKERS]
    kept = []
    for text in candidates:
        try:
            spec.validate({"domain": "rec_drama", "user_id": text, "item_id": "m"}, roles=("raw",))
        except RowError as err:
            assert err.field == "user_id" and "control character or line break" in err.problem
            continue
        assert not any(c in text for c in LINE_BREAKERS)
        if text:
            kept.append(text)
    assert len(kept) >= 15  # real strings are checked, not an empty list
    entries = [(len(kept) - i, text) for i, text in enumerate(dict.fromkeys(kept))]
    (tmp_path / "vocab").mkdir()
    list(vocabularies._WriteVocabFn(str(tmp_path)).process(("user_id", entries)))
    assert layout.read_vocab(tmp_path, "user_id") == [text for _, text in entries]


def test_batch_score_on_the_corpus_including_crashers(exported, tmp_path):
    cases = corpus.write_logs(tmp_path / "logs", crashers=True)
    out = tmp_path / "scores"
    argv = [
        "--saved_model",
        str(exported["path"]),
        "--input",
        str(tmp_path / "logs" / "*"),
        "--output_dir",
        str(out),
    ]
    assert bsc.run(argv, save_main_session=False) == 0
    expected_dead = {
        k: c.scoring for k, c in cases.items() if c.scoring != corpus.OK and ":" not in c.scoring
    }
    assert _dead(out) == expected_dead
    dead, filtered, ok = _expected_ledger(cases.values(), lambda c: c.scoring)
    rec = bsc.read_summary(str(out))["reconciliation"]
    assert rec == {
        "read": len(cases),
        "scored": ok,
        "dead_lettered": dead,
        "filtered": filtered,
        "balanced": True,
    }
    scores = [json.loads(line) for f in out.glob("scores-*.jsonl") for line in f.open(encoding="utf-8")]
    assert len(scores) == ok and all(0.0 < s["ctr"] < 1.0 for s in scores)


def test_build_samples_parser_turns_crashers_into_row_errors(exported):
    from tfsr.contract import RowError
    from tfsr.datasets.logs import parse_log_line

    for line in corpus.crasher_lines():
        with pytest.raises(RowError):
            record = parse_log_line(line, "jsonl", exported["spec"])
            exported["spec"].to_example(record, roles=("raw", "label", "meta"))


# ------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def server(exported):
    srv = server_lib.ModelServer(
        [config_lib.ModelConfig("toy", str(exported["path"].parent))], port=0, poll_wait_s=0, num_threads=4
    ).start()
    srv.wait_until_available("toy")
    client = client_lib.ScoringClient(srv.target, "toy", deadline_s=30.0)
    yield client
    client.close()
    srv.stop(grace_s=1.0)


def _base(domain="search_tags") -> dict:
    return {**T.toy_records(1, seed=4, domain=domain)[0], "item_genres": ["Drama"]}


def _predict(client, serialized: list[bytes]):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.model_spec.signature_name = "serving_default"
    request.inputs["examples"].CopyFrom(client_lib.string_tensor_proto(serialized))
    return client.stub.Predict(request, timeout=30)


def _code(client, serialized: list[bytes]) -> grpc.StatusCode:
    try:
        response = _predict(client, serialized)
    except grpc.RpcError as err:
        return err.code()
    ctr = tf.make_ndarray(response.outputs["ctr"])
    assert np.all(np.isfinite(ctr)) and np.all((ctr > 0) & (ctr < 1)), ctr
    return grpc.StatusCode.OK


def _example(record: dict, raw_bytes: dict | None = None) -> bytes:
    example = client_lib.make_example(record)
    for name, value in (raw_bytes or {}).items():
        example.features.feature[name].bytes_list.value[:] = [value]
    return example.SerializeToString()


def test_server_odd_but_valid_strings_are_ok_via_oov(server):
    outcomes = {}
    for name, text in corpus.adversarial_strings().items():
        for feature in STRING_FEATURES:
            record = _base()
            record[feature] = [text] if feature == "item_genres" else text
            if feature == "query_text":
                record["query_id"] = text
            outcomes[(name, feature)] = _code(server, [_example(record)])
    assert {k: v for k, v in outcomes.items() if v != grpc.StatusCode.OK} == {}
    assert _code(server, [_example(_base())]) == grpc.StatusCode.OK


def test_server_wrong_encodings_inside_examples_are_ok(server):
    outcomes = {}
    for name, raw in corpus.WRONG_ENCODINGS.items():
        for feature in ("user_id", "query_text", "item_title", "item_genres"):
            outcomes[(name, feature)] = _code(server, [_example(_base(), {feature: raw})])
    assert {k: v for k, v in outcomes.items() if v != grpc.StatusCode.OK} == {}


def test_server_huge_fields(server):
    assert _code(server, [_example({**_base(), "item_title": "t" * corpus.HUGE})]) == grpc.StatusCode.OK
    assert _code(server, [_example({**_base(), "query_text": "q " * 50_000})]) == grpc.StatusCode.OK
    too_big = _example({**_base(), "item_title": "t" * (5 * corpus.HUGE)})
    assert _code(server, [too_big]) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_server_malformed_examples_are_invalid_argument(server):
    good = _example(_base())
    missing = _base()
    del missing["user_id"]
    cases = {
        "not a proto": b"\xff\x00 not a proto \x13",
        "truncated proto": good[: len(good) // 2],
        "empty bytes (no features)": b"",
        "required feature missing": _example(missing),
        "user_id as int64": _example({**_base(), "user_id": 42}),
        "item_id as float": _example({**_base(), "item_id": 1.5}),
        "two values for a scalar": _example({**_base(), "user_id": ["a", "b"]}),
    }
    outcomes = {name: _code(server, [payload]) for name, payload in cases.items()}
    assert outcomes == dict.fromkeys(cases, grpc.StatusCode.INVALID_ARGUMENT)
    # one malformed example fails its whole request (tf.io.parse_example), and the server keeps serving
    assert _code(server, [good, cases["not a proto"]]) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(server, [good] * 3) == grpc.StatusCode.OK
    assert server.status()[0]["state"] == "AVAILABLE"


def test_server_on_the_corpus_log_rows(server):
    """Each corpus JSONL row that is a JSON object, sent as an Example of its raw features (types inferred)."""
    outcomes = {}
    for case in corpus.LOG_CASES:
        if not case.file.endswith(".jsonl"):
            continue
        line = (corpus.CORPUS_DIR / case.file).read_bytes().split(b"\n")[case.line - 1]
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # invalid UTF-8, malformed JSON, a 5,000-digit integer
            continue  # not meaningful as an Example
        if not isinstance(record, dict):
            continue
        record = {
            k: v for k, v in record.items() if k not in ("label", "timestamp", "price") and v is not None
        }
        record.setdefault("query_id", record.get("query_text", ""))
        try:
            serialized = _example(record)
        except ValueError:
            outcomes[case.line] = "client refuses"  # e.g. item_genres [1] mixes types for the client
            continue
        outcomes[case.line] = _code(server, [serialized]).name
    print(json.dumps(outcomes))
    assert set(outcomes.values()) <= {"OK", "INVALID_ARGUMENT", "client refuses"}
    assert _code(server, [_example(_base())]) == grpc.StatusCode.OK


# --------------------------------------------------------------------------- retrieval signatures
RETRIEVAL_ITEMS = 12
RETRIEVAL_CONTEXT = {"domain": "rec_drama", "user_id": "u1", "query_id": "", "query_text": ""}


@pytest.fixture(scope="module")
def retrieval_server(tmp_path_factory):
    """A toy ranker plus an untrained warm-only retrieval model over a 12-item catalogue (tiny BERT encoder:
    unseen query texts go through the real TF Text tokenization in the graph)."""
    from tfsr.text import tiny_text_encoder

    root = tmp_path_factory.mktemp("corpus_retrieval")
    encoder = tiny_text_encoder(seed=0, dim=TEXT_DIM)
    toy = T.export_toy_model(root, TEXT_DIM, encoder=encoder, retrieval_items=RETRIEVAL_ITEMS)
    srv = server_lib.ModelServer(
        [config_lib.ModelConfig("toy", str(toy.path.parent))], port=0, poll_wait_s=0, num_threads=4
    ).start()
    srv.wait_until_available("toy")
    client = client_lib.ScoringClient(srv.target, "toy", deadline_s=30.0)
    yield client
    client.close()
    srv.stop(grace_s=1.0)


def _retrieval_code(client, request) -> grpc.StatusCode:
    try:
        response = client.predict(request)
    except grpc.RpcError as err:
        return err.code()
    for name in ("scores", "ctr", "retrieval_scores"):
        if name in response.outputs:
            assert np.all(np.isfinite(tf.make_ndarray(response.outputs[name])))
    return grpc.StatusCode.OK


def _retrieval_request(client, context: dict, k: int = 5, signature: str = "retrieve_and_rank", raw=None):
    request = client.retrieval_request([context], k, signature)
    for name, value in (raw or {}).items():
        request.inputs[name].CopyFrom(client_lib.string_tensor_proto([value]))
    return request


def test_server_retrieval_odd_strings_unknown_users_and_empty_queries(retrieval_server):
    client = retrieval_server
    outcomes = {}
    for name, text in corpus.adversarial_strings().items():
        for feature in ("user_id", "query_text", "domain"):
            context = {**RETRIEVAL_CONTEXT, "domain": "search_tags", feature: text}
            if feature == "query_text":
                context["query_id"] = text
            outcomes[(name, feature)] = _retrieval_code(client, _retrieval_request(client, context))
    for name, raw in corpus.WRONG_ENCODINGS.items():
        for feature in ("user_id", "query_text"):
            request = _retrieval_request(
                client, {**RETRIEVAL_CONTEXT, "domain": "search_tags"}, raw={feature: raw}
            )
            outcomes[(name, feature)] = _retrieval_code(client, request)
    # the retrieval model has no OOV domain: every string that is not one of its domains is refused
    expected = {
        key: grpc.StatusCode.INVALID_ARGUMENT if key[1] == "domain" else grpc.StatusCode.OK
        for key in outcomes
    }
    assert outcomes == expected

    # an unknown user is the OOV user: a defined answer, the same for every unknown user
    strangers = [client.retrieve({**RETRIEVAL_CONTEXT, "user_id": u}, 5) for u in ("nobody", "no_one_else")]
    assert strangers[0] == strangers[1] and len(strangers[0]) == 5
    # an empty query in a search domain is a recommendation-like context (the query entity is missing)
    empty = client.retrieve_and_rank({**RETRIEVAL_CONTEXT, "domain": "search_tags"}, 5)
    assert len(empty) == 5 and all(0 < r["ctr"] < 1 for r in empty)
    # k over the catalogue: the whole catalogue, best first
    everything = client.retrieve(RETRIEVAL_CONTEXT, 10 * RETRIEVAL_ITEMS)
    assert len(everything) == RETRIEVAL_ITEMS == len({r["item_id"] for r in everything})
    assert [r["score"] for r in everything] == sorted((r["score"] for r in everything), reverse=True)
    huge = {**RETRIEVAL_CONTEXT, "domain": "search_tags", "query_text": "q " * 50_000, "query_id": "q"}
    assert _retrieval_code(client, _retrieval_request(client, huge)) == grpc.StatusCode.OK


def test_server_retrieval_malformed_requests_are_invalid_argument(retrieval_server):
    client = retrieval_server
    missing = _retrieval_request(client, RETRIEVAL_CONTEXT)
    del missing.inputs["user_id"]
    k_int64 = _retrieval_request(client, RETRIEVAL_CONTEXT, signature="retrieve")
    k_int64.inputs["k"].CopyFrom(tf.make_tensor_proto(5, dtype=tf.int64))
    k_vector = _retrieval_request(client, RETRIEVAL_CONTEXT)
    k_vector.inputs["k"].CopyFrom(tf.make_tensor_proto([5, 5], dtype=tf.int32))
    no_k = _retrieval_request(client, RETRIEVAL_CONTEXT)
    del no_k.inputs["k"]
    domain_int = _retrieval_request(client, RETRIEVAL_CONTEXT)
    domain_int.inputs["domain"].CopyFrom(tf.make_tensor_proto([3], dtype=tf.int64))
    cases = {
        "unknown domain": _retrieval_request(client, {**RETRIEVAL_CONTEXT, "domain": "rec_nonexistent"}),
        "cold-start domain the retrieval model lacks": _retrieval_request(
            client, {**RETRIEVAL_CONTEXT, "domain": "rec_children"}
        ),
        "k = 0": _retrieval_request(client, RETRIEVAL_CONTEXT, k=0),
        "k < 0": _retrieval_request(client, RETRIEVAL_CONTEXT, k=-7, signature="retrieve"),
        "missing user_id": missing,
        "missing k": no_k,
        "k as int64": k_int64,
        "k as a vector": k_vector,
        "domain as int64": domain_int,
    }
    outcomes = {}
    for name, request in cases.items():
        outcomes[name] = _retrieval_code(client, request)
        assert len(client.retrieve_and_rank(RETRIEVAL_CONTEXT, 3)) == 3  # the next good request is answered
    assert outcomes == dict.fromkeys(cases, grpc.StatusCode.INVALID_ARGUMENT)
    assert client.status()[0]["state"] == "AVAILABLE"
