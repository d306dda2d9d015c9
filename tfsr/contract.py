"""Names and checks every component of tfsr shares, owned here and derived everywhere else.

* The gate-weight axes fix the layout of the model's ``gate_weights [B, len(ENTITIES), len(ASPECTS)]``
  output (the paper's Aspect Gating Fusion, §3.2): rows are the entities, columns the aspects of each
  entity's features. Batch scoring, the serving client, the evaluation report and the feature spec read
  them from here.
* :class:`RowError` is the one error type of an unusable row: an input line that cannot be parsed, a
  record that violates the feature specification, a request value of the wrong type. Its ``reason``
  names the cause for dead letters and reconciliations; ``field`` names the feature when one is at fault.
* :func:`check_positive_int` is the one check of a positive integer argument (sizes, counts, widths).
* The retrieval signatures of an export (``tfsr export --retrieval_model_dir``): their names and the name
  of their scalar ``k`` input, shared by the exporter and the serving client.

This module imports nothing: every layer of tfsr, the Beam jobs and serving may import it.
"""

from __future__ import annotations

from typing import Any

ENTITIES: tuple[str, ...] = ("user", "query", "item")
ASPECTS: tuple[str, ...] = ("id", "text", "sparse")

RETRIEVE_SIGNATURE = "retrieve"  # context + k -> item_ids, scores [B, K]
RETRIEVE_AND_RANK_SIGNATURE = "retrieve_and_rank"  # -> item_ids, ctr, retrieval_scores, gate_weights
RETRIEVAL_K_INPUT = "k"  # scalar int32: items per context (K = min(k, catalogue size))


class RowError(ValueError):
    """A row (input line, sample record, request) that cannot be used.

    Args:
      reason: short machine-readable cause, e.g. ``"rating_out_of_range"`` or ``"invalid_user_id"``; dead
        letters and the reconciliations count rows by it.
      detail: a human explanation naming the offending value.
      field: the offending feature, when the problem is one feature's value (see :meth:`invalid`).

    Attributes:
      reason, detail, field: as given.
      problem: the `detail` (the name the feature-validation callers use).
    """

    def __init__(self, reason: str, detail: str, field: str | None = None):
        self.reason = reason
        self.detail = detail
        self.field = field
        super().__init__(f"feature '{field}': {detail}" if field is not None else f"{reason}: {detail}")

    @classmethod
    def invalid(cls, field: str, problem: str) -> RowError:
        """A feature value that violates the feature specification: reason ``invalid_<field>``."""
        return cls(f"invalid_{field}", problem, field=field)

    @property
    def problem(self) -> str:
        return self.detail


def check_positive_int(name: str, value: Any) -> int:
    """`value` when it is an int >= 1 (not a bool), else ValueError ``"<name> must be a positive int"``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
