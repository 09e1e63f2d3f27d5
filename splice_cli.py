"""The `splice` console script. The command overview (`splice`, `splice --help`) is built here from the standard
library alone, so it appears at once; a command imports the library (`splice.cli`) and runs.

(`import splice` registers splice's classes with transformers' Auto classes, which loads torch and transformers: the
documented contract of the package, and the reason this entry point lives outside it.)
"""

from __future__ import annotations

import argparse
import sys

# Each command's one-line help; `splice.cli` builds the same overview from this table.
COMMANDS = {
    "demo": "train a small captioner on generated data, offline, and caption samples",
    "train": "train with Seq2SeqTrainer (flags or --config YAML)",
    "caption": "caption images with a trained model",
    "eval": "print a trained model's metrics on a data source",
    "datastore": "build or query a caption datastore for retrieval",
    "export": "export a model to ONNX (encoder + merged decoder) with a check against PyTorch",
    "serve": "serve a trained model over HTTP, batched (pip install 'splice[serve]')",
}


def overview() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its subcommands' parsers, without their flags (`-h` included: added with them)."""
    parser = argparse.ArgumentParser(prog="splice", description="Splice any encoder onto any decoder.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands = {name: subparsers.add_parser(name, help=text, add_help=False) for name, text in COMMANDS.items()}
    return parser, commands


def main(argv: list[str] | None = None) -> None:
    """`splice [command] ...`: the overview without the library; a known command runs through `splice.cli`."""
    words = sys.argv[1:] if argv is None else argv
    chosen = next((word for word in words if not word.startswith("-")), None)
    if chosen not in COMMANDS:
        overview()[0].parse_args(words)  # prints the overview (or the error) and exits
    from splice.cli import main as run

    run(argv)


if __name__ == "__main__":
    main()
