"""Multi-worker training with ``tf.distribute.MultiWorkerMirroredStrategy``, driven by ``TF_CONFIG``.

``tfsr train`` (and ``tfsr finetune``) read the standard ``TF_CONFIG`` environment variable. When it
describes a cluster of more than one worker, :func:`strategy_from_env` returns a
``MultiWorkerMirroredStrategy`` (synchronous data parallelism: every worker holds a full copy of the
model, gradients are all-reduced every step); otherwise the default (no-op) strategy, so a single-machine
run is unchanged. The rest follows TensorFlow's multi-worker guide:

* the model and the optimizer are created under ``strategy.scope()`` (``workflows``, ``Trainer.build``);
* ``batch_size`` is the **global** batch; the dataset is auto-sharded (:func:`shard_options`, by ``DATA``
  by default: every worker reads the same deterministic pipeline and keeps its slice of each global batch,
  so a 2-worker run sees the same batches as a 1-worker run; ``FILE`` reads disjoint files and needs at
  least as many files as workers);
* every worker saves checkpoints and the final model (saving may run collective ops, so all take part),
  but only the chief writes to the run directory; the others write to ``<run_dir>/workertemp_<id>/``
  and delete it (:func:`write_dir`); all workers restore from the chief's ``checkpoints/``, so the run
  directory must be on a filesystem every worker sees (GCS, NFS, or one machine);
* only the chief writes ``config.json``, ``history.json``, TensorBoard scalars and the report.

Example ``TF_CONFIG`` of worker 1 of 2 (worker 0, the chief, has ``"index": 0``)::

    {"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 1}}
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil

import tensorflow as tf

log = logging.getLogger("tfsr.training")

AUTO_SHARD_POLICIES = ("data", "file", "auto", "off")


def tf_config() -> dict:
    """The parsed ``TF_CONFIG`` ({} when unset or empty)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}")
    return config


def num_workers(config: dict | None = None) -> int:
    """Workers (``chief`` + ``worker`` tasks) in ``TF_CONFIG``'s cluster; 1 when there is none."""
    config = tf_config() if config is None else config
    cluster = config.get("cluster") or {}
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def task(config: dict | None = None) -> tuple[str | None, int]:
    """(task type, task index) of this process; (None, 0) without ``TF_CONFIG``."""
    config = tf_config() if config is None else config
    t = config.get("task") or {}
    return t.get("type"), int(t.get("index", 0))


def is_chief(config: dict | None = None) -> bool:
    """The chief writes the run directory: the ``chief`` task, or worker 0 when there is no chief."""
    config = tf_config() if config is None else config
    task_type, index = task(config)
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and not (config.get("cluster") or {}).get("chief")


def strategy_from_env(communication: str = "auto") -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker, else the default.

    Create it before any other TensorFlow work of the process (collective ops are configured at startup).
    `communication`: ``auto`` | ``ring`` (gRPC, what CPU clusters use) | ``nccl`` (GPUs).
    """
    config = tf_config()
    workers = num_workers(config)
    if workers <= 1:
        return tf.distribute.get_strategy()
    task_type, index = task(config)
    if task_type not in ("chief", "worker"):
        raise ValueError(
            f"TF_CONFIG task type {task_type!r} is not supported by MultiWorkerMirroredStrategy "
            "(chief / worker); ParameterServerStrategy clusters need their own driver (docs/TRAINING.md)"
        )
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[communication]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            # gradients all-reduced in packs, not one collective per variable: a model of a few hundred
            # variables otherwise spends its first step resolving a few hundred collective instances
            bytes_per_pack=32 * 1024 * 1024,
            implementation=implementation,
        )
    )
    log.info(
        "MultiWorkerMirroredStrategy: %d workers, this is %s %d%s, %d replicas in sync",
        workers,
        task_type,
        index,
        " (chief)" if is_chief(config) else "",
        strategy.num_replicas_in_sync,
    )
    return strategy


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether `strategy` spans several tasks (its public ``cluster_resolver`` names more than one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    cluster = resolver.cluster_spec()
    return sum(cluster.num_tasks(job) for job in cluster.jobs) > 1


def write_dir(directory: str | pathlib.Path, strategy: tf.distribute.Strategy | None = None) -> pathlib.Path:
    """Where this worker writes what belongs in `directory` of the run directory: `directory` itself on the
    chief (and on a single worker), ``<parent>/workertemp_<task id>/<name>`` on the other workers."""
    directory = pathlib.Path(directory)
    if not is_multi_worker(strategy) or is_chief():
        return directory
    _, index = task()
    return directory.parent / f"workertemp_{index}" / directory.name


def remove_temp(path: str | pathlib.Path, strategy: tf.distribute.Strategy | None = None) -> None:
    """Deletes what a non-chief worker wrote under its ``workertemp_<id>`` (no-op on the chief)."""
    path = pathlib.Path(path)
    if not is_multi_worker(strategy) or is_chief():
        return
    temp = next((p for p in [path, *path.parents] if p.name.startswith("workertemp_")), None)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)


def shard_options(policy: str = "data") -> tf.data.Options:
    """``tf.data.Options`` with the auto-shard policy of a multi-worker input pipeline."""
    if policy not in AUTO_SHARD_POLICIES:
        raise ValueError(f"auto-shard policy must be one of {AUTO_SHARD_POLICIES}, got {policy!r}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = {
        "data": tf.data.experimental.AutoShardPolicy.DATA,
        "file": tf.data.experimental.AutoShardPolicy.FILE,
        "auto": tf.data.experimental.AutoShardPolicy.AUTO,
        "off": tf.data.experimental.AutoShardPolicy.OFF,
    }[policy]
    return options
