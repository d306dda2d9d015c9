"""serving/server.py against a running in-process server: API, bad input, hot swap, REST, shutdown."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from serving import client as client_lib
from serving import server as server_lib
from tfsr.cli import subprocess_command
from tfsr.export import testing as T

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, predict_pb2

TEXT_DIM = 16
MAX_BATCH = 256
State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    toy = T.export_toy_model(root, TEXT_DIM)
    spec, encoder, samples, model, path = toy.spec, toy.encoder, toy.samples_dir, toy.model, toy.path
    server = server_lib.ModelServer(
        [server_lib.ModelConfig("toy", str(path.parent))],
        port=0,
        rest_api_port=0,
        max_batch_size=MAX_BATCH,
        poll_wait_s=0.2,
        num_threads=4,
    ).start()
    server.wait_until_available("toy")
    client = client_lib.ScoringClient(server.target, "toy", deadline_s=10.0, spec=spec)
    yield {
        "root": root,
        "spec": spec,
        "path": path,
        "server": server,
        "client": client,
        "model": model,
        "encoder": encoder,
        "samples": samples,
    }
    client.close()
    server.stop(grace_s=1.0)


def _ok(env, n=3):
    """A correct request still gets a correct answer (the server survived the previous one)."""
    records = T.toy_records(n, seed=11)
    response = env["client"].predict(env["client"].predict_request(env["client"].examples(records)))
    ctr = tf.make_ndarray(response.outputs["ctr"])
    local = env["server"].manager.resolve(model_pb2.ModelSpec(name="toy")).signatures["serving_default"]
    expected = local(examples=tf.constant(env["client"].examples(records)))["ctr"].numpy()
    np.testing.assert_allclose(ctr, expected, rtol=1e-6)


def _raw_request(env, inputs, signature="serving_default", name="toy", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def _expect_error(env, request, code, *needles):
    with pytest.raises(grpc.RpcError) as info:
        env["client"].stub.Predict(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    for needle in needles:
        assert needle in info.value.details(), info.value.details()
    _ok(env)


def test_predict_matches_in_process_signature(env):
    records = T.toy_records(64, seed=5)
    response = env["client"].predict(env["client"].predict_request(env["client"].examples(records)))
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    loaded = tf.saved_model.load(str(env["path"]))
    expected = loaded.signatures["serving_default"](examples=tf.constant(env["client"].examples(records)))
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["ctr"]), expected["ctr"].numpy(), rtol=1e-6)
    assert tf.make_ndarray(response.outputs["gate_weights"]).shape == (64, 3, 3)


def test_score_candidates_classify_metadata_status(env):
    client = env["client"]
    context = {"domain": "search_tags", "user_id": "u3", "query_text": "space", "query_id": "space"}
    candidates = [
        {
            "item_id": f"m{i}",
            "item_title": T.TOY_TITLES[f"m{i}"],
            "item_genres": ["Sci-Fi"],
            "item_decade": "1990s",
        }
        for i in range(1, 11)
    ]
    rows = client.score_candidates(context, candidates)
    assert [r["item_id"] for r in rows] == [c["item_id"] for c in candidates]
    assert all(0.0 < r["ctr"] < 1.0 for r in rows)
    assert abs(sum(rows[0]["gate_weights"]["item"].values()) - 1.0) < 1e-5
    futures = [client.score_candidates_future(context, candidates) for _ in range(4)]
    for future in futures:
        np.testing.assert_allclose([r["ctr"] for r in future.result()], [r["ctr"] for r in rows], rtol=1e-6)
    probs = client.classify([{**context, **c} for c in candidates[:3]])
    np.testing.assert_allclose(probs, [r["ctr"] for r in rows[:3]], rtol=1e-5)
    meta = client.metadata()
    assert meta["classify"]["method_name"] == "tensorflow/serving/classify"
    assert meta["serving_default"]["inputs"] == {"examples": "string"}
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": 0, "error_message": ""}]
    print(client_lib.format_ranking(client.rank(context, candidates, top_k=3)))


def test_wait_until_available_returns_the_served_version(env):
    assert env["client"].wait_until_available(timeout_s=5) == 1


def test_wait_until_available_times_out_naming_the_last_error(env):
    with client_lib.ScoringClient(env["server"].target, "no_such_model", deadline_s=2.0) as client:
        with pytest.raises(TimeoutError, match="'no_such_model'.*NOT_FOUND"):
            client.wait_until_available(timeout_s=0.3, poll_s=0.1)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not available"):  # the server process died: no waiting
            client.wait_until_available(timeout_s=60, alive=lambda: False)
        assert time.monotonic() - started < 5


def test_classify_on_a_predict_signature_is_failed_precondition(env):
    with pytest.raises(grpc.RpcError) as info:
        env["client"].classify(T.toy_records(1), signature_name="serving_default")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tensorflow/serving/classify" in info.value.details()


def test_garbage_bytes_as_example(env):
    request = _raw_request(env, {"examples": client_lib.string_tensor_proto([b"\xff\x00 not a proto \x13"])})
    _expect_error(env, request, grpc.StatusCode.INVALID_ARGUMENT, "parse")


def test_missing_required_feature(env):
    record = T.toy_records(1)[0]
    del record["user_id"]
    serialized = client_lib.make_example(record).SerializeToString()
    _expect_error(
        env,
        _raw_request(env, {"examples": client_lib.string_tensor_proto([serialized])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    )


def test_wrong_feature_dtype_inside_example(env):
    record = T.toy_records(1)[0]
    record["user_id"] = 42  # int64_list where a bytes_list is expected
    serialized = client_lib.make_example(record).SerializeToString()
    _expect_error(
        env,
        _raw_request(env, {"examples": client_lib.string_tensor_proto([serialized])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    )


def test_wrong_input_tensor_dtype(env):
    request = _raw_request(env, {"examples": tf.make_tensor_proto(np.array([1.0, 2.0], np.float32))})
    _expect_error(env, request, grpc.StatusCode.INVALID_ARGUMENT, "examples", "float32", "string")


def test_unknown_and_missing_input_names(env):
    proto = client_lib.string_tensor_proto([b""])
    _expect_error(env, _raw_request(env, {"exampels": proto}), grpc.StatusCode.INVALID_ARGUMENT, "exampels")
    _expect_error(env, _raw_request(env, {}), grpc.StatusCode.INVALID_ARGUMENT, "missing", "examples")


def test_empty_batch(env):
    _expect_error(
        env,
        _raw_request(env, {"examples": client_lib.string_tensor_proto([])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty batch",
    )


def test_batch_over_the_limit(env):
    serialized = env["client"].examples(T.toy_records(1)) * (MAX_BATCH + 1)
    _expect_error(
        env,
        _raw_request(env, {"examples": client_lib.string_tensor_proto(serialized)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"batch size {MAX_BATCH + 1}",
        "max_batch_size",
    )


def test_unknown_model_version_and_signature(env):
    proto = client_lib.string_tensor_proto(env["client"].examples(T.toy_records(1)))
    _expect_error(env, _raw_request(env, {"examples": proto}, name="nope"), grpc.StatusCode.NOT_FOUND, "nope")
    _expect_error(env, _raw_request(env, {"examples": proto}, version=99), grpc.StatusCode.NOT_FOUND, "99")
    _expect_error(
        env,
        _raw_request(env, {"examples": proto}, signature="nope"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "nope",
    )


def test_unknown_user_item_query_score_via_oov(env):
    record = {
        "domain": "search_tags",
        "user_id": "never-seen-user",
        "query_id": "zzz qqq",
        "query_text": "zzz qqq",
        "item_id": "never-seen-item",
        "item_title": "A title nobody wrote",
        "item_genres": ["NoSuchGenre"],
        "item_decade": "2990s",
    }
    rows = env["client"].score_candidates(record, [{}], key="item_id")
    assert 0.0 < rows[0]["ctr"] < 1.0 and np.isfinite(rows[0]["ctr"])
    _ok(env)


def test_ten_megabyte_request(env):
    big = [b"x" * (1024 * 1024)] * 10
    _expect_error(
        env,
        _raw_request(env, {"examples": client_lib.string_tensor_proto(big)}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    )


def test_rest_predict_and_status(env):
    port = env["server"].rest_api_port
    records = T.toy_records(3, seed=9)
    width = max(len(r["item_genres"]) for r in records)
    body = {
        "signature_name": "predict_raw",
        "instances": [
            {**r, "item_genres": r["item_genres"] + [""] * (width - len(r["item_genres"]))} for r in records
        ],
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/toy:predict",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        predictions = json.loads(resp.read())["predictions"]
    expected = env["client"].score_candidates({}, records)
    np.testing.assert_allclose([p["ctr"] for p in predictions], [r["ctr"] for r in expected], rtol=1e-5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/toy", timeout=10) as resp:
        assert json.loads(resp.read())["model_version_status"][0]["state"] == "AVAILABLE"
    bad = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/toy:predict", b'{"instances": [{"x": 1}]}'
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=10)
    assert info.value.code == 400 and "x" in json.loads(info.value.read())["error"]


def test_model_config_parsing(tmp_path):
    text = tmp_path / "m.config"
    text.write_text(
        'model_config_list { config { name: "a" base_path: "rel/a" model_platform: "tensorflow" '
        'model_version_policy { latest { num_versions: 2 } } version_labels { key: "stable" value: 1 } } '
        'config { name: "b" base_path: "/abs/b" model_version_policy { specific { versions: 3 } } } }'
    )
    a, b = server_lib.read_model_config(text, relative_to="/base")
    assert (a.name, a.base_path, a.policy, a.num_versions, dict(a.version_labels)) == (
        "a",
        "/base/rel/a",
        "latest",
        2,
        {"stable": 1},
    )
    assert (b.base_path, b.policy, b.versions) == ("/abs/b", "specific", (3,))
    assert a.wanted([1, 2, 3]) == [2, 3] and b.wanted([1, 2, 3]) == [3]
    configs = server_lib.read_model_config(
        os.path.join(os.path.dirname(server_lib.__file__), "models.config")
    )
    assert configs[0].name == "tfsr"


def _copy_version(src, base, version):
    """Makes a version appear atomically, as the exporter does."""
    tmp = base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))


def test_hot_swap_and_broken_version(env, tmp_path):
    base = tmp_path / "hot"
    base.mkdir()
    _copy_version(env["path"], base, 1)
    server = server_lib.ModelServer(
        [server_lib.ModelConfig("hot", str(base))], port=0, poll_wait_s=0.1, num_threads=4
    ).start()
    client = client_lib.ScoringClient(server.target, "hot", deadline_s=10.0)
    request = client.predict_request(client.examples(T.toy_records(16, seed=2)))
    errors, versions, stop = [], set(), threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                versions.add(client.predict(request).model_spec.version.value)
            except grpc.RpcError as err:  # pragma: no cover - the assertion below reports it
                errors.append(err)

    try:
        assert server.wait_until_available("hot") == 1
        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        _copy_version(env["path"], base, 2)
        assert server.wait_until_available("hot", version=2, timeout_s=30) == 2
        deadline = time.monotonic() + 10
        while 1 in server.manager.available("hot") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        # a broken version 3: the server keeps serving 2 and reports 3 as failed
        broken = base / ".tmp-3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"this is not a saved model")
        os.rename(broken, base / "3")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = {s["version"]: s for s in client.status()}
            if 3 in status and status[3]["state"] == "END":
                break
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, [e.details() for e in errors[:3]]
        assert versions >= {1, 2}
        assert status[3]["error_code"] != 0 and "version 3" in status[3]["error_message"]
        assert status[2]["state"] == "AVAILABLE" and status[1]["state"] == "END"
        assert client.predict(request).model_spec.version.value == 2
        assert server.manager.available("hot") == [2]
    finally:
        stop.set()
        client.close()
        server.stop(grace_s=1.0)


def test_client_cli_against_server(env, capsys):
    rc = client_lib.main(
        [
            "--server",
            env["server"].target,
            "--model_name",
            "toy",
            "--domain",
            "search_tags",
            "--user_id",
            "u1",
            "--query_text",
            "space",
            "--items",
            "m1,m2,m3,unknown",
            "--top_k",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "rank" in out and len(out.strip().splitlines()) == 3
    rc = client_lib.main(
        ["--server", env["server"].target, "--model_name", "nope", "--domain", "x", "--items", "m1"]
    )
    assert rc == 1 and "NOT_FOUND" in capsys.readouterr().err


@pytest.mark.slow
def test_tfsr_serve_subprocess_and_graceful_sigterm(env):
    proc = subprocess.Popen(
        subprocess_command(
            "serve", "--model_name", "toy", "--model_base_path", env["path"].parent, "--port", 0
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        line = proc.stdout.readline()
        assert "gRPC on 127.0.0.1:" in line, line
        target = line.split("gRPC on ")[1].split(",")[0].strip()
        with client_lib.ScoringClient(target, "toy", deadline_s=20.0) as client:
            assert len(client.score_candidates({}, T.toy_records(4))) == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
