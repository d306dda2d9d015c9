"""Fuzz tests of every entry point (issue 17): log lines, REST bodies, gRPC TensorProtos.

Each test mutates valid inputs at random with a fixed seed (tests/bad_inputs/fuzz.py; a failure replays
exactly) and a bounded number of cases, and asserts what docs/RELIABILITY.md promises for any input:

* ``build_samples`` never crashes, and every line read is in the manifest's ledger (read = used +
  dead-lettered + filtered), each dead letter with a known reason (never ``row_exception``: that would be a
  parser bug caught by the safety net) and only for mutated lines;
* the REST API answers every request: never a 5xx or a dropped connection, a 4xx with a message for the
  malformed ones, and peak RSS grows under 50 MB over all of them (each under 4 MiB);
* the gRPC API answers every Predict with OK or INVALID_ARGUMENT, peak RSS again under +50 MB.

The server tests reuse test_serving's exported toy model server (``env``) and its helpers.
"""

import collections
import json
import pathlib
import random
import socket

from beam_jobs import build_samples as bs
from beam_jobs import core
from serving import client as client_lib
from tfsr import layout
from tfsr.datasets.logs import CSV_HEADER, format_log_line

import grpc
import numpy as np
import pytest
import serving_doubles as T
import tensorflow as tf
from bad_inputs import fuzz
from test_serving import _ok, _peak_rss_mb, _raw_request, env  # noqa: F401  (env: the server fixture)

SEED = 17
LOG_LINES = 250  # per format
REST_CASES = 300
GRPC_CASES = 300
MUTATED = 0.7  # share of lines / requests mutated (the rest stay valid: they must be kept / answered)
RSS_BOUND_MB = 50


class _PeakRss:
    """Peak RSS growth of each request: the kernel's peak (VmHWM) is reset to the current RSS before it
    (``/proc/self/clear_refs`` 5), so a request is measured alone, whatever ran earlier in the process."""

    def __init__(self):
        self.worst = (0.0, None)
        self.start = self._rss_mb()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def measure(self, case, send, *args, **kwargs):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        before = self._rss_mb()
        answer = send(*args, **kwargs)
        growth = _peak_rss_mb() - before
        self.worst = max(self.worst, (growth, case), key=lambda w: w[0])
        return answer

    def drift_mb(self) -> float:
        """RSS now minus at the start: what the requests left allocated (a leak would grow it)."""
        return self._rss_mb() - self.start


def _log_records(n: int) -> list[dict]:
    rows = T.toy_records(n, 5, "rec_drama")
    return [{**r, "label": i % 2, "timestamp": 1_000 + i} for i, r in enumerate(rows)]


@pytest.mark.slow
def test_fuzz_log_lines_never_crash_build_samples_and_every_line_is_accounted(tmp_path):
    rng = random.Random(SEED)
    logs = tmp_path / "logs"
    logs.mkdir()
    mutated: set[tuple[str, int]] = set()
    total = 0
    for fmt, mutate in (("jsonl", fuzz.mutate_jsonl), ("csv", fuzz.mutate_csv)):
        lines = [CSV_HEADER.encode()] if fmt == "csv" else []
        for record in _log_records(LOG_LINES):
            valid = format_log_line(record, fmt)
            if rng.random() < MUTATED:
                lines.append(mutate(rng, record if fmt == "jsonl" else valid))
                mutated.add((f"fuzz.{fmt}", len(lines)))
            else:
                lines.append(valid.encode("utf-8"))
        (logs / f"fuzz.{fmt}").write_bytes(b"\n".join(lines) + b"\n")
        total += len(lines)
    out = tmp_path / "samples"
    argv = ["--logs", str(logs / "*"), "--output_dir", str(out), "--text_encoder", "tiny"]
    assert bs.run(argv, save_main_session=False) == 0  # no crash, nothing lost

    ledger = layout.read_manifest(out)["reconciliation"]["rows"]["logs"]
    dead = [json.loads(line) for f in (out / layout.DEAD_LETTERS_DIR).glob("*.jsonl") for line in f.open()]
    dead_at = {(pathlib.Path(d["file"]).name, d["line"]): d["reason"] for d in dead}
    print(f"log fuzz: {len(mutated)} of {total} lines mutated; ledger {json.dumps(ledger)}")
    assert ledger["read"] == total and ledger["balanced"] is True
    assert ledger["used"] + sum(ledger["dead_lettered"].values()) + sum(ledger["filtered"].values()) == total
    assert dict(collections.Counter(dead_at.values())) == ledger["dead_lettered"] and len(dead_at) == len(
        dead
    )
    assert set(dead_at) <= mutated  # a valid line is never dead-lettered
    assert core.ROW_EXCEPTION not in ledger["dead_lettered"], [
        d for d in dead if d["reason"] == core.ROW_EXCEPTION
    ]
    assert ledger["filtered"].get("header") == 1
    assert ledger["used"] >= total - len(mutated) - 1  # every valid line kept (the header is filtered)
    assert len(dead_at) > len(mutated) // 2  # the mutations do reach the parser (not all harmless)


def _rest(port: int, head: bytes, body: bytes) -> tuple[int, dict] | str:
    """Sends one raw HTTP request; (status, JSON body) of the answer, or why there was none."""
    import http.client

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(head + body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, json.loads(response.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError) as err:
        return f"no answer: {type(err).__name__}: {err}"


@pytest.mark.slow
def test_fuzz_rest_bodies_are_answered_4xx_never_5xx_with_bounded_memory(env):  # noqa: F811
    rng = random.Random(SEED)
    port = env["server"].rest_api_port
    records = T.toy_records(4, seed=3)
    valid = {"signature_name": "predict_raw", "instances": records}
    head = b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
    for _ in range(3):  # warm the REST path before the peak-RSS baseline
        assert _rest(port, head + b"Content-Length: 2\r\n\r\n", b"{}")[0] == 400
        assert _rest(port, head + b"\r\n", b"")[0] == 411
        body = json.dumps(valid).encode()
        assert _rest(port, head + b"Content-Length: %d\r\n\r\n" % len(body), body)[0] == 200
    rss = _PeakRss()
    outcomes, bad = collections.Counter(), []
    for case in range(REST_CASES):
        body = fuzz.mutate_json_body(rng, valid) if rng.random() < MUTATED else json.dumps(valid).encode()
        assert len(body) < 4 * 1024 * 1024
        request = head + fuzz.content_length(rng, len(body)) + b"\r\n" + body
        answer = rss.measure(case, _rest, port, request, b"")
        if isinstance(answer, str) or answer[0] >= 500:
            bad.append((case, body[:80], answer))
            continue
        status, payload = answer
        outcomes[status] += 1
        if status == 200:
            rows = payload.get("predictions")  # (a mutation may repeat the valid rows)
            if not rows or not all(0.0 < p["ctr"] < 1.0 for p in rows):
                bad.append((case, body[:80], answer))
        elif not (400 <= status < 500 and isinstance(payload.get("error"), str) and payload["error"]):
            bad.append((case, body[:80], answer))
    print(
        f"REST fuzz: {dict(outcomes)}; worst request peak RSS +{rss.worst[0]:.1f} MB (case {rss.worst[1]}), "
        f"RSS drift {rss.drift_mb():+.1f} MB"
    )
    assert bad == []
    assert outcomes[200] > 0 and sum(n for s, n in outcomes.items() if s != 200) > REST_CASES // 2
    assert rss.worst[0] < RSS_BOUND_MB  # the drift is printed: the allocator keeps freed memory
    _ok(env)


@pytest.mark.slow
def test_fuzz_grpc_tensor_protos_are_ok_or_invalid_argument_with_bounded_memory(env):  # noqa: F811
    rng = random.Random(SEED)
    client = env["client"]
    examples = client.examples(T.toy_records(3, seed=11))
    for _ in range(3):
        _ok(env)
    rss = _PeakRss()
    outcomes, bad = collections.Counter(), []
    for case in range(GRPC_CASES):
        if rng.random() < MUTATED:
            proto = fuzz.mutate_tensor_proto(rng, examples)
        else:
            proto = client_lib.string_tensor_proto(examples)
        request = _raw_request(env, {"examples": proto})
        try:
            response = rss.measure(case, client.stub.Predict, request, timeout=20)
        except grpc.RpcError as err:
            outcomes[err.code().name] += 1
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT or not err.details():
                bad.append((case, str(proto)[:200], err.code().name, err.details()))
            continue
        ctr = tf.make_ndarray(response.outputs["ctr"])
        outcomes["OK"] += 1
        if not (np.all(np.isfinite(ctr)) and np.all((ctr > 0) & (ctr < 1))):
            bad.append((case, str(proto)[:200], "OK", ctr))
    print(
        f"gRPC fuzz: {dict(outcomes)}; worst request peak RSS +{rss.worst[0]:.1f} MB (case {rss.worst[1]}), "
        f"RSS drift {rss.drift_mb():+.1f} MB"
    )
    assert bad == []
    assert outcomes["OK"] > 0 and outcomes["INVALID_ARGUMENT"] > GRPC_CASES // 3
    assert rss.worst[0] < RSS_BOUND_MB  # the drift is printed: the allocator keeps freed memory
    _ok(env)


def test_rest_body_with_both_instances_and_inputs_is_a_400(env):  # noqa: F811
    """Found by the REST fuzz: such a body was scored as 'instances' but answered as 'inputs' (columns)."""
    record = T.toy_records(1, seed=3)[0]
    body = json.dumps({"signature_name": "predict_raw", "instances": [record], "inputs": 7}).encode()
    head = b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, payload = _rest(env["server"].rest_api_port, head, body)
    assert status == 400 and "both 'instances' and 'inputs'" in payload["error"]
