"""serving/server.py against a running in-process server: API, bad input, hot swap, REST, shutdown."""

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from serving import client as client_lib
from serving import config as config_lib
from serving import server as server_lib
from tfsr.cli import subprocess_command

import grpc
import numpy as np
import pytest
import serving_doubles as T
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
        [config_lib.ModelConfig("toy", str(path.parent))],
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
    a, b = config_lib.read_model_config(text, relative_to="/base")
    assert (a.name, a.base_path, a.policy, a.num_versions, dict(a.version_labels)) == (
        "a",
        "/base/rel/a",
        "latest",
        2,
        {"stable": 1},
    )
    assert (b.base_path, b.policy, b.versions) == ("/abs/b", "specific", (3,))
    assert a.wanted([1, 2, 3]) == [2, 3] and b.wanted([1, 2, 3]) == [3]
    configs = config_lib.read_model_config(
        os.path.join(os.path.dirname(config_lib.__file__), "models.config")
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
        [config_lib.ModelConfig("hot", str(base))], port=0, poll_wait_s=0.1, num_threads=4
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


# ------------------------------------------------------------------ hostile requests (issue 17)
HOSTILE_TIMEOUT_S = 1.0
HOSTILE_CONNECTIONS = 6


@pytest.fixture(scope="module")
def hostile(env):
    """A second server on the same model with short REST timeouts and small limits."""
    server = server_lib.ModelServer(
        [config_lib.ModelConfig("toy", str(env["path"].parent))],
        port=0,
        rest_api_port=0,
        max_batch_size=MAX_BATCH,
        poll_wait_s=0,
        num_threads=2,
        max_concurrent_rpcs=2,
        rest_timeout_s=HOSTILE_TIMEOUT_S,
        max_rest_connections=HOSTILE_CONNECTIONS,
    ).start()
    server.wait_until_available("toy")
    yield server
    server.stop(grace_s=1.0)


def _peak_rss_mb() -> float:
    """The process's peak resident set (VmHWM): a request that allocates big raises it for good."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _http(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict]:
    """Sends raw bytes (request line + headers, then body); returns (status, JSON body) of the answer."""
    import http.client
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read() or b"{}")


def _post(port: int, body: bytes, path: str = "/v1/models/toy:predict", headers: bytes | None = None):
    headers = b"Content-Length: %d\r\n" % len(body) if headers is None else headers
    return _http(port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n", body)


def _rest_ok(port: int):
    record = T.toy_records(1, seed=3)[0]
    body = json.dumps({"signature_name": "predict_raw", "instances": [record]}).encode()
    status, payload = _post(port, body)
    assert status == 200 and 0.0 < payload["predictions"][0]["ctr"] < 1.0, payload


def test_grpc_declared_shape_is_checked_before_allocating(env):
    """58 bytes declaring a [10,000,000] string tensor of one value: refused, no 100s of MB allocated."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    def declared(*dims):
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
        )
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=[b"x"])

    before = _peak_rss_mb()
    for dims, needle in (
        ((10_000_000,), "max_batch_size"),
        ((2, 5_000_000), "carries 1 values"),
        ((-1,), "unknown"),
    ):
        request = _raw_request(env, {"examples": declared(*dims)})
        assert request.ByteSize() < 100
        _expect_error(env, request, grpc.StatusCode.INVALID_ARGUMENT, needle)
    assert _peak_rss_mb() - before < 50


def test_rest_content_length_is_checked_before_reading(env):
    port = env["server"].rest_api_port
    before = _peak_rss_mb()
    cases = {
        b"Content-Length: -1\r\n": 400,
        b"Content-Length: abc\r\n": 400,
        b"Content-Length: \xd9\xa1\r\n": 400,  # an Arabic-Indic digit: Python's int() would take it
        b"": 411,
        b"Transfer-Encoding: chunked\r\n": 411,
        b"Content-Length: 5000000000\r\n": 413,
    }
    for headers, expected in cases.items():
        status, payload = _post(port, b"{}" * 1000, headers=headers)
        assert (status, bool(payload.get("error"))) == (expected, True), (headers, status, payload)
    assert _peak_rss_mb() - before < 50
    _rest_ok(port)


def test_rest_malformed_bodies_are_4xx_with_a_message(env):
    port = env["server"].rest_api_port
    record = T.toy_records(1, seed=3)[0]
    before = _peak_rss_mb()
    bodies = {
        "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
        "nested objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "a list": b"[1, 2]",
        "a string": b'"instances"',
        "null": b"null",
        "a number": b"12",
        "not UTF-8": b"\xff\xfe\x00{",
        "instances not a list": b'{"instances": {"a": 1}}',
        "signature_name a list": b'{"signature_name": [1], "instances": []}',
        "a row of 100,000 genres": json.dumps(
            {"signature_name": "predict_raw", "instances": [{**record, "item_genres": ["g"] * 100_000}]}
        ).encode(),
        "genres not a list": json.dumps(
            {"signature_name": "predict_raw", "instances": [{**record, "item_genres": 7}]}
        ).encode(),
        "user_id a number": json.dumps(
            {"signature_name": "predict_raw", "instances": [{**record, "user_id": 7}]}
        ).encode(),
        "over max_batch_size": json.dumps({"instances": ["x"] * (MAX_BATCH + 1)}).encode(),
        "b64 that is not base64": b'{"instances": [{"b64": 5}]}',
    }
    outcomes = {name: _post(port, body) for name, body in bodies.items()}
    bad = {k: v for k, v in outcomes.items() if not (400 <= v[0] < 500 and v[1].get("error"))}
    assert bad == {}
    assert "1024 per feature" in outcomes["a row of 100,000 genres"][1]["error"]
    assert _peak_rss_mb() - before < 50
    get = {
        "/v1/models/toy/versions/" + "9" * 5000: 400,
        "/v1/models/toy/versions/%C2%B2": 400,
        "/v1/models/toy/versions/\u00b2": 400,
        "/v1/models/toy/versions/99999999999999999999": 400,
    }
    for path, expected in get.items():
        head = b"GET " + path.encode("utf-8") + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, payload = _http(port, head)
        assert status == expected and payload.get("error"), (path[:40], status, payload)
    status, payload = _http(port, b"DELETE /v1/models/toy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and payload["error"]
    _rest_ok(port)


def test_rest_slow_and_idle_clients_are_timed_out(hostile):
    """A client that stops mid-body, or never sends, is cut after the timeout; threads come back."""
    import socket

    port = hostile.rest_api_port
    threads_before = threading.active_count()
    socks = [
        socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(HOSTILE_CONNECTIONS - 1)
    ]
    socks[0].sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # stalls
    socks[1].sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nContent-Len")  # stalls in the headers
    start = time.monotonic()
    answers = []
    for sock in socks:
        data = b""
        while chunk := sock.recv(4096):  # the server closes it: recv returns b""
            data += chunk
        answers.append(data)
        sock.close()
    elapsed = time.monotonic() - start
    assert elapsed < 6 * HOSTILE_TIMEOUT_S + 2, elapsed
    assert answers[0].startswith(b"HTTP/1.1 408"), answers[0][:80]
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before
    _rest_ok(port)


def test_rest_connections_over_the_cap_get_503(hostile):
    import socket

    port = hostile.rest_api_port
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(HOSTILE_CONNECTIONS)]
    time.sleep(0.2)
    status, payload = _http(port, b"GET /v1/models/toy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and "connections open" in payload["error"]
    for sock in held:
        sock.close()
    time.sleep(0.3)
    _rest_ok(port)


def test_rest_client_disconnects_are_one_line_not_tracebacks(hostile, caplog):
    import socket
    import struct

    port = hostile.rest_api_port
    record = T.toy_records(1, seed=3)[0]
    body = json.dumps({"signature_name": "predict_raw", "instances": [record] * 64}).encode()
    head = b"POST /v1/models/toy:predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    with caplog.at_level(logging.INFO, logger="tfsr.serving"):
        for i in range(10):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            sock.sendall(head + (body if i % 2 else body[:10]))
            sock.close()
        time.sleep(3 * HOSTILE_TIMEOUT_S)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    _rest_ok(port)


def test_grpc_load_shedding_is_retried_by_the_client(hostile, env):
    """Over max_concurrent_rpcs (2 here) the server sheds with RESOURCE_EXHAUSTED; the client retries."""
    from concurrent import futures

    request = env["client"].predict_request(env["client"].examples(T.toy_records(32, seed=5)))
    raw = client_lib.ScoringClient(hostile.target, "toy", deadline_s=30.0, max_retries=0)
    retrying = client_lib.ScoringClient(hostile.target, "toy", deadline_s=30.0, max_retries=8, backoff_s=0.05)
    try:

        def outcome(client):
            try:
                client.predict(request)
                return "OK"
            except grpc.RpcError as err:
                return f"{err.code().name}: {err.details()}"

        with futures.ThreadPoolExecutor(24) as pool:
            shed = list(pool.map(lambda _: outcome(raw), range(24)))
            retried = list(pool.map(lambda _: outcome(retrying), range(24)))
    finally:
        raw.close()
        retrying.close()
    assert "RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!" in shed
    assert set(shed) <= {"OK", "RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!"}
    assert retried.count("OK") >= 22, retried  # bounded retries: nearly all get through
