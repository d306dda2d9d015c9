"""The `tfsr` command line: the one place that wires the pipeline stages together.

Each subcommand lives in the module that implements it and owns its own argument parser; this
module only dispatches, so `tfsr <command> --help` shows the options of that stage.

User errors (a missing or wrong path, a file that is not what the argument needs, an unreadable
config) are :class:`UsageError`: `tfsr` prints them as one line ``tfsr <command>: error: <message>``
and exits with status 2, without a traceback unless ``--verbose`` is given. Path arguments are checked
here, before the command's module is imported (several import TensorFlow or Beam, 2–10 s), so a typo
is answered in about a second; checks that need the command's own logic (a path from a config file,
the MovieLens lookup, a glob) are made by the command, which raises :class:`UsageError` too.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NamedTuple

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from tfsr import layout

# A saved tfsr model is a directory holding this file (tfsr.models.io.CONFIG_FILE); a `tfsr train` run
# directory holds the model under MODEL_SUBDIR (tfsr.training.workflows.MODEL_DIR). Both are named here
# rather than imported, because those modules import TensorFlow.
MODEL_CONFIG_FILE = "model_config.json"
MODEL_SUBDIR = "model"


class UsageError(SystemExit, ValueError):
    """A mistake on the command line; its message names the argument and the problem.

    A :class:`SystemExit`, so that a stage called on its own (``python -m beam_jobs.build_samples``, or
    ``run()`` in a test) also stops with the message rather than a traceback; a :class:`ValueError`,
    because it is one (a bad value given by the user). ``SystemExit`` comes first: it sets ``code``.
    """

    def __init__(self, message: str):
        super().__init__(message)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether a path is a filesystem URL (``gs://...``): read by Beam or TensorFlow, not checked here."""
    return "://" in str(path)


def _check_file(path: pathlib.Path) -> str | None:
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory, not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _check_json(path: pathlib.Path) -> str | None:
    problem = _check_file(path)
    if problem is None:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            problem = f"is not a JSON file ({err})"
    return problem


def _check_dir(path: pathlib.Path) -> str | None:
    if not path.exists():
        return "no such directory"
    return None if path.is_dir() else "is a file, not a directory"


def _check_samples(path: pathlib.Path) -> str | None:
    problem = _check_dir(path)
    if problem is None and not (path / layout.FEATURE_SPEC).is_file():  # what every reader of samples reads
        problem = f"is not a samples directory (no {layout.FEATURE_SPEC}; `tfsr preprocess` writes one)"
    return problem


def _check_model(path: pathlib.Path) -> str | None:
    problem = _check_dir(path)
    if problem is None and not any((d / MODEL_CONFIG_FILE).is_file() for d in (path, path / MODEL_SUBDIR)):
        problem = (
            f"is not a tfsr model (no {MODEL_CONFIG_FILE} in it or in its {MODEL_SUBDIR}/): "
            "give a `tfsr train` or `tfsr finetune` run directory, or its model/"
        )
    return problem


# kind -> check returning the problem with a path, or None
PATH_KINDS: dict[str, Callable[[pathlib.Path], str | None]] = {
    "file": _check_file,
    "json": _check_json,
    "dir": _check_dir,
    "samples": _check_samples,
    "model": _check_model,
}


def check_path(argument: str, value: str | os.PathLike, kind: str) -> None:
    """Raises :class:`UsageError` ``"<argument> <value>: <problem>"`` unless `value` is a `kind` path.

    Kinds (:data:`PATH_KINDS`): ``file`` (a readable file), ``json`` (a readable JSON file), ``dir``,
    ``samples`` (a `tfsr preprocess` output), ``model`` (a saved tfsr model or a run directory holding
    one), ``movielens`` (an ml-latest-small directory: :func:`tfsr.datasets.locate.find_movielens`).
    Filesystem URLs (``gs://``) pass unchecked: the stage's own filesystem reads them.
    """
    if is_remote(value):
        return
    if kind == "movielens":
        from tfsr.datasets.locate import find_movielens  # it raises UsageError: it imports this module

        find_movielens(value, argument)
        return
    problem = PATH_KINDS[kind](pathlib.Path(value))
    if problem is not None:
        raise UsageError(f"{argument} {value}: {problem}")


class Command(NamedTuple):
    """A subcommand: where it lives, its one-line help, and the path arguments checked before import."""

    module: str
    func: str  # takes argv, returns the exit status
    help: str
    paths: tuple[tuple[str, str], ...] = ()  # (flag, kind of check_path)
    takes_verbose: bool = False  # its own parser has --verbose (else the dispatcher removes the flag)


COMMANDS: dict[str, Command] = {
    "preprocess": Command(
        "beam_jobs.build_samples",
        "run",
        "raw logs -> multi-domain TFRecord samples (Apache Beam)",
        (("--movielens_dir", "movielens"), ("--domains", "json"), ("--text_encoder_dir", "dir")),
    ),
    "synth": Command("tfsr.datasets.synthetic", "main", "write synthetic raw logs in the generic log format"),
    # train / finetune check their resolved config (flags and --config file) themselves
    "train": Command("tfsr.training.cli", "train_main", "pretrain a model on the warm domains", (), True),
    "finetune": Command(
        "tfsr.training.cli",
        "finetune_main",
        "fine-tune a pretrained model on a cold-start domain",
        (),
        True,
    ),
    "evaluate": Command(
        "tfsr.training.cli",
        "evaluate_main",
        "per-domain evaluation report (JSON, markdown, plots)",
        (("--model", "model"), ("--samples_dir", "samples")),
    ),
    "export": Command(
        "tfsr.export",
        "main",
        "export a trained model as a TF Serving SavedModel",
        (("--model_dir", "model"), ("--samples_dir", "samples")),
    ),
    "batch-score": Command(
        "beam_jobs.batch_score",
        "run",
        "score samples or logs with an exported SavedModel (Beam)",
        (("--feature_spec", "json"),),
    ),
    "serve": Command(
        "serving.server",
        "main",
        "local model server speaking the TF Serving gRPC API",
        (("--model_config_file", "file"), ("--model_base_path", "dir")),
    ),
    "score": Command(
        "serving.client",
        "main",
        "score candidates against a model server over gRPC",
        (("--request", "json"),),
    ),
    "encode-text": Command(
        "tfsr.text.cli",
        "main",
        "export the frozen text encoder / embed texts",
        (("--input", "file"), ("--weights-dir", "dir")),
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tfsr [--verbose] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    lines += [
        "",
        "Run `tfsr <command> --help` for the options of one command. A mistake in the arguments is one",
        "line on stderr and exit status 2; --verbose (anywhere) adds its traceback.",
    ]
    return "\n".join(lines)


def subprocess_command(*args: object) -> list[str]:
    """The argv that runs `tfsr ARGS` in a child process with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "tfsr.cli", *map(str, args)]


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value given to `flag` (``--flag VALUE`` or ``--flag=VALUE``; the last wins, as in argparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def run_command(prog: str, func: Callable[[list[str]], int | None], argv: list[str], verbose: bool) -> int:
    """``func(argv)``'s exit status; a :class:`UsageError` becomes ``prog: error: message`` and status 2."""
    try:
        result = func(argv)
    except UsageError as err:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return int(result) if isinstance(result, int) else 0


def _dispatch(command: Command, argv: list[str]) -> int | None:
    for flag, kind in command.paths:
        value = flag_value(argv, flag)
        if value is not None:
            check_path(flag, value, kind)
    return getattr(importlib.import_module(command.module), command.func)(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tfsr` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = argv[:1] == ["--verbose"]
    argv = argv[1:] if verbose else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"tfsr {tfsr.__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tfsr: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if "--verbose" in rest:
        verbose = True
        if not command.takes_verbose:
            rest = [a for a in rest if a != "--verbose"]
    elif verbose and command.takes_verbose:
        rest.append("--verbose")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):  # their INFO lines drown the progress lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_command(f"tfsr {name}", lambda args: _dispatch(command, args), rest, verbose)


if __name__ == "__main__":
    sys.exit(main())
