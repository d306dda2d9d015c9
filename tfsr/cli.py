"""The `tfsr` command line: the one place that wires the pipeline stages together.

Each subcommand lives in the module that implements it and owns its own argument parser; this
module only dispatches, so `tfsr <command> --help` shows the options of that stage.

User errors (a missing or wrong path, a file that is not what the argument needs, an unreadable
config) are :class:`UsageError`: `tfsr` prints them as one line ``tfsr <command>: error: <message>``
and exits with status 2, without a traceback unless ``--verbose`` is given. Path arguments are checked
here, before the command's module is imported (several import TensorFlow or Beam, 2–10 s), so a typo
is answered in about a second; checks that need the command's own logic (a path from a config file,
the MovieLens lookup, a glob) are made by the command, which raises :class:`UsageError` too.

Output is quiet by default (:func:`configure_output`, called first by every entry point): tfsr's own
INFO lines, no TensorFlow C++ logging (the CUDA probing lines a CPU machine prints), no third-party
warnings. ``-v`` / ``--verbose`` shows them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import logging
import os
import pathlib
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import NamedTuple

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from tfsr import layout
from tfsr.versions import format_versions, stack_versions

# A saved tfsr model is a directory holding this file (tfsr.models.io.CONFIG_FILE); a `tfsr train` run
# directory holds the model under MODEL_SUBDIR (tfsr.training.workflows.MODEL_DIR). Both are named here
# rather than imported, because those modules import TensorFlow.
MODEL_CONFIG_FILE = "model_config.json"
MODEL_SUBDIR = "model"


# ----------------------------------------------------------------------------- quiet by default
# Loggers of the libraries tfsr drives: their INFO and WARNING lines are noise for a tfsr user.
THIRD_PARTY_LOGGERS = ("apache_beam", "absl", "tensorflow", "tf_keras", "h5py", "grpc", "py.warnings")
_OWN_PACKAGES = ("tfsr", "beam_jobs", "serving", "benchmarks")
# What TensorFlow's C++ runtime writes straight to fd 2 while it loads, before any log level applies: the
# absl pre-initialisation warning and the CUDA probing (``cudart_stub.cc:31] Could not find cuda
# drivers``). Only I/W/E lines of that form are dropped; anything else written meanwhile is kept.
_ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_CPP_LOG_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+ +\d+ [\w.+-]+:\d+\] ")


def _is_load_noise(line: str) -> bool:
    return line.startswith(_ABSL_PREINIT) or bool(_CPP_LOG_LINE.match(line))


class _ThirdPartyRootRecords(logging.Filter):
    """Drops root-logger records below ERROR emitted by library code outside tfsr's packages (e.g.
    Beam's ``logging.warning("apitools not found, ...")`` when its BigQuery client is imported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or record.levelno >= logging.ERROR:
            return True
        parts = pathlib.PurePath(record.pathname).parts
        for i, part in enumerate(parts[:-1]):
            if part in ("site-packages", "dist-packages"):
                return parts[i + 1] in _OWN_PACKAGES
        return True


class _FilteredLoader(importlib.abc.Loader):
    """Executes a module with fd 2 captured, then writes back what was captured minus the load noise."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [
                    line
                    for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _is_load_noise(line)
                ]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()

    def __getattr__(self, name):  # resource readers and the like: the real loader's
        return getattr(self._loader, name)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, with a loader that filters what its C++ runtime prints while it loads."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


def configure_output(verbose: bool = False) -> None:
    """Sets up logging for a tfsr command: quiet by default, everything with `verbose`.

    The one place that decides what a command prints, called first by every entry point (:func:`main`,
    and the ``python -m`` entry of the stages). By default: tfsr's INFO lines; third-party loggers
    (Beam, absl, TensorFlow, ...) and Python warnings at ERROR only; unless the environment sets
    ``TF_CPP_MIN_LOG_LEVEL`` (then TensorFlow's C++ logging is left as it says), ``TF_CPP_MIN_LOG_LEVEL=3``
    (the CUDA lines a CPU machine prints) and the lines TensorFlow's C++ runtime writes while it loads,
    before any level applies, filtered out. With `verbose`, none of that: the libraries' warnings and
    TensorFlow's own log levels.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, _ThirdPartyRootRecords)]:
            handler.removeFilter(f)
    for finder in [f for f in sys.meta_path if isinstance(f, _QuietTensorFlowImport)]:
        sys.meta_path.remove(finder)
    level = logging.WARNING if verbose else logging.ERROR
    for name in THIRD_PARTY_LOGGERS:  # their INFO lines drown the progress lines, even with --verbose
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(not verbose)  # Python warnings of the libraries become py.warnings records
    if verbose:
        return
    for handler in root.handlers:
        handler.addFilter(_ThirdPartyRootRecords())
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:  # the user's choice of TensorFlow's C++ logging stands
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


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
        (("--model_dir", "model"), ("--model", "model"), ("--samples_dir", "samples")),
    ),
    "export": Command(
        "tfsr.export",
        "main",
        "export a trained model as a TF Serving SavedModel",
        (("--model_dir", "model"), ("--samples_dir", "samples"), ("--retrieval_model_dir", "model")),
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
        (("--input", "file"), ("--weights_dir", "dir")),
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tfsr [-v | --verbose] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    lines += [
        "",
        "Run `tfsr <command> --help` for the options of one command. A mistake in the arguments is one",
        "line on stderr and exit status 2. -v / --verbose (anywhere) adds its traceback and the libraries'",
        "own output (TensorFlow's C++ log, Beam's and absl's warnings), which is hidden by default.",
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


VERBOSE_FLAGS = ("-v", "--verbose")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tfsr` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    configure_output(verbose)  # before anything imports TensorFlow or Beam
    if argv[:1] in (["-v"], ["--verbose"]):
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(format_versions(stack_versions()))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tfsr: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    rest = [a for a in rest if a not in VERBOSE_FLAGS]
    if verbose and command.takes_verbose:
        rest.append("--verbose")
    return run_command(f"tfsr {name}", lambda args: _dispatch(command, args), rest, verbose)


if __name__ == "__main__":
    sys.exit(main())
