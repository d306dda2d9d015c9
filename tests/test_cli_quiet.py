"""A quiet, consistent CLI: no TensorFlow / Beam noise by default (``-v`` shows it), the same flags in
``train`` and ``finetune``, a pretraining that records no freeze, no temp folders left in the samples, a
compact training progress line."""

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

from tfsr import cli, layout
from tfsr.training import cli as training_cli
from tfsr.training.config import FREEZE_LEVELS, TrainConfig
from tfsr.training.loop import Trainer, format_progress

import numpy as np
import pytest
import tensorflow as tf
from training_samples import ToyRankingModel

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).parent / "data"
# What a CPU machine prints when nothing quiets it: TensorFlow's C++ runtime probing for CUDA (and the
# absl warning that precedes its first lines), Beam's warning when its BigQuery client is imported.
NOISE = ("cuda", "CUDA", "cuInit", "absl::InitializeLog", "apitools")

# Calls the function every entry point calls first, then does what commands do: loads TensorFlow, runs an
# op (CUDA is initialised then), imports the Beam module that warns about apitools.
PROBE = (
    "import sys\n"
    "from tfsr import cli\n"
    "cli.configure_output(verbose='-v' in sys.argv)\n"
    "import tensorflow as tf\n"
    "print(int(tf.constant(1) + 1))\n"
    "import apache_beam.io.gcp.internal.clients.bigquery\n"
)


def _env() -> dict:
    """The environment of a user's shell: no TF_CPP_MIN_LOG_LEVEL (the test setup sets one)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    return env


def _run(argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


def _noise(stderr: str) -> list[str]:
    return [marker for marker in NOISE if marker in stderr]


# ------------------------------------------------------------------------------------ quiet by default
def test_tfsr_help_and_a_command_loading_tensorflow_print_nothing_on_stderr():
    top = _run(cli.subprocess_command("--help"))
    assert top.returncode == 0 and top.stderr == ""
    assert "usage: tfsr [-v | --verbose] <command>" in top.stdout
    # `encode-text` imports TensorFlow (and TF Text) before parsing its arguments
    sub = _run(cli.subprocess_command("encode-text", "--help"))
    assert sub.returncode == 0, sub.stderr
    assert "usage: tfsr encode-text" in sub.stdout
    assert sub.stderr == ""


def test_configure_output_hides_tensorflow_and_beam_noise_and_verbose_shows_it():
    quiet = _run([sys.executable, "-c", PROBE])
    assert quiet.returncode == 0 and quiet.stdout == "2\n", quiet.stderr
    assert _noise(quiet.stderr) == [], quiet.stderr
    loud = _run([sys.executable, "-c", PROBE, "-v"])
    assert loud.returncode == 0, loud.stderr
    assert "apitools" in loud.stderr  # the probe does trigger the noise the default run hides
    assert _noise(loud.stderr), loud.stderr


def test_tensorflow_load_filter_keeps_other_lines():
    assert cli._is_load_noise(
        "I0000 00:00:1796255144.560348   31417 cudart_stub.cc:31] Could not find cuda drivers on your machine"
    )
    assert cli._is_load_noise(
        "E0000 00:00:1796255159.779324   31440 cuda_platform.cc:52] failed call to cuInit"
    )
    assert cli._is_load_noise(cli._ABSL_PREINIT + "\n")
    assert not cli._is_load_noise("F0000 00:00:1796255159.779324   31440 x.cc:52] Check failed")
    assert not cli._is_load_noise("Traceback (most recent call last):")
    assert not cli._is_load_noise("UserWarning: something of the user's")


def test_third_party_root_records_are_dropped_below_error():
    def record(path, level=logging.WARNING, name="root"):
        return logging.LogRecord(name, level, path, 1, "m", None, None)

    beam = "/venv/lib/python3.11/site-packages/apache_beam/io/gcp/internal/clients/bigquery/__init__.py"
    keep = cli._ThirdPartyRootRecords().filter
    assert not keep(record(beam))
    assert keep(record(beam, logging.ERROR))
    assert keep(record(beam, name="apache_beam.io"))  # a named logger: its level decides
    assert keep(record("/venv/lib/python3.11/site-packages/tfsr/cli.py"))
    assert keep(record(str(REPO / "beam_jobs" / "build_samples.py")))


def test_verbose_flag_is_accepted_anywhere_and_forwarded_to_train(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "configure_output", lambda verbose=False: seen.append(("configure", verbose)))
    monkeypatch.setattr(cli, "_dispatch", lambda command, argv: seen.append(argv) or 0)
    for argv in (["-v", "train", "--x"], ["train", "-v", "--x"], ["train", "--x", "--verbose"]):
        seen.clear()
        assert cli.main(argv) == 0
        assert seen == [("configure", True), ["--x", "--verbose"]], argv
    seen.clear()
    assert cli.main(["evaluate", "-v", "--x"]) == 0  # evaluate has no --verbose of its own
    assert seen == [("configure", True), ["--x"]]
    seen.clear()
    assert cli.main(["evaluate", "--x"]) == 0
    assert seen == [("configure", False), ["--x"]]


# ------------------------------------------------------------------------------------ consistent flags
def _printed_config(main, capsys, *flags) -> dict:
    assert main(["--samples_dir", "s", "--output_dir", "o", "--print_config", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_and_finetune_take_the_same_split_flag(capsys):
    assert _printed_config(training_cli.train_main, capsys)["split"] == "pretrain_train"
    assert (
        _printed_config(training_cli.train_main, capsys, "--split", "pretrain_eval")["split"]
        == "pretrain_eval"
    )
    assert _printed_config(training_cli.finetune_main, capsys)["split"] == "coldstart_finetune"
    tuned = _printed_config(
        training_cli.finetune_main, capsys, "--split", "coldstart_valid", "--set", "validation_split="
    )
    assert tuned["split"] == "coldstart_valid"


def test_pretraining_records_no_freeze_and_finetune_freezes_every_pretrained_level(capsys):
    assert TrainConfig().freeze == []
    assert _printed_config(training_cli.train_main, capsys)["freeze"] == []
    assert _printed_config(training_cli.finetune_main, capsys)["freeze"] == list(FREEZE_LEVELS)
    assert _printed_config(training_cli.finetune_main, capsys, "--freeze", "L0")["freeze"] == ["L0"]


def test_encode_text_flags_are_spelled_like_the_other_commands():
    from tfsr.text import cli as text_cli

    args = text_cli._parser().parse_args(["embed", "--input", "a.txt", "--out", "b.npy", "--batch_size", "8"])
    assert (args.batch_size, args.weights_dir) == (8, None)
    args = text_cli._parser().parse_args(["export", "--out", "d", "--weights_dir", "w", "--max_length", "64"])
    assert (args.weights_dir, args.max_length) == ("w", 64)
    assert dict(cli.COMMANDS["encode-text"].paths)["--weights_dir"] == "dir"


def test_evaluate_takes_model_dir_like_export(tmp_path):
    result = _run(
        cli.subprocess_command("evaluate", "--model_dir", tmp_path / "missing", "--samples_dir", tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"--model_dir {tmp_path / 'missing'}: no such directory")


# ------------------------------------------------------------------------------------ no temp debris
def test_remove_temp_dirs_deletes_only_empty_beam_temp_folders(tmp_path):
    for split in ("pretrain_train", "pretrain_eval"):
        (tmp_path / split / ".temp-beam-0f1e").mkdir(parents=True)
        (tmp_path / split / "part-00000-of-00001.tfrecord.gz").write_bytes(b"x")
    (tmp_path / "text_embeddings" / ".tempa1b2" / ".temp-nested").mkdir(parents=True)
    (tmp_path / "dead_letters" / ".temp-beam-busy").mkdir(parents=True)
    (tmp_path / "dead_letters" / ".temp-beam-busy" / "unfinished").write_text("x")
    (tmp_path / "vocab" / "beam-temp-user_id-0a1b").mkdir(parents=True)
    removed = layout.remove_temp_dirs(tmp_path)
    assert len(removed) == 5
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [
        "dead_letters",
        "dead_letters/.temp-beam-busy",  # not empty: a sink that did not finish, kept for inspection
        "dead_letters/.temp-beam-busy/unfinished",
        "pretrain_eval",
        "pretrain_eval/part-00000-of-00001.tfrecord.gz",
        "pretrain_train",
        "pretrain_train/part-00000-of-00001.tfrecord.gz",
        "text_embeddings",
        "vocab",
    ]
    assert layout.remove_temp_dirs("gs://bucket/samples") == []


@pytest.mark.slow
def test_preprocess_is_quiet_and_leaves_no_temp_folders(tmp_path):
    out = tmp_path / "samples"
    result = _run(
        cli.subprocess_command(
            "preprocess",
            "--movielens_dir",
            DATA / "ml_corrupt",
            "--text_encoder",
            "tiny",
            "--num_negatives",
            "2",
            "--output_dir",
            out,
        ),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert _noise(result.stderr) == [], result.stderr
    assert (out / layout.MANIFEST).is_file()
    assert [p for p in out.rglob("*") if p.name.startswith((".temp", "beam-temp-"))] == []
    assert not list(tmp_path.glob("samples.incomplete-*"))


# ------------------------------------------------------------------------------------ progress line
def test_progress_line_format():
    point = {"loss": 0.51234, "total_loss": 0.51234, "examples_per_sec": 4210.4}
    assert (
        format_progress("train", 150, 1200, 1, 2, point, 185.2)
        == "train: step 150/1,200 12% | epoch 1/2 | loss 0.5123 | 4,210 ex/s | ETA 3m05s"
    )
    regularised = {**point, "total_loss": 0.6}
    assert (
        format_progress("finetune", 7, None, 1, 20, regularised, None)
        == "finetune: step 7 | epoch 1/20 | loss 0.5123 total_loss 0.6000 | 4,210 ex/s"
    )
    assert format_progress("train", 10, 10, 3, 3, point, 0.0).endswith("| ETA 0s")
    assert format_progress("train", 5, 10, 1, 1, point, 7325).endswith("| ETA 2h02m")


def _toy_dataset(epoch, unknown_size=False):
    x = np.random.default_rng(0).standard_normal((96, 4)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices({"x": x, "label": (x[:, 0] > 0).astype("float32")})
    if unknown_size:  # like TFRecords: TensorFlow cannot tell the number of batches
        ds = ds.filter(lambda r: True)
    return ds.shuffle(96, seed=epoch).batch(16)  # 6 steps per epoch


PROGRESS = re.compile(
    r"^train: step (\d+)(?:/(\d+) \d+%)? \| epoch (\d)/2 \| loss \d+\.\d{4} \| [\d,]+ ex/s(?: \| ETA \S+)?$"
)


@pytest.mark.parametrize("unknown_size", [False, True])
def test_training_logs_one_progress_line_per_interval(tmp_path, caplog, unknown_size):
    tf.keras.utils.set_random_seed(0)
    trainer = Trainer(
        ToyRankingModel(), tf.keras.optimizers.Adam(0.05), tmp_path, log_every=2, checkpoint_every=100
    )
    with caplog.at_level(logging.INFO, logger="tfsr.training"):
        history = trainer.fit(lambda e: _toy_dataset(e, unknown_size), epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "tfsr.training"]
    matches = [PROGRESS.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches] == [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    totals = [m[2] for m in matches]
    # the total is known from the start when TensorFlow knows the dataset's size, else after epoch 1
    assert totals == (["12"] * 6 if not unknown_size else [None] * 3 + ["12"] * 3)
    assert ("ETA" in lines[-1]) and lines[-1].startswith("train: step 12/12 100%")
    assert {"loss", "examples_per_sec", "step", "epoch", "stage"} <= set(history[0])  # history unchanged
