"""Request validation: every name, dtype, shape and size a request declares, checked before it is used.

Owns the checks that turn a hostile or malformed request into ``INVALID_ARGUMENT`` (issue 17;
docs/SERVING.md "Hostile requests") before anything of the declared size is allocated: a TensorProto's
declared shape against the values it carries and ``max_batch_size``, input names, dtypes, ranks and batch
sizes against the signature, and the examples of a Classify input. Shared by gRPC, REST and warmup replay
(through :mod:`serving.inference`), so every transport refuses the same requests with the same messages.
REST's JSON decoding has its own size checks in :mod:`serving.rest`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.errors import ServingError, first_line

import grpc
import numpy as np
import tensorflow as tf

if TYPE_CHECKING:  # serving.versions imports this module (through serving.inference)
    from serving.versions import Servable


def _batch_size(name: str, array: np.ndarray) -> int:
    if array.ndim == 0:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} is a scalar; a batch (first dimension) is expected",
        )
    return int(array.shape[0])


def prepare_inputs(
    servable: Servable, signature: str, arrays: Mapping[str, np.ndarray], max_batch_size: int | None
) -> dict:
    """Checks names, dtypes, ranks and batch sizes against the signature; returns tensors to call it with.

    An input the signature declares as a scalar (shape ``[]``, such as ``k`` of ``retrieve``) is checked
    for its dtype and shape and takes no part in the batch-size checks.
    """
    specs = servable.input_specs[signature]
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input tensor alias not found in signature {signature!r}: {unknown}; "
            f"inputs expected: {sorted(specs)}",
        )
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Request inputs do not match required inputs for signature {signature!r}: missing {missing}",
        )
    tensors = {}
    batch = None
    for name, spec in specs.items():
        array = arrays[name]
        expected = spec.dtype
        got = "string" if array.dtype.kind in ("O", "S", "U") else tf.as_dtype(array.dtype).name
        if got != expected.name:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} has dtype {got} but signature {signature!r} expects {expected.name}",
            )
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} has shape {list(array.shape)} but signature {signature!r} "
                f"expects {spec.shape.as_list()}",
            )
        tensors[name] = tf.constant(array, dtype=expected)
        if spec.shape.rank == 0:  # a scalar input (the retrieval signatures' `k`) has no batch dimension
            continue
        size = _batch_size(name, array)
        if batch is not None and size != batch:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inputs have different batch sizes ({batch} and {size} for {name!r})",
            )
        batch = size
    if batch == 0:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"empty batch: input(s) {sorted(specs)} of signature {signature!r} hold 0 examples",
        )
    if max_batch_size is not None and batch is not None and batch > max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch size {batch} exceeds the server's max_batch_size {max_batch_size}: split the request",
        )
    return tensors


def check_tensor_proto(name: str, proto, max_batch_size: int | None) -> None:
    """Refuses a TensorProto whose declared shape would allocate more than the request carries.

    `tf.make_ndarray` fills a declared shape by repeating the last value given: a 58-byte request declaring
    a [10,000,000] string tensor of one value would cost hundreds of MB before any other check. The batch
    (first dimension) must be within `max_batch_size`, and a shape may only declare more elements than
    values are given when it is small (at most `max_batch_size` elements: TF's own broadcast of a
    repeated value).
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} declares an unknown shape {dims}"
        )
    if dims and max_batch_size is not None and dims[0] > max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch size {dims[0]} (declared shape {dims}) exceeds the server's max_batch_size "
            f"{max_batch_size}: split the request",
        )
    elements = math.prod(dims)
    if proto.tensor_content:
        try:
            given = len(proto.tensor_content) // max(tf.as_dtype(proto.dtype).size, 1)
        except TypeError:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} has an invalid dtype"
            ) from None
    else:
        given = sum(len(value) for field, value in proto.ListFields() if field.name.endswith("_val"))
    if elements > max(given, max_batch_size or 1):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} declares shape {dims} ({elements} elements) but carries {given} values",
        )


def to_ndarray(name: str, proto, max_batch_size: int | None = None) -> np.ndarray:
    check_tensor_proto(name, proto, max_batch_size)
    try:
        return tf.make_ndarray(proto)
    except Exception as err:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} is not a valid TensorProto: {first_line(str(err))}",
        ) from None


def examples_from_input(input_proto) -> list[bytes]:
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        out = []
        for example in input_proto.example_list_with_context.examples:
            merged = type(context)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            out.append(merged.SerializeToString())
        return out
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT, "Input is empty: set example_list or example_list_with_context"
    )
