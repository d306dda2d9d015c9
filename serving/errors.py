"""The error every layer of the server raises: a gRPC status code (TF Serving's) and a message.

Owns :class:`ServingError` and :func:`first_line` (a TensorFlow error message trimmed to what a client can
act on). The version manager, request validation, inference, the gRPC service and the REST API all raise
or translate these, so the status codes and messages a client sees are decided in one place and stay the
same whichever transport carries them (REST maps the gRPC code to an HTTP status in :mod:`serving.rest`).
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """An error with a gRPC status code (TF Serving's codes) and a message naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def first_line(message: str, limit: int = 600) -> str:
    """The useful part of a (TensorFlow) error message: no graph-tracing frames, no node annotations."""
    lines = []
    for line in message.splitlines():
        text = line.strip()
        if (
            not text
            or line.startswith((" ", "\t"))
            or text.startswith(("Graph execution error", "Detected at node"))
            or "[[{{node" in text
        ):
            continue
        lines.append(text)
    message = " ".join(lines) or message.strip()
    return message if len(message) <= limit else message[:limit] + "..."
