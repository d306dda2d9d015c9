"""Seeded random mutations of valid inputs, for the fuzz tests of every entry point (tests/test_fuzz.py).

Each function takes a ``random.Random`` (fixed seed in the tests: a failure replays exactly) and a valid
input, and returns a mutated one. The mutations are those a broken producer or an attacker sends:
truncations, random bytes, huge numbers, deep nesting, wrong types, control characters and line breaks,
duplicated / missing / extra columns, and (for the server) declared sizes that disagree with the payload.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

# values of the wrong type, or of the right type and a hostile content, for any JSON field
HOSTILE_VALUES: list[Callable[[random.Random], object]] = [
    lambda r: None,
    lambda r: r.choice([True, False]),
    lambda r: r.choice([0, -1, 1, 2, 2**63, -(2**63) - 1, 2**64]),
    lambda r: r.choice([0.5, 1.0, -0.0, 1e308, 1e-320]),
    lambda r: [],
    lambda r: [r.choice(["Drama", 1, None, [], {}])],
    lambda r: {"b64": r.choice(["!!", "AAAA", 5])},
    lambda r: {"Drama": 1},
    lambda r: "",
    lambda r: "".join(
        r.choice(["a", "\n", "\r", "\x00", "\x1b", "\u2028", "\x85", "\ufeff", "\ud800"]) for _ in range(8)
    ),
    lambda r: "x" * r.choice([1_000, 1_001, 100_000]),
    lambda r: ["g"] * r.choice([2, 1_024, 1_025, 20_000]),
]


def _huge_number(rng: random.Random) -> bytes:
    digits = rng.choice([19, 20, 400, 4_300, 5_000])
    sign = rng.choice([b"", b"-"])
    tail = rng.choice([b"", b".5", b"e400", b"e-400", b"E+9"])
    return sign + b"9" * digits + tail


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice([2, 100, 1_000, 10_000, 50_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def random_bytes(rng: random.Random, n: int) -> bytes:
    """`n` random bytes, the line breaks kept (a log line cannot hold one)."""
    return bytes(rng.randrange(256) for _ in range(n))


def _byte_mutation(rng: random.Random, line: bytes) -> bytes:
    """A mutation that ignores the format: cut, splice random bytes or control characters, flip a byte."""
    at = rng.randrange(len(line) + 1)
    kind = rng.randrange(5)
    if kind == 0:
        return line[:at]
    if kind == 1:
        return line[:at] + random_bytes(rng, rng.randrange(1, 16)) + line[at:]
    if kind == 2:
        return (
            line[:at]
            + rng.choice([b"\x00", b"\x1b[31m", b"\x7f", b"\xc3\x28", b"\xef\xbb\xbf", b"\x0c", b"\r"])
            + line[at:]
        )
    if kind == 3 and line:
        i = rng.randrange(len(line))
        return line[:i] + bytes([line[i] ^ (1 << rng.randrange(8))]) + line[i + 1 :]
    return line + line[at:]  # a duplicated tail


def mutate_jsonl(rng: random.Random, record: dict) -> bytes:
    """One JSONL log line derived from the valid `record` by 1-3 random mutations (no line break)."""
    fields = dict(record)
    keys = list(fields)
    raw: bytes | None = None
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if kind == 0:
            fields[rng.choice(keys)] = rng.choice(HOSTILE_VALUES)(rng)
        elif kind == 1:
            fields.pop(rng.choice(keys), None)
        elif kind == 2:
            fields[rng.choice(["price", "", "label ", "LABEL", "\u0000"])] = 1
        elif kind == 3:
            raw = json.dumps(fields).encode()
            key = rng.choice(["label", "timestamp"]).encode()
            raw = raw.replace(b'"%s": ' % key, b'"%s": %s, "%s": ' % (key, _huge_number(rng), key), 1)
        elif kind == 4:
            raw = json.dumps({**fields, rng.choice(keys): None}).encode().replace(b"null", _nested(rng), 1)
        elif kind == 5:
            raw = rng.choice(
                [_nested(rng), b"[]", b'"x"', b"null", b"12", random_bytes(rng, rng.randrange(1, 64))]
            )
        else:
            raw = _byte_mutation(rng, raw if raw is not None else json.dumps(fields).encode())
    line = (
        raw
        if raw is not None
        else json.dumps(fields, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    )
    return _one_line(line)


def mutate_csv(rng: random.Random, line: str) -> bytes:
    """One CSV log line derived from the valid `line` by 1-3 random mutations (no line break)."""
    cells = line.split(",")  # the valid lines of the tests hold no quoted comma
    raw: bytes | None = None
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        i = rng.randrange(len(cells))
        if kind == 0:
            cells.insert(i, cells[i])  # a duplicated column
        elif kind == 1 and len(cells) > 1:
            del cells[i]  # a missing column
        elif kind == 2:
            cells[i] = _huge_number(rng).decode()
        elif kind == 3:
            cells[i] = rng.choice(
                [
                    '"',
                    '"a""b',
                    '"unterminated',
                    "1.0",
                    "+1",
                    "1_000",
                    "\x00",
                    "\u2028",
                    "\x1e",
                    "NaN",
                    "-1",
                    "\uff11",
                ]
            )
        elif kind == 4:
            cells[i] = "x" * rng.choice([10, 1_000, 70_000])
        else:
            raw = _byte_mutation(rng, raw if raw is not None else ",".join(cells).encode())
    return _one_line(raw if raw is not None else ",".join(cells).encode("utf-8", "surrogatepass"))


def _one_line(raw: bytes) -> bytes:
    """A log file's line cannot contain its own line break: \\n (and \\r, eaten as its CRLF) become spaces."""
    return raw.replace(b"\n", b" ").rstrip(b"\r")


def mutate_json_body(rng: random.Random, body: dict) -> bytes:
    """A REST body derived from the valid `body` ({"signature_name", "instances": [...]})."""
    kind = rng.randrange(8)
    if kind == 0:
        return random_bytes(rng, rng.randrange(0, 512))
    if kind == 1:
        return rng.choice([_nested(rng), b"[1, 2]", b'"instances"', b"null", b"12", b"{}", b""])
    body = json.loads(json.dumps(body))
    instances = body["instances"]
    if kind == 2:
        row = rng.choice(instances)
        row[rng.choice(list(row))] = rng.choice(HOSTILE_VALUES)(rng)
    elif kind == 3:
        body[rng.choice(["instances", "signature_name", "inputs"])] = rng.choice(HOSTILE_VALUES)(rng)
    elif kind == 4:
        body["instances"] = instances * rng.choice([2, 100, 257, 4_000])  # past max_batch_size
    elif kind == 5:
        rng.choice(instances).pop(rng.choice(list(instances[0])), None)
    elif kind == 6:
        text = json.dumps(body).encode()
        return _byte_mutation(rng, text)
    else:
        body["instances"] = [{"b64": rng.choice(["", "AAAA", "not base64!", "/" * 7])}] * rng.randint(1, 3)
    return json.dumps(body).encode("utf-8", "surrogatepass")


def content_length(rng: random.Random, size: int) -> bytes:
    """The Content-Length header line of a body of `size` bytes: mostly right, sometimes a lie."""
    kind = rng.randrange(10)
    if kind < 6:
        value = str(size).encode()
    elif kind == 6:
        value = str(rng.randrange(size + 1)).encode()  # shorter: the rest is the next "request"
    elif kind == 7:
        value = rng.choice(
            [b"-1", b"abc", b"", b" ", b"1e3", b"0x10", b"\xd9\xa1", b"99999999999999999999999"]
        )
    elif kind == 8:
        value = str(rng.choice([4 * 1024 * 1024 + 1, 2**40])).encode()  # over the limit: refused unread
    else:
        return rng.choice(
            [b"", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\nContent-Length: 7\r\n"]
        )
    return b"Content-Length: " + value + b"\r\n"


def mutate_tensor_proto(rng: random.Random, examples: list[bytes]):
    """A ``TensorProto`` for the ``examples`` input: a valid string batch of `examples`, or one whose dtype,
    declared shape, carried values or tensor_content disagree (random dtypes, huge or negative dims, more
    or fewer values than declared, mutated example bytes)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    values = list(examples)
    kind = rng.randrange(6)
    if kind == 1:  # mutated examples: truncated, spliced, flipped bytes
        values = [_byte_mutation(rng, v) if rng.random() < 0.5 else v for v in values]
    proto.string_val.extend(values)
    dims = [len(values)]
    if kind == 2:  # a declared shape that disagrees with the values carried
        dims = [rng.choice([0, 1, len(values) + 1, 256, 257, 10_000_000, -1, 2**62])]
        dims += [rng.choice([1, 2, 0, 5_000_000, -1]) for _ in range(rng.choice([0, 0, 1, 2, 40]))]
    elif kind == 3:  # another dtype, values in its field or as raw tensor_content
        proto.dtype = rng.choice([d for d in types_pb2.DataType.values() if d != types_pb2.DT_STRING] + [999])
        proto.ClearField("string_val")
        n = rng.choice([0, 1, 3, 64])
        if rng.random() < 0.5:
            proto.tensor_content = random_bytes(rng, n * rng.choice([1, 2, 4, 8, 3]))
        else:
            field = rng.choice(["int_val", "int64_val", "float_val", "double_val", "bool_val", "half_val"])
            make = {"float_val": rng.random, "double_val": rng.random, "bool_val": lambda: True}
            getattr(proto, field).extend([make.get(field, lambda: rng.randrange(2**31))() for _ in range(n)])
        dims = [rng.choice([n, n + 1, 1, 256, 2**40])]
    elif kind == 4:  # strings sent as tensor_content, or no values at all
        proto.ClearField("string_val")
        if rng.random() < 0.5:
            proto.tensor_content = random_bytes(rng, rng.randrange(1, 256))
    if kind == 5 and rng.random() < 0.5:
        proto.tensor_shape.unknown_rank = True
    else:
        proto.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
            )
        )
    return proto
