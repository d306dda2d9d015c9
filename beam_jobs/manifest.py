"""The manifest of a samples directory: counts per split and domain, the reconciliation of every source,
the split cutoffs, shard counts, the number of items in the item catalogue (``"items"``), vocabulary
sizes, the text-feature mode (``"text_features"``: samples that carry their texts, ``"key"``, or also
their embeddings, ``"vector"``), the text encoder and the feature spec.

:func:`build_manifest` is pure (unit-tested); the pipeline feeds it the ledger of ``build_samples``.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict

from beam_jobs.writing import shard_path
from tfsr import layout
from tfsr.features import SCHEMA_VERSION, FeatureSpec
from tfsr.versions import stack_versions

from apache_beam.io.filesystems import FileSystems


def sample_stats(split_record):
    split, record = split_record
    return (split, record["domain"]), (1, record["label"], record["is_cold_item"])


def sum_columns(rows):
    return tuple(map(sum, zip(*rows, strict=True))) if rows else (0, 0, 0)


def flatten_sample_stats(element):
    (split, domain), (samples, positives, cold_items) = element
    yield ("samples", split, domain), samples
    yield ("positives", split, domain), positives
    yield ("cold_items", split, domain), cold_items


def build_manifest(
    stats: dict, spec: FeatureSpec, encoder_identity: dict, command: str, options: dict
) -> dict:
    """The manifest of a samples directory from the pipeline's aggregated counters (pure; unit-tested)."""
    counts: dict = defaultdict(dict)
    rows: dict = defaultdict(lambda: {"read": 0, "used": 0, "dead_lettered": {}, "filtered": {}})
    samples = {"built": 0, "written": 0, "filtered": {}}
    vocab_sizes, texts, cutoffs = {}, {}, defaultdict(dict)
    shards = dict.fromkeys(layout.SPLITS, 0)
    items = 0
    for key, value in stats.items():
        kind, *rest = key
        if kind == "samples":
            split, domain = rest
            counts[split].setdefault(domain, {})["samples"] = value
            samples["written"] += value
        elif kind in ("positives", "cold_items"):
            split, domain = rest
            counts[split].setdefault(domain, {})[kind] = value
        elif kind in ("read", "used"):
            rows[rest[0]][kind] = value
        elif kind in ("dead_lettered", "filtered"):
            rows[rest[0]][kind][rest[1]] = value
        elif kind == "samples_built":
            samples["built"] = value
        elif kind == "samples_filtered":
            samples["filtered"][rest[0]] = value
        elif kind == "vocab_size":
            vocab_sizes[rest[0]] = value
        elif kind == "unique_texts":
            texts[rest[0]] = value
        elif kind == "cutoff":
            cutoffs[rest[0]][rest[1]] = value
        elif kind == "shards":
            shards[rest[0]] = value
        elif kind == "items":
            items = value
    for per_domain in counts.values():
        for entry in per_domain.values():
            entry["label_rate"] = (
                round(entry["positives"] / entry["samples"], 4) if entry["samples"] else None
            )
    for ledger in rows.values():
        ledger["balanced"] = ledger["read"] == (
            ledger["used"] + sum(ledger["dead_lettered"].values()) + sum(ledger["filtered"].values())
        )
    samples["balanced"] = samples["built"] == samples["written"] + sum(samples["filtered"].values())
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "versions": stack_versions(),
        "options": options,
        "splits": list(layout.SPLITS),
        "domains": spec.domains.to_json(),
        "counts": {split: dict(sorted(counts[split].items())) for split in layout.SPLITS},
        "split_cutoffs": _split_cutoffs(cutoffs, options),
        "shards": shards,
        "items": items,
        "vocab_sizes": dict(sorted(vocab_sizes.items())),
        "text_embeddings": dict(sorted(texts.items())),
        "text_features": options.get("text_features", layout.TEXT_KEYS),
        "text_encoder": encoder_identity,
        "reconciliation": {
            "rows": dict(sorted(rows.items())),
            "samples": samples,
            "balanced": samples["balanced"] and all(ledger["balanced"] for ledger in rows.values()),
        },
        "feature_spec": spec.to_json(),
    }


def _split_cutoffs(cutoffs: dict, options: dict) -> dict:
    """What decided each split: the options and the cutoff timestamps the pipeline computed.

    pretrain: per_user mode has one cutoff per user (the options say how); global mode records the
    eval cutoff (rows after it: pretrain_eval) and the valid cutoff (rows after it, up to the eval
    cutoff: pretrain_valid). coldstart: rows after eval_cutoff are coldstart_eval; valid_start and
    finetune_start are the first timestamps of coldstart_valid and coldstart_finetune (ties at those
    timestamps are split by sample key). None: no rows to cut.
    """
    pretrain = {
        "mode": options.get("split_mode"),
        "eval_fraction": options.get("eval_fraction"),
        "valid_fraction": options.get("valid_fraction"),
    }
    if options.get("split_mode") == "global":
        pretrain |= {name: cutoffs["pretrain"].get(name) for name in ("eval_cutoff", "valid_cutoff")}
    coldstart = {
        "eval_fraction": options.get("coldstart_eval_fraction"),
        "valid_rows": options.get("coldstart_valid_rows"),
        "finetune_rows": options.get("coldstart_finetune_rows"),
    } | {name: cutoffs["coldstart"].get(name) for name in ("eval_cutoff", "valid_start", "finetune_start")}
    return {"pretrain": pretrain, "coldstart": coldstart, "shuffle_seed": options.get("shuffle_seed")}


def write_manifest(
    stats: dict, output_dir: str, spec: FeatureSpec, identity: dict, command: str, options: dict
) -> None:
    manifest = build_manifest(stats, spec, identity, command, options)
    for name, text in (
        (layout.MANIFEST, json.dumps(manifest, indent=2, sort_keys=False)),
        (layout.FEATURE_SPEC, spec.dumps()),
    ):
        with FileSystems.create(f"{output_dir}/{name}") as handle:
            handle.write((text + "\n").encode("utf-8"))


def write_empty_splits(stats: dict, output_dir: str) -> None:
    """An empty split still gets one empty shard, so readers see an empty dataset, not a missing one."""
    written = {key[1] for key, n in stats.items() if key[0] == "samples" and n}
    for split in layout.SPLITS:
        if split not in written:
            FileSystems.create(shard_path(output_dir, split, 0, 1)).close()
