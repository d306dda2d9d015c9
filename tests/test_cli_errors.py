"""Every `tfsr` subcommand answers a wrong path with one line on stderr and exit status 2, no traceback.

Each case runs `tfsr` in a child process through a probe that also reports whether TensorFlow or Beam
were imported: the path checks must answer before either loads (about a second, not 5-10 s).
"""

import json
import subprocess
import sys

from tfsr import cli

import pytest

# Runs `tfsr ARGS` in-process and prints which heavy modules it imported.
PROBE = (
    "import sys\n"
    "from tfsr import cli\n"
    "status = cli.main(sys.argv[1:])\n"
    "print(*sorted(m for m in ('tensorflow', 'apache_beam') if m in sys.modules))\n"
    "sys.exit(status)\n"
)


def _tfsr(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def paths(tmp_path):
    """A missing path, a plain file, an empty directory, a samples directory and a run directory."""
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "feature_spec.json").write_text("{}")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model_config.json").write_text("{}")
    (tmp_path / "file.txt").write_text("x\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "unknown_key.json").write_text(json.dumps({"no_such_key": 1}))
    return {
        "missing": tmp_path / "missing",
        "file": tmp_path / "file.txt",
        "empty": tmp_path / "empty",
        "samples": samples,
        "run": run,
        "bad_json": tmp_path / "bad.json",
        "unknown_key": tmp_path / "unknown_key.json",
        "out": tmp_path / "out",
    }


# (id, argv with {placeholders} from `paths`, the one stderr line expected)
CASES = [
    (
        "preprocess-missing-dir",
        "preprocess --movielens_dir {missing} --output_dir {out}",
        "tfsr preprocess: error: --movielens_dir {missing}: no such directory "
        "(ml-latest-small: movies.csv, ratings.csv, tags.csv)",
    ),
    (
        "preprocess-not-movielens",
        "preprocess --movielens_dir {empty} --output_dir {out}",
        "tfsr preprocess: error: --movielens_dir {empty} is not an ml-latest-small directory: "
        "missing ['movies.csv', 'ratings.csv', 'tags.csv']",
    ),
    (
        "preprocess-domains",
        "preprocess --logs {file} --domains {bad_json} --output_dir {out}",
        "tfsr preprocess: error: --domains {bad_json}: is not a JSON file "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
    ),
    (
        "train-samples",
        "train --samples_dir {missing} --output_dir {out}",
        "tfsr train: error: --samples_dir {missing}: no such directory",
    ),
    (
        "train-config-unreadable",
        "train --config {missing} --output_dir {out}",
        "tfsr train: error: --config {missing}: no such file",
    ),
    (
        "train-config-unknown-key",
        "train --config {unknown_key} --samples_dir {samples} --output_dir {out}",
        "tfsr train: error: unknown training config keys ['no_such_key']; known keys: ",
    ),
    (
        "finetune-pretrained",
        "finetune --samples_dir {samples} --pretrained {empty} --output_dir {out}",
        "tfsr finetune: error: --pretrained {empty}: is not a tfsr model (no model_config.json in it or in its "
        "model/): give a `tfsr train` or `tfsr finetune` run directory, or its model/",
    ),
    (
        "evaluate-model",
        "evaluate --model {missing} --samples_dir {samples}",
        "tfsr evaluate: error: --model {missing}: no such directory",
    ),
    (
        "evaluate-samples",
        "evaluate --model {run} --samples_dir {file}",
        "tfsr evaluate: error: --samples_dir {file}: is a file, not a directory",
    ),
    (
        "export-model",
        "export --model_dir {samples} --samples_dir {samples}",
        "tfsr export: error: --model_dir {samples}: is not a tfsr model",
    ),
    (
        "export-samples",
        "export --model_dir {run} --samples_dir {empty}",
        "tfsr export: error: --samples_dir {empty}: is not a samples directory (no feature_spec.json; "
        "`tfsr preprocess` writes one)",
    ),
    (
        "batch-score-feature-spec",
        "batch-score --saved_model {run} --input {file} --output_dir {out} --feature_spec {missing}",
        "tfsr batch-score: error: --feature_spec {missing}: no such file",
    ),
    (
        "serve-base-path",
        "serve --model_base_path {file}",
        "tfsr serve: error: --model_base_path {file}: is a file, not a directory",
    ),
    (
        "serve-config",
        "serve --model_config_file {empty}",
        "tfsr serve: error: --model_config_file {empty}: is a directory, not a file",
    ),
    (
        "score-request",
        "score --request {bad_json}",
        "tfsr score: error: --request {bad_json}: is not a JSON file",
    ),
    (
        "encode-text-input",
        "encode-text embed --input {missing} --out {out}.npy",
        "tfsr encode-text: error: --input {missing}: no such file",
    ),
    (
        "encode-text-weights",
        "encode-text identity --weights_dir {file}",
        "tfsr encode-text: error: --weights_dir {file}: is a file, not a directory",
    ),
]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_path_is_one_line_and_status_2_before_tensorflow_or_beam(paths, argv, expected):
    result = _tfsr(*argv.format(**paths).split())
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(**paths)), result.stderr
    assert result.stdout.strip() == ""  # neither tensorflow nor apache_beam was imported


# Checks made by the command itself, after its module (and TensorFlow or Beam) is imported.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            "batch-score --saved_model {run} --input {file} --output_dir {out}",
            "tfsr batch-score: error: --saved_model {run}: not a tfsr export ({run} is neither a "
            "SavedModel directory nor a model directory with integer versions)",
        ),
        (
            "serve --model_config_file {file}",
            "tfsr serve: error: --model_config_file {file}: 1:1 : Message type "
            '"tensorflow.serving.ModelServerConfig" has no field named "x".',
        ),
        (
            "score --request {unknown_key}",
            'tfsr score: error: --request {unknown_key}: expected {{"context": ..., "candidates": [...]}}',
        ),
        (
            "encode-text embed --input {file} --out {out}.csv",
            "tfsr encode-text: error: --out must end in .npy, .tfrecord or .tfrecord.gz, got {out}.csv",
        ),
    ],
    ids=["batch-score-not-an-export", "serve-bad-config", "score-bad-request", "encode-text-out"],
)
def test_checks_inside_the_command_are_one_line_and_status_2(paths, argv, expected):
    result = _tfsr(*argv.format(**paths).split())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == expected.format(**paths)


@pytest.mark.parametrize("where", ["after", "before"])
def test_verbose_adds_the_traceback(paths, where):
    args = ["evaluate", "--model", paths["missing"], "--samples_dir", paths["samples"]]
    result = _tfsr(*(args + ["--verbose"] if where == "after" else ["--verbose", *args]))
    assert result.returncode == 2
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert (
        result.stderr.splitlines()[-1]
        == f"tfsr evaluate: error: --model {paths['missing']}: no such directory"
    )


def test_flag_value_reads_both_spellings_and_the_last_wins():
    assert cli.flag_value(["--model", "a", "--x", "--model=b"], "--model") == "b"
    assert cli.flag_value(["--model", "a"], "--model") == "a"
    assert cli.flag_value(["--models", "a", "--model"], "--model") is None


def test_remote_paths_are_left_to_the_stage():
    cli.check_path("--samples_dir", "gs://bucket/samples", "samples")  # no error: Beam/TF read it


def test_model_file_names_match_the_model_code():
    from tfsr.models import io
    from tfsr.training import workflows

    assert (cli.MODEL_CONFIG_FILE, cli.MODEL_SUBDIR) == (io.CONFIG_FILE, workflows.MODEL_DIR)


def test_every_command_with_a_path_argument_is_covered():
    assert {argv.split()[0] for _, argv, _ in CASES} == set(cli.COMMANDS) - {"synth"}  # synth reads no file
