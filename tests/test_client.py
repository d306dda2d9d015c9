"""serving/client.py without a server: retries, deadlines, example encoding, formatting."""

from serving import client as client_lib

import grpc
import pytest
import tensorflow as tf


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details=None):
        super().__init__()
        self._code = code
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details or f"fake {self._code.name}"


class FakeMethod:
    def __init__(self, failures):
        self.failures = list(failures)
        self.timeouts = []

    def __call__(self, request, timeout=None):
        self.timeouts.append(timeout)
        if self.failures:
            failure = self.failures.pop(0)
            raise FakeRpcError(*failure) if isinstance(failure, tuple) else FakeRpcError(failure)
        return "ok"


def _client(**kwargs):
    return client_lib.ScoringClient("127.0.0.1:1", "m", deadline_s=0.5, backoff_s=0.001, **kwargs)


def test_retries_unavailable_only_with_a_deadline_on_every_call():
    client = _client(max_retries=3)
    method = FakeMethod([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    assert client._call(method, None) == "ok"
    assert method.timeouts == [0.5, 0.5, 0.5]
    method = FakeMethod([grpc.StatusCode.INVALID_ARGUMENT])
    with pytest.raises(grpc.RpcError) as info:
        client._call(method, None)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(method.timeouts) == 1
    method = FakeMethod([grpc.StatusCode.DEADLINE_EXCEEDED])
    with pytest.raises(grpc.RpcError):
        client._call(method, None)
    assert len(method.timeouts) == 1
    method = FakeMethod([grpc.StatusCode.UNAVAILABLE] * 5)
    with pytest.raises(grpc.RpcError) as info:
        client._call(method, None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and len(method.timeouts) == 4
    client.close()


def test_retries_load_shedding_but_not_oversized_messages(monkeypatch):
    """RESOURCE_EXHAUSTED from maximum_concurrent_rpcs is retried with bounded, jittered backoff; one for a
    message over the size limit would fail again and is raised at once."""
    sleeps = []
    monkeypatch.setattr(client_lib.time, "sleep", sleeps.append)
    client = client_lib.ScoringClient("127.0.0.1:1", "m", backoff_s=0.1, max_backoff_s=0.3, max_retries=5)
    shed = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
    method = FakeMethod([shed] * 5)
    assert client._call(method, None) == "ok" and len(method.timeouts) == 6
    caps = [0.1, 0.2, 0.3, 0.3, 0.3]  # doubled from backoff_s, capped at max_backoff_s
    assert len(sleeps) == 5 and all(cap / 2 <= s <= cap for s, cap in zip(sleeps, caps, strict=True)), sleeps
    method = FakeMethod([(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)")])
    with pytest.raises(grpc.RpcError) as info:
        client._call(method, None)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(method.timeouts) == 1
    method = FakeMethod([shed] * 6)
    with pytest.raises(grpc.RpcError):
        client._call(method, None)
    assert len(method.timeouts) == 6  # max_retries bounds the tries
    client.close()


def test_bad_client_arguments():
    with pytest.raises(ValueError, match="deadline_s must be positive, got 0"):
        client_lib.ScoringClient("127.0.0.1:1", "m", deadline_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        client_lib.ScoringClient("127.0.0.1:1", "m", max_retries=-1)


def test_make_example_and_candidate_request():
    example = client_lib.make_example({"user_id": "u1", "item_genres": ["A", "B"], "n": 3, "x": 0.5, "e": []})
    f = example.features.feature
    assert f["user_id"].bytes_list.value == [b"u1"] and f["item_genres"].bytes_list.value == [b"A", b"B"]
    assert f["n"].int64_list.value == [3] and f["x"].float_list.value == [0.5]
    with pytest.raises(ValueError, match="feature 'bad'"):
        client_lib.make_example({"bad": ["a", 1]})
    client = _client(version=7)
    request = client.candidate_request({"domain": "d", "user_id": "u"}, [{"item_id": "a"}, {"item_id": "b"}])
    assert request.model_spec.name == "m" and request.model_spec.version.value == 7
    assert request.model_spec.signature_name == "serving_default"
    examples = tf.make_ndarray(request.inputs["examples"])
    assert examples.shape == (2,)
    parsed = tf.train.Example.FromString(examples[1]).features.feature
    assert parsed["item_id"].bytes_list.value == [b"b"] and parsed["user_id"].bytes_list.value == [b"u"]
    with pytest.raises(ValueError, match="no candidates"):
        client.candidate_request({}, [])
    client.close()


def test_a_query_text_gets_the_query_id_training_gave_it():
    """Training derives query ids with normalize_query (NFKC, casefold, whitespace collapsed); a client
    that sends only the text must look up the same id, or the query is out of vocabulary."""
    context = {"domain": "search_tags", "user_id": "u", "query_text": "  Space\u3000OPERA  Straße "}
    assert client_lib.with_query_id(context)["query_id"] == "space opera strasse"
    assert client_lib.with_query_id({**context, "query_id": "given"})["query_id"] == "given"
    assert "query_id" not in client_lib.with_query_id({"domain": "rec_drama", "user_id": "u"})
    client = _client()
    request = client.candidate_request(context, [{"item_id": "a"}])
    example = tf.train.Example.FromString(tf.make_ndarray(request.inputs["examples"])[0])
    assert example.features.feature["query_id"].bytes_list.value == [b"space opera strasse"]
    request = client.retrieval_request([context], 5)
    assert tf.make_ndarray(request.inputs["query_id"]).tolist() == [b"space opera strasse"]
    client.close()


def test_format_ranking():
    rows = [
        {
            "item_id": "a",
            "ctr": 0.5,
            "gate_weights": {e: {"id": 0.2, "text": 0.5, "sparse": 0.3} for e in ("user", "query", "item")},
        }
    ]
    text = client_lib.format_ranking(rows)
    assert "0.5000" in text and "0.20/0.50/0.30" in text
