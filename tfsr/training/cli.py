"""``tfsr train``, ``tfsr finetune`` and ``tfsr evaluate``.

Examples::

    tfsr train    --samples_dir artifacts/samples --output_dir runs/pretrain --epochs 2
    tfsr finetune --samples_dir artifacts/samples --pretrained runs/pretrain --output_dir runs/coldstart \\
                  --batch_size 64 --epochs 20
    tfsr evaluate --model_dir runs/coldstart --samples_dir artifacts/samples --output_dir runs/coldstart/report

``train`` and ``finetune`` take the same flags (``--split``, ``--domains``, ``--batch_size``, ...); only their
defaults differ (``finetune``: :data:`tfsr.training.config.FINETUNE_DEFAULTS`).

Each training command takes ``--config FILE`` (JSON, keys of :class:`tfsr.training.config.TrainConfig`),
flags that override it, and ``--set key=value`` for any other key including the model's
(``--set model.gating=mean``). Re-running a command on the same ``--output_dir`` resumes from its latest
checkpoint (the step count continues); ``--fresh`` deletes the run directory's checkpoints first.

Mistakes in the arguments (a missing samples directory or model, an unreadable ``--config``, an unknown
key) are :class:`tfsr.cli.UsageError`: one line on stderr and exit status 2, before TensorFlow loads.
Faults end the command with exit status 1 and one clear line on stderr (no traceback): a NaN/Inf input
feature or loss (naming the step and the feature), a record that does not match the feature spec (naming
the feature), missing files. The latest checkpoint is then the last good one. With ``TF_CONFIG`` naming
several workers, ``train`` and ``finetune`` run under MultiWorkerMirroredStrategy (docs/TRAINING.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import sys

from tfsr.cli import UsageError, check_path
from tfsr.training.config import FINETUNE_DEFAULTS, FREEZE_LEVELS, REFIT_DIR, TrainConfig, resolve

log = logging.getLogger("tfsr.training")


def _common(parser: argparse.ArgumentParser, split_default: str) -> None:
    parser.add_argument("--config", help="JSON config file (TrainConfig keys); flags override it")
    parser.add_argument("--samples_dir", help="samples directory written by `tfsr preprocess`")
    parser.add_argument("--split", help=f"split to train on (default {split_default})")
    parser.add_argument(
        "--output_dir", help="run directory: checkpoints/, tensorboard/, history.json, model/"
    )
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--max_steps", type=int, help="cap on the global step (a resumed run continues to it)"
    )
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--domains", nargs="+", help="domains to train on (default: warm / cold-start domains)"
    )
    parser.add_argument("--log_every", type=int, help="steps between progress lines and history points")
    parser.add_argument("--checkpoint_every", type=int, help="steps between checkpoints")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        default=None,
        help="evaluate after training and write <output_dir>/report/",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=None,
        help="a Keras progress bar per epoch, tracebacks, and the libraries' own output",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete existing checkpoints instead of resuming"
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        default=None,
        help="after validation chose the epoch and the calibration, retrain a fresh model on the training and "
        "validation rows for that many epochs and keep it (docs/TRAINING.md)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set model.gating=mean (repeatable)",
    )
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and exit")


def _flags(args: argparse.Namespace, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


_COMMON_KEYS = (
    "samples_dir",
    "split",
    "output_dir",
    "batch_size",
    "epochs",
    "max_steps",
    "learning_rate",
    "seed",
    "domains",
    "log_every",
    "checkpoint_every",
    "evaluate",
    "verbose",
    "refit",
)


def _resolve(defaults, args: argparse.Namespace, flags: dict, sets) -> TrainConfig:
    """The config from defaults < --config < flags < --set; a bad file, key or value is a UsageError."""
    if args.config:
        check_path("--config", args.config, "json")
    try:
        return resolve(defaults, args.config, flags, sets)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _prepare(cfg: TrainConfig, args: argparse.Namespace) -> bool:
    """Prints the config (--print_config: False) or checks its paths and applies --fresh (True)."""
    if args.print_config:
        print(json.dumps(cfg.to_json(), indent=2))
        return False
    check_path("--samples_dir", cfg.samples_dir, "samples")
    if cfg.pretrained:
        check_path("--pretrained", cfg.pretrained, "model")
    out = pathlib.Path(cfg.output_dir)
    if args.fresh and (out / "checkpoints").exists():
        shutil.rmtree(out / "checkpoints")
        (out / "history.json").unlink(missing_ok=True)
    if args.fresh:
        shutil.rmtree(out / REFIT_DIR, ignore_errors=True)
    return True


def _run_stage(prog: str, fn, cfg):
    """Runs a stage; a data or numeric fault becomes one line on stderr and exit status 1."""
    from tfsr.training.loop import NonFiniteError, PeerWorkerError

    try:
        return fn(cfg), 0
    except (NonFiniteError, PeerWorkerError, ValueError, FileNotFoundError) as err:
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return None, 1


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfsr train", description="Pretrain a model on the warm domains.")
    _common(parser, TrainConfig.split)
    parser.add_argument(
        "--model_type",
        help="rankers: srfoundation | single_domain | shared_bottom | mmoe | ple | star | deepfm | dcn_v2; "
        "retrieval (two-tower on the foundation's encoders) | id_two_tower (ids only)",
    )
    parser.add_argument(
        "--pretrained",
        help="retrieval models: start from this ranker's L0 encoders and context fusions (a saved model or "
        "a `tfsr train` run directory)",
    )
    parser.add_argument(
        "--freeze", nargs="*", choices=FREEZE_LEVELS, help="with --pretrained: levels to freeze"
    )
    args = parser.parse_args(argv)
    sets = list(args.set)
    if args.model_type:
        sets.insert(0, f"model.model_type={args.model_type}")
    flags = _flags(args, (*_COMMON_KEYS, "pretrained"))
    if args.freeze is not None:
        flags["freeze"] = list(args.freeze)
    cfg = _resolve({}, args, flags, sets)
    if not _prepare(cfg, args):
        return 0
    from tfsr.training.workflows import run_train

    result, rc = _run_stage("tfsr train", run_train, cfg)
    if rc:
        return rc
    print(f"model saved to {result['model_path']} after {int(result['trainer'].step.numpy())} steps")
    return 0


def finetune_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tfsr finetune",
        description="Fine-tune a pretrained model on a cold-start domain with the chosen levels frozen.",
    )
    _common(parser, FINETUNE_DEFAULTS["split"])
    parser.add_argument("--pretrained", help="saved model, or a `tfsr train` run directory")
    parser.add_argument(
        "--freeze",
        nargs="*",
        choices=FREEZE_LEVELS,
        help="levels to freeze (default L0 L1 L2_shared: every pretrained weight, so the warm domains' predictions do not change; `--freeze` alone freezes nothing)",
    )
    parser.add_argument("--init_from", help="initialise the new domain's per-domain weights from this domain")
    args = parser.parse_args(argv)
    flags = _flags(args, (*_COMMON_KEYS, "pretrained", "init_from"))
    if args.freeze is not None:
        flags["freeze"] = list(args.freeze)
    cfg = _resolve(FINETUNE_DEFAULTS, args, flags, args.set)
    if not _prepare(cfg, args):
        return 0
    from tfsr.training.workflows import run_finetune

    result, rc = _run_stage("tfsr finetune", run_finetune, cfg)
    if rc:
        return rc
    print(
        f"model saved to {result['model_path']} after {int(result['trainer'].step.numpy())} steps "
        f"(frozen: {', '.join(cfg.freeze) or 'nothing'})"
    )
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tfsr evaluate",
        description="Per-domain AUC / GAUC / log loss, cold-start and item-cold-start slices, gate weights: "
        "report.json, report.md and PNG plots.",
    )
    parser.add_argument(
        "--model_dir",
        "--model",
        dest="model",
        required=True,
        help="saved model, or a run directory (adds its loss curves); --model is the older spelling",
    )
    parser.add_argument("--samples_dir", required=True, help="samples directory written by `tfsr preprocess`")
    parser.add_argument("--output_dir", help="where to write the report (default <run dir>/report)")
    parser.add_argument(
        "--splits",
        nargs="+",
        help="evaluation splits (default pretrain_eval, plus coldstart_eval when the model "
        "knows the cold-start domain)",
    )
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument(
        "--max_batches", type=int, help="evaluate only this many batches per split (smoke tests)"
    )
    parser.add_argument("--name", help="model name in the report")
    parser.add_argument("--no_plots", action="store_true")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=MODEL_DIR",
        help="retrieval models: evaluate this retrieval model too, in the same table (repeatable)",
    )
    args = parser.parse_args(argv)
    compare = {}
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--compare takes NAME=MODEL_DIR, got {item!r}")
        check_path("--compare", path, "model")
        compare[name] = path
    from tfsr.training.workflows import run_evaluate

    out = args.output_dir
    if out is None:
        base = pathlib.Path(args.model)
        out = (base if (base / "model").is_dir() else base.parent) / "report"
    if compare:
        from tfsr.training import retrieval

        rep = retrieval.run_evaluate(args.model, args.samples_dir, out, args.splits, compare, args.name)
        print(retrieval.format_report(rep), end="")
        return 0
    rep = run_evaluate(
        args.model,
        args.samples_dir,
        out,
        splits=args.splits,
        batch_size=args.batch_size,
        name=args.name,
        max_batches=args.max_batches,
        plots=not args.no_plots,
    )
    if "splits" in rep:  # a retrieval model
        from tfsr.training.retrieval import format_report

        print(format_report(rep), end="")
        return 0
    for name, m in rep["domains"].items():
        print(
            f"{name:>16}  n={m['count']:>7}  auc={m['auc']:.4f}  gauc={m.get('gauc', float('nan')):.4f}  "
            f"logloss={m['logloss']:.4f} (const {m['logloss_const']:.4f})"
        )
    print(f"report written to {out}/report.md")
    return 0
