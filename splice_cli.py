"""The `splice` console script. The command overview (`splice`, `splice --help`) is built here from the standard
library alone, so it appears at once. A command's flags are parsed first without the library (`splice CMD --help` and
a bad flag answer at once, see `parse_without_torch`), then the command imports the library (`splice.cli`) and runs.

(`import splice` registers splice's classes with transformers' Auto classes, which loads torch and transformers: the
documented contract of the package, and the reason this entry point lives outside it.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types

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


def parse_without_torch(argv: list[str]) -> None:
    r"""
    Parse `splice CMD ARGV...` with the command's flags and run its cheap checks (`splice.cli.preflight`), loading
    splice's modules without `splice/__init__.py` (which imports torch): `--help` prints, and a bad flag or value is
    reported, in a fraction of a second. Returns when all pass, so the command then runs through `splice.cli`, which
    parses and checks again with the library loaded.

    The command modules' top level imports only the standard library and `splice.training.config` (tests hold them to
    it); should one import more, this falls back to the full import rather than failing.
    """
    spec = importlib.util.find_spec("splice")
    if spec is None or not spec.submodule_search_locations or "splice" in sys.modules:
        return
    package = types.ModuleType("splice")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["splice"] = package
    try:
        from splice.cli import preflight

        preflight(argv)  # `--help`, a bad flag and what the command checks cheaply exit here
    except Exception:  # any surprise: the full import below parses instead
        pass
    finally:  # the real package replaces these modules when the command runs
        for name in [name for name in sys.modules if name == "splice" or name.startswith("splice.")]:
            del sys.modules[name]


def main(argv: list[str] | None = None) -> None:
    """`splice [command] ...`: the overview without the library; a known command runs through `splice.cli`."""
    words = sys.argv[1:] if argv is None else argv
    chosen = next((word for word in words if not word.startswith("-")), None)
    if chosen not in COMMANDS:
        overview()[0].parse_args(words)  # prints the overview (or the error) and exits
    parse_without_torch(words)
    from splice.cli import main as run

    run(argv)


if __name__ == "__main__":
    main()
