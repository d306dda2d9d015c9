"""Serving under load and change: 8 clients for 30 s while a new version is exported and hot-swapped and a
broken version is dropped into the base path (issue 8).

Checks: zero failed requests; every response comes from a loaded version (``model_spec.version``) and its
scores are exactly that version's scores (no mixing of versions within a response); the broken version is
reported by GetModelStatus (END with an error) and never served. Loopback only. The duration is
``TFSR_LOAD_TEST_SECONDS`` (default 30, what CI runs); the figures are printed for docs/RELIABILITY.md.
"""

import collections
import json
import os
import shutil
import threading
import time

import tfsr.export as export
from serving import client as client_lib
from serving import config as config_lib
from serving import server as server_lib

import grpc
import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf

TEXT_DIM = 16
CLIENTS = 8
DURATION_S = float(os.environ.get("TFSR_LOAD_TEST_SECONDS", "30"))
BATCH = 16


def _expected_ctr(path, serialized) -> np.ndarray:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return signature(examples=tf.constant(serialized))["ctr"].numpy()


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.mark.slow
def test_eight_clients_through_hot_swap_and_broken_version(tmp_path):
    spec = T.toy_spec(TEXT_DIM)
    encoder = T.HashingTextEncoder(TEXT_DIM)
    samples = T.write_samples_dir(tmp_path / "samples", spec, encoder)
    base = tmp_path / "saved"
    v1 = export.export_model(T.build_contract_model(spec, samples), spec, encoder, base, "load", version=1)
    requests_by_client = [T.toy_records(BATCH, seed=100 + i) for i in range(CLIENTS)]
    serialized = [
        [spec.to_example(r, roles=("raw",)).SerializeToString() for r in rs] for rs in requests_by_client
    ]
    expected = {1: [_expected_ctr(v1, s) for s in serialized]}

    server = server_lib.ModelServer(
        [config_lib.ModelConfig("load", str(base / "load"))], port=0, poll_wait_s=0.2, num_threads=CLIENTS
    ).start()
    assert server.wait_until_available("load") == 1

    stop = threading.Event()
    lock = threading.Lock()
    seen = collections.Counter()
    failures: list[str] = []
    mismatches: list[str] = []
    latencies: list[float] = []
    responses: list[tuple[int, int, np.ndarray]] = []  # (client, version, ctr): checked once v2 is known

    def client_loop(i: int) -> None:
        client = client_lib.ScoringClient(server.target, "load", deadline_s=30.0, max_retries=0)
        request = client.predict_request(serialized[i])
        try:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    response = client.predict(request)
                except grpc.RpcError as err:
                    with lock:
                        failures.append(f"{err.code().name}: {err.details()}")
                    continue
                elapsed = time.perf_counter() - start
                version = response.model_spec.version.value
                with lock:
                    seen[version] += 1
                    latencies.append(elapsed)
                    responses.append((i, version, tf.make_ndarray(response.outputs["ctr"])))
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    timeline = {}
    try:
        time.sleep(DURATION_S * 0.1)
        # a new version, exported into the live base path while the clients hammer version 1
        model2 = T.build_contract_model(spec, samples)  # fresh random weights: different scores
        v2 = export.export_model(model2, spec, encoder, base, "load")
        timeline["v2_exported_s"] = round(time.monotonic() - t0, 1)
        expected[2] = [_expected_ctr(v2, s) for s in serialized]
        assert any(not np.allclose(a, b) for a, b in zip(expected[1], expected[2], strict=True))
        _wait(
            lambda: server.manager.available("load") == [2],
            max(120.0, DURATION_S),
            "version 2 never replaced 1",
        )
        timeline["v2_serving_s"] = round(time.monotonic() - t0, 1)
        time.sleep(DURATION_S * 0.1)
        # a broken version 3: its variables are missing; it must be reported and never served
        broken = base / "load" / ".tmp-3"
        shutil.copytree(v2, broken)
        shutil.rmtree(broken / "variables")
        os.rename(broken, base / "load" / "3")
        timeline["v3_broken_dropped_s"] = round(time.monotonic() - t0, 1)
        status_client = client_lib.ScoringClient(server.target, "load", deadline_s=10.0)

        def v3_failed() -> bool:
            return any(s["version"] == 3 and s["state"] == "END" for s in status_client.status())

        _wait(v3_failed, max(120.0, DURATION_S), "version 3 was never reported as failed")
        timeline["v3_reported_s"] = round(time.monotonic() - t0, 1)
        time.sleep(max(0.0, DURATION_S - (time.monotonic() - t0)))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    wall = time.monotonic() - t0
    status = {s["version"]: s for s in status_client.status()}
    status_client.close()
    server.stop(grace_s=1.0)

    for i, version, ctr in responses:
        if version not in expected or not np.allclose(ctr, expected[version][i], rtol=1e-5, atol=1e-7):
            mismatches.append(f"client {i} version {version}")
    lat = np.array(latencies) * 1000.0
    figures = {
        "clients": CLIENTS,
        "duration_s": round(wall, 1),
        "examples_per_request": BATCH,
        "requests": int(sum(seen.values())) + len(failures),
        "failed": len(failures),
        "versions_seen": {str(k): v for k, v in sorted(seen.items())},
        "score_mismatches": len(mismatches),
        "requests_per_s": round(sum(seen.values()) / wall, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
        "latency_ms_max": round(float(lat.max()), 1),
        "timeline": timeline,
        "final_status": {
            str(v): [s["state"], s["error_code"], s["error_message"][:120]] for v, s in status.items()
        },
    }
    print("\nLOAD TEST FIGURES " + json.dumps(figures, indent=1))

    assert not failures, failures[:5]
    assert not mismatches, mismatches[:5]
    assert set(seen) == {1, 2}, seen  # both good versions served, the broken one never
    assert seen[1] > 0 and seen[2] > 0
    assert status[3]["state"] == "END" and status[3]["error_code"] != 0
    assert "version 3" in status[3]["error_message"]
    assert status[2]["state"] == "AVAILABLE" and status[1]["state"] == "END"
