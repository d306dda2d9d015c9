"""The split policy of every source: which rows train, which validate, which evaluate.

Pure, row-level rules shared by the MovieLens reader and the Beam job (``beam_jobs/splits.py`` applies
them to PCollections) for MovieLens and generic logs alike:

* per-user chronological (:func:`user_eval_cutoff`): each user's latest rows are held out;
* global (:func:`time_quantile`): one exact time quantile over all rows, the same in any input order;
* cold-start slices (:func:`cold_bounds`): the latest rows before the eval cutoff, by (timestamp,
  :func:`sample_key`), so ties are broken by content, never by input order;
* the item cold-start marker (:func:`is_cold_item`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable

from tfsr import layout


def sample_key(record: dict, seed: int) -> int:
    """A seeded 63-bit pseudo-random key of a sample that depends only on its content.

    The same rows get the same keys in any input order, so what is decided by key (the shard of a row,
    the order of rows in a shard, the tie-break between rows sharing a boundary timestamp) does not
    depend on log order. Identical rows share a key.
    """
    payload = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.blake2b(payload.encode("utf-8"), digest_size=8, key=str(seed).encode("ascii"))
    return int.from_bytes(digest.digest(), "little") >> 1  # 63 bits: Beam's VarIntCoder is signed


def user_eval_cutoff(timestamps: Iterable[int], eval_fraction: float) -> int:
    """The per-user chronological split point: rows with ``timestamp > cutoff`` go to evaluation.

    The latest ~`eval_fraction` of a user's rows are evaluation rows; rows sharing the boundary
    timestamp all stay in training, so no evaluation row is older than (or as old as) a training row
    of the same user. A user whose rows all share one timestamp is training-only.
    """
    ordered = sorted(timestamps)
    if not ordered:
        raise ValueError("user_eval_cutoff needs at least one timestamp, got none")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    # rounded first so that, e.g., 10 rows * (1 - (0.2 + 0.1)) is 7 rows, not ceil(7.000000000000001)
    num_train = max(1, math.ceil(round(len(ordered) * (1.0 - eval_fraction), 9)))
    return ordered[num_train - 1]


def split_of(timestamp: int, cutoff: int, eval_split: str, train_split: str) -> str:
    """`eval_split` when the row is strictly after the cutoff, else `train_split`."""
    return eval_split if timestamp > cutoff else train_split


def is_cold_item(train_count: int, max_train_count: int) -> int:
    """Item cold-start marker: 1 when the item appears in at most `max_train_count` training samples."""
    return int(train_count <= max_train_count)


def time_quantile(timestamp_counts: Iterable[tuple[int, int]], fraction: float) -> int | None:
    """The exact `fraction` quantile of the rows' timestamps from (timestamp, row count) pairs.

    The smallest timestamp t with at least ``max(1, ceil(fraction * N))`` of the N rows at or before
    it: the global counterpart of :func:`user_eval_cutoff`, so rows with
    ``timestamp > time_quantile(c, 1 - eval_fraction)`` are the latest ~eval_fraction. Computed from the
    sorted counts per distinct timestamp, it is the same for the same rows in any order (Beam's
    ApproximateQuantiles is not). None when there are no rows.
    """
    ordered = sorted(timestamp_counts)
    total = sum(count for _, count in ordered)
    if not total:
        return None
    rank = max(1, math.ceil(round(total * fraction, 9)))
    seen = 0
    for timestamp, count in ordered:
        seen += count
        if seen >= rank:
            return timestamp
    return ordered[-1][0]


def warm_split_of(timestamp: int, eval_cutoff: int, valid_cutoff: int) -> str:
    """pretrain_eval after the eval cutoff, pretrain_valid in (valid cutoff, eval cutoff], else train."""
    train_or_valid = split_of(timestamp, valid_cutoff, layout.PRETRAIN_VALID, layout.PRETRAIN_TRAIN)
    return split_of(timestamp, eval_cutoff, layout.PRETRAIN_EVAL, train_or_valid)


def cold_bounds(latest: list[tuple[int, int]], valid_rows: int, finetune_rows: int) -> dict:
    """First (timestamp, key) of the validation and of the fine-tune slice from the latest rows before the
    eval cutoff (largest first). With fewer rows than both slices want, they share them pro rata."""
    wanted = valid_rows + finetune_rows
    n_valid = valid_rows if len(latest) >= wanted else len(latest) * valid_rows // wanted
    valid, finetune = latest[:n_valid], latest[n_valid:wanted]
    return {"valid_start": valid[-1] if valid else None, "finetune_start": finetune[-1] if finetune else None}
