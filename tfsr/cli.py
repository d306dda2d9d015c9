"""The `tfsr` command line: the one place that wires the pipeline stages together.

Each subcommand lives in the module that implements it and owns its own argument parser; this
module only dispatches, so `tfsr <command> --help` shows the options of that stage.
"""

from __future__ import annotations

import importlib
import logging
import sys

import tfsr  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)

# name -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "preprocess": (
        "beam_jobs.build_samples",
        "run",
        "raw logs -> multi-domain TFRecord samples (Apache Beam)",
    ),
    "synth": ("tfsr.datasets.synthetic", "main", "write synthetic raw logs in the generic log format"),
    "train": ("tfsr.training.cli", "train_main", "pretrain a model on the warm domains"),
    "finetune": ("tfsr.training.cli", "finetune_main", "fine-tune a pretrained model on a cold-start domain"),
    "evaluate": (
        "tfsr.training.cli",
        "evaluate_main",
        "per-domain evaluation report (JSON, markdown, plots)",
    ),
    "export": ("tfsr.export", "main", "export a trained model as a TF Serving SavedModel"),
    "batch-score": (
        "beam_jobs.batch_score",
        "run",
        "score samples or logs with an exported SavedModel (Beam)",
    ),
    "serve": ("serving.server", "main", "local model server speaking the TF Serving gRPC API"),
    "score": ("serving.client", "main", "score candidates against a model server over gRPC"),
    "encode-text": ("tfsr.text.cli", "main", "export the frozen text encoder / embed texts"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tfsr <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `tfsr <command> --help` for the options of one command."]
    return "\n".join(lines)


def subprocess_command(*args: object) -> list[str]:
    """The argv that runs `tfsr ARGS` in a child process with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "tfsr.cli", *map(str, args)]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tfsr` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):  # their INFO lines drown the progress lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(rest)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
