"""Multi-worker training: two `tfsr train` processes on 127.0.0.1 under MultiWorkerMirroredStrategy
(TF_CONFIG) complete, the chief alone writes the run directory, and the loss matches a single-worker run
of the same global batch within tolerance."""

import json
import socket
import subprocess
import time

from tfsr import layout
from tfsr.cli import subprocess_command
from tfsr.training import distributed
from tfsr.training.loop import read_history

import numpy as np
import pytest
from training_samples import (
    MODEL_FLAGS,
    checkpoint_steps,
    read_records,
    run_tfsr,
    subprocess_env,
    train_args,
    write_records,
    write_samples_dir,
)

FLAGS = ["--batch_size", 64, "--epochs", 1, "--log_every", 1, "--checkpoint_every", 4]


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_tf_config_parsing(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distributed.num_workers() == 1 and distributed.is_chief()
    assert distributed.strategy_from_env().num_replicas_in_sync == 1  # the default strategy
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert distributed.num_workers() == 2 and not distributed.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distributed.is_chief()
    with_chief = {"chief": ["127.0.0.1:3"], **cluster}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert distributed.num_workers() == 3 and not distributed.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distributed.tf_config()


def _two_workers(stage, args, run_dir) -> dict[str, tuple[int, str]]:
    """Runs `tfsr STAGE` as 2 workers on loopback; {worker: (exit status, output)}."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = {}
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs[f"worker{index}"] = subprocess.Popen(
            subprocess_command(stage, *args, "--output_dir", run_dir),
            env=subprocess_env(TF_CONFIG=tf_config),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=150)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return {name: (proc.returncode, outputs.get(name, "")) for name, proc in procs.items()}


def _single_then_two_workers(stage: str, args: list, single_run, multi_run) -> tuple[float, float]:
    """Runs `tfsr STAGE` single-worker, then as 2 workers on loopback; returns both wall times (s)."""
    # the single-worker reference first: three processes at once starve the workers' collectives on 2 cores
    started = time.perf_counter()
    single_proc = subprocess.run(
        subprocess_command(stage, *args, "--output_dir", single_run),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single_proc.returncode == 0, single_proc.stderr[-4000:]
    single_s = time.perf_counter() - started
    outcomes = _two_workers(stage, args, multi_run)
    multi_s = time.perf_counter() - started - single_s
    for name, (returncode, output) in outcomes.items():
        assert returncode == 0, f"{name} failed:\n{output[-4000:]}"
    outputs = {name: output for name, (_, output) in outcomes.items()}
    assert "MultiWorkerMirroredStrategy: 2 workers" in outputs["worker1"]
    return single_s, multi_s


def _assert_same_losses(single_run, multi_run, min_steps: int) -> None:
    single = read_history(single_run)
    multi = read_history(multi_run)  # written by the chief (worker 0) only
    # DATA auto-sharding splits every global batch between the workers: the same number of steps
    assert [h["step"] for h in multi] == [h["step"] for h in single] and len(single) >= min_steps
    assert sum(h["examples_per_sec"] > 0 for h in multi) == len(multi)
    loss_single = np.array([h["loss"] for h in single])
    loss_multi = np.array([h["loss"] for h in multi])
    rel = np.abs(loss_multi - loss_single) / loss_single
    print(
        f"\n2 workers vs 1 worker, {len(single)} steps:\n"
        f"  loss 1 worker : {np.round(loss_single, 4).tolist()}\n"
        f"  loss 2 workers: {np.round(loss_multi, 4).tolist()}\n"
        f"  mean loss {loss_single.mean():.4f} vs {loss_multi.mean():.4f}; max relative diff per step {rel.max():.4f}"
    )
    assert abs(loss_multi.mean() - loss_single.mean()) / loss_single.mean() < 0.02
    assert rel.max() < 0.05
    # the chief alone wrote the run directory; the other worker's temp dirs are gone
    assert (multi_run / "model" / "model_config.json").exists() and (multi_run / "config.json").exists()
    assert checkpoint_steps(multi_run) == checkpoint_steps(single_run)
    assert not list(multi_run.glob("workertemp_*")) and not list(multi_run.glob("*/workertemp_*"))


@pytest.mark.slow
def test_two_workers_on_loopback_match_single_worker_loss(tmp_path):
    samples, _ = write_samples_dir(tmp_path / "samples", rows=600)
    args = ["--samples_dir", samples, *MODEL_FLAGS, *FLAGS]  # --output_dir is given per run
    single_s, multi_s = _single_then_two_workers("train", args, tmp_path / "single", tmp_path / "multi")
    print(
        f"\ntrain, global batch 64: 1 worker {single_s:.1f} s, 2 workers {multi_s:.1f} s (process start included)"
    )
    _assert_same_losses(tmp_path / "single", tmp_path / "multi", min_steps=6)


@pytest.mark.slow
def test_two_workers_finetune_from_a_pretrained_model_match_single_worker(tmp_path):
    samples, _ = write_samples_dir(tmp_path / "samples", rows=600)
    pretrained = tmp_path / "pretrained"
    proc = run_tfsr("train", *train_args(samples, pretrained, "--batch_size", 64, "--max_steps", 3))
    assert proc.returncode == 0, proc.stderr[-4000:]
    args = [
        "--samples_dir",
        samples,
        "--pretrained",
        pretrained,
        "--split",
        "pretrain_train",
        "--domains",
        "rec_children",
        "--freeze",
        "L0",
        "L1",
        *FLAGS,
        "--epochs",  # ~100 rec_children rows: 3 epochs of global batch 64
        3,
    ]
    _single_then_two_workers("finetune", args, tmp_path / "single", tmp_path / "multi")
    _assert_same_losses(tmp_path / "single", tmp_path / "multi", min_steps=4)


@pytest.mark.slow
def test_a_nan_input_on_one_worker_stops_both_naming_the_feature(tmp_path):
    samples, _ = write_samples_dir(tmp_path / "samples", rows=600, shards=1)
    examples = read_records(samples)
    examples[300].features.feature["item_title_embedding"].float_list.value[1] = float("nan")
    write_records(next((samples / layout.PRETRAIN_TRAIN).glob("*.tfrecord.gz")), examples)
    run = tmp_path / "run"
    started = time.perf_counter()
    outcomes = _two_workers("train", ["--samples_dir", samples, *MODEL_FLAGS, *FLAGS], run)
    assert time.perf_counter() - started < 120  # neither worker waits forever for the other
    errors = {
        name: [line for line in output.splitlines() if "tfsr train: error:" in line]
        for name, (_, output) in outcomes.items()
    }
    assert all(returncode == 1 for returncode, _ in outcomes.values()), outcomes
    lines = [line for found in errors.values() for line in found]
    # the worker that read the row names it; the other says a worker failed; both at the same step
    assert any("NaN/Inf in input feature 'item_title_embedding'" in line for line in lines), lines
    assert any("another worker failed" in line for line in lines), lines
    steps = {int(line.split("train: step ")[1].split()[0]) for line in lines}
    assert len(steps) == 1 and max(checkpoint_steps(run)) < steps.pop()
