"""tfsr.export with a retrieval model: the `retrieve` and `retrieve_and_rank` signatures (issue 15).

A toy catalogue of 30 items, an untrained `tfsr.models.RetrievalModel` that knows the warm domains only, and
the contract ranker of `serving_doubles`: top-K against numpy brute force over the same model's catalogue
embeddings, K clamped to the catalogue, errors, the ranker's own CTR on the same (context, item) rows, the
op allow-list, and a round trip through the gRPC server and `tfsr score --retrieve`.
"""

import json
import urllib.error
import urllib.request

import tfsr.export as export
from serving import client as client_lib
from serving import config as config_lib
from serving import server as server_lib
from tfsr.training.retrieval import embed_catalogue

import grpc
import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

TEXT_DIM = 16
ITEMS = 30
CONTEXT_INPUTS = {"domain", "user_id", "query_id", "query_text"}
CONTEXTS = [
    {"domain": "search_tags", "user_id": "u3", "query_id": "space", "query_text": "space"},  # in the table
    {
        "domain": "search_tags",
        "user_id": "u7",
        "query_id": "robots",
        "query_text": "robots in love",
    },  # encoder
    {"domain": "search_tags", "user_id": "u1", "query_id": "", "query_text": ""},  # empty query: rec-like
    {"domain": "rec_drama", "user_id": "u2", "query_id": "", "query_text": ""},
    {"domain": "rec_action", "user_id": "never_seen_user", "query_id": "", "query_text": ""},  # OOV user
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_retrieval")
    toy = T.export_toy_model(root, TEXT_DIM, retrieval_items=ITEMS)
    return {"toy": toy, "loaded": tf.saved_model.load(str(toy.path))}


def _inputs(contexts, k) -> dict:
    out = {name: tf.constant([c[name] for c in contexts]) for name in CONTEXT_INPUTS}
    out["k"] = tf.constant(k, tf.int32)
    return out


def _context_embeddings(toy, contexts) -> np.ndarray:
    """The retrieval model's context tower called in Python (query text through the encoder, zeros if empty)."""
    queries = tf.constant([c["query_text"] for c in contexts])
    text = toy.encoder(queries) * tf.cast(tf.strings.length(queries) > 0, tf.float32)[:, None]
    features = {name: tf.constant([c[name] for c in contexts]) for name in ("domain", "user_id", "query_id")}
    features["query_text_embedding"] = text
    return toy.retrieval_model.context_embeddings(features).numpy()


def test_signatures_inputs_outputs_info_and_warmup(exported):
    toy, sigs = exported["toy"], exported["loaded"].signatures
    assert set(sigs) == {"serving_default", "predict_raw", "classify", "retrieve", "retrieve_and_rank"}
    for name, outputs in (
        ("retrieve", {"item_ids", "scores"}),
        ("retrieve_and_rank", {"item_ids", "ctr", "retrieval_scores", "gate_weights"}),
    ):
        inputs = sigs[name].structured_input_signature[1]
        assert set(inputs) == CONTEXT_INPUTS | {"k"}
        assert inputs["k"].shape.rank == 0 and inputs["k"].dtype == tf.int32
        assert all(
            inputs[n].shape.as_list() == [None] and inputs[n].dtype == tf.string for n in CONTEXT_INPUTS
        )
        assert set(sigs[name].structured_outputs) == outputs
    assert sigs["retrieve_and_rank"].structured_outputs["gate_weights"].shape.as_list() == [None, None, 3, 3]

    info = json.loads((toy.path / "assets.extra" / export.EXPORT_INFO_FILE).read_text())
    assert info["signatures"]["retrieve"] == info["signatures"]["retrieve_and_rank"] == export.PREDICT_METHOD
    assert info["retrieval"]["catalogue_items"] == ITEMS and info["retrieval"]["model_type"] == "retrieval"
    assert "rec_children" not in info["retrieval"]["retrieve_domains"]  # the retrieval model is warm-only

    assert info["retrieval"]["retrieve_and_rank_domains"] == info["retrieval"]["retrieve_domains"]
    records = list(tf.data.TFRecordDataset(str(toy.path / "assets.extra" / export.WARMUP_FILE)))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request for r in records]
    # no warmup for the retrieval signatures: the stock server's batching refuses their scalar k
    assert [r.model_spec.signature_name for r in logs] == ["serving_default", "serving_default"]


def test_retrieve_equals_numpy_brute_force_over_the_catalogue(exported):
    toy = exported["toy"]
    catalogue = embed_catalogue(toy.retrieval_model, toy.samples_dir, toy.spec)
    assert len(catalogue.ids) == ITEMS
    expected_scores = _context_embeddings(toy, CONTEXTS) @ catalogue.embeddings.T
    k = 7
    got = exported["loaded"].signatures["retrieve"](**_inputs(CONTEXTS, k))
    assert got["item_ids"].shape == (len(CONTEXTS), k) and got["scores"].dtype == tf.float32
    order = np.argsort(-expected_scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got["item_ids"].numpy(), catalogue.ids[order])
    np.testing.assert_allclose(
        got["scores"].numpy(), np.take_along_axis(expected_scores, order, axis=1), rtol=1e-5, atol=1e-5
    )
    assert np.all(np.diff(got["scores"].numpy(), axis=1) <= 0)  # best first


def test_k_is_clamped_to_the_catalogue_and_bad_requests_fail(exported):
    retrieve = exported["loaded"].signatures["retrieve"]
    got = retrieve(**_inputs(CONTEXTS[:2], 1000))
    assert got["item_ids"].shape == (2, ITEMS)
    assert sorted(got["item_ids"].numpy()[0].tolist()) == sorted(
        f"m{i}".encode() for i in range(1, ITEMS + 1)
    )
    rank = exported["loaded"].signatures["retrieve_and_rank"](**_inputs(CONTEXTS[:1], ITEMS + 1))
    assert rank["ctr"].shape == (1, ITEMS)
    for k in (0, -3):
        with pytest.raises(tf.errors.InvalidArgumentError, match="k must be a positive"):
            retrieve(**_inputs(CONTEXTS[:1], k))
    for domain in ("no_such_domain", "rec_children"):  # the warm-only retrieval model knows neither
        with pytest.raises(tf.errors.InvalidArgumentError, match="unknown domain"):
            retrieve(**_inputs([{**CONTEXTS[3], "domain": domain}], 5))


def test_retrieve_and_rank_is_the_rankers_ctr_on_the_retrieved_items(exported):
    toy, sigs = exported["toy"], exported["loaded"].signatures
    k = 6
    got = sigs["retrieve_and_rank"](**_inputs(CONTEXTS, k))
    retrieved = sigs["retrieve"](**_inputs(CONTEXTS, k))
    items = {item["item_id"]: item for item in toy.items}
    for row, context in enumerate(CONTEXTS):
        ids = [i.decode() for i in got["item_ids"].numpy()[row]]
        # the same K items as `retrieve`, each with its retrieval score, re-ordered by the ranker
        retrieval = dict(
            zip(
                [i.decode() for i in retrieved["item_ids"].numpy()[row]],
                retrieved["scores"].numpy()[row],
                strict=True,
            )
        )
        assert set(ids) == set(retrieval)
        np.testing.assert_allclose(
            got["retrieval_scores"].numpy()[row], [retrieval[i] for i in ids], rtol=1e-6
        )
        records = [{**context, **items[i]} for i in ids]
        expected = T.in_memory_outputs(toy.spec, toy.model, toy.encoder, records)
        np.testing.assert_allclose(got["ctr"].numpy()[row], expected["ctr"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            got["gate_weights"].numpy()[row], expected["gate_weights"].numpy(), rtol=1e-5, atol=1e-6
        )
        assert np.all(np.diff(got["ctr"].numpy()[row]) <= 0)  # sorted by ctr, best first


def test_graph_ops_of_the_retrieval_signatures_are_allowed(exported):
    ops = T.classify_graph_ops(exported["toy"].path)
    assert not ops["forbidden"], f"python ops in the graph: {ops['forbidden']}"
    assert not ops["other"], f"ops neither core TF nor TF Text: {sorted(ops['other'])}"
    # the brute-force index (scores, top-k) and the catalogue's ragged genres are in what was checked
    assert {"TopKV2", "MatMul", "RaggedGather"} <= ops["all"]


@pytest.fixture(scope="module")
def served(exported):
    toy = exported["toy"]
    server = server_lib.ModelServer(
        [config_lib.ModelConfig("toy", str(toy.path.parent))],
        port=0,
        rest_api_port=0,
        poll_wait_s=0,
        num_threads=4,
    ).start()
    server.wait_until_available("toy")
    client = client_lib.ScoringClient(server.target, "toy", deadline_s=30.0)
    yield {"server": server, "client": client, "loaded": exported["loaded"]}
    client.close()
    server.stop(grace_s=1.0)


def test_grpc_retrieve_and_rank_round_trip(served):
    client, sigs = served["client"], served["loaded"].signatures
    context = CONTEXTS[0]
    rows = client.retrieve_and_rank(context, 5)
    local = sigs["retrieve_and_rank"](**_inputs([context], 5))
    assert [r["item_id"] for r in rows] == [i.decode() for i in local["item_ids"].numpy()[0]]
    np.testing.assert_allclose([r["ctr"] for r in rows], local["ctr"].numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(
        [r["retrieval_score"] for r in rows], local["retrieval_scores"].numpy()[0], rtol=1e-6
    )
    assert set(rows[0]["gate_weights"]) == {"user", "query", "item"}
    found = client.retrieve(context, 5)
    local = sigs["retrieve"](**_inputs([context], 5))
    assert [r["item_id"] for r in found] == [i.decode() for i in local["item_ids"].numpy()[0]]
    assert len(client.retrieve({"domain": "rec_drama", "user_id": "u1"}, 10_000)) == ITEMS  # no query
    many = client.retrieve_many(CONTEXTS, 3, "retrieve_and_rank")
    assert [len(r) for r in many] == [3] * len(CONTEXTS)


def test_grpc_bad_retrieval_requests_are_invalid_argument_and_the_server_keeps_serving(served):
    client = served["client"]
    good = CONTEXTS[3]

    def code(request) -> grpc.StatusCode:
        try:
            client.predict(request)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    missing = client.retrieval_request([good], 5, "retrieve_and_rank")
    del missing.inputs["user_id"]
    wrong_k_dtype = client.retrieval_request([good], 5)
    wrong_k_dtype.inputs["k"].CopyFrom(tf.make_tensor_proto(5, dtype=tf.int64))
    k_vector = client.retrieval_request([good], 5)
    k_vector.inputs["k"].CopyFrom(tf.make_tensor_proto([5], dtype=tf.int32))
    cases = {
        "unknown domain": client.retrieval_request([{**good, "domain": "nope"}], 5, "retrieve_and_rank"),
        "k = 0": client.retrieval_request([good], 0, "retrieve_and_rank"),
        "k < 0": client.retrieval_request([good], -1),
        "missing input": missing,
        "k as int64": wrong_k_dtype,
        "k as a vector": k_vector,
    }
    for name, request in cases.items():
        assert code(request) == grpc.StatusCode.INVALID_ARGUMENT, name
        assert len(client.retrieve_and_rank(good, 4)) == 4  # the next good request is answered
    assert client.status()[0]["state"] == "AVAILABLE"


def test_tfsr_score_retrieve_cli(served, capsys, tmp_path):
    target = served["server"].target
    base = ["--server", target, "--model_name", "toy", "--domain", "search_tags", "--user_id", "u1"]
    assert client_lib.main([*base, "--query_text", "space", "--retrieve", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "retrieval" in out[0] and len(out) == 5
    assert client_lib.main([*base, "--retrieve", "3", "--retrieval_only", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and set(rows[0]) == {"item_id", "score"}
    request = tmp_path / "context.json"
    request.write_text(json.dumps({"context": {"domain": "rec_drama", "user_id": "u2"}}))
    assert (
        client_lib.main(
            ["--server", target, "--model_name", "toy", "--request", str(request), "--retrieve", "2"]
        )
        == 0
    )
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert client_lib.main([*base, "--retrieve", "0"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_export_without_samples_dir_or_with_mismatched_catalogue_is_refused(exported, tmp_path):
    toy = exported["toy"]
    with pytest.raises(ValueError, match="needs samples_dir"):
        export.export_model(
            toy.model, toy.spec, toy.encoder, tmp_path, "x", retrieval_model=toy.retrieval_model
        )
    with pytest.raises(ValueError, match="rows"):
        export.CatalogueIndex(
            np.array([b"a", b"b"]), np.zeros([2, 4], np.float32), {"item_id": np.array([b"a"])}
        )


def test_rest_retrieve_and_rank_with_columnar_inputs(served):
    """REST: the scalar ``k`` goes in TF Serving's columnar ``inputs`` format (a JSON number -> int32)."""
    url = f"http://127.0.0.1:{served['server'].rest_api_port}/v1/models/toy:predict"

    def post(body):
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["outputs"]

    context = CONTEXTS[3]
    outputs = post(
        {"signature_name": "retrieve_and_rank", "inputs": {**{k: [v] for k, v in context.items()}, "k": 4}}
    )
    expected = served["client"].retrieve_and_rank(context, 4)
    assert outputs["item_ids"] == [[r["item_id"] for r in expected]]
    np.testing.assert_allclose(outputs["ctr"][0], [r["ctr"] for r in expected], rtol=1e-5)
    with pytest.raises(urllib.error.HTTPError) as info:
        post({"signature_name": "retrieve", "inputs": {**{k: [v] for k, v in context.items()}, "k": 2**40}})
    assert info.value.code == 400 and "int64" in json.loads(info.value.read())["error"]
