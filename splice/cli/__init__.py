"""The `splice` command line: `demo`, `train`, `caption`, `eval`, `datastore`, ...; one module per command.

Each command's module imports only the standard library (and `splice.training.config`) at the top; only the chosen
command builds its flags and imports what it runs, so `splice --help` loads neither torch nor transformers from here,
and the console script parses a command's flags without them (`splice_cli.parse_without_torch`).

One error path: an error caused by the user's input or files (`USER_ERRORS`: a bad value, bad data, a missing file, a
missing optional package), wherever it is raised, prints one line `splice CMD: error: what, where, the fix` and exits
2; `--verbose` (or `SPLICE_VERBOSE=1`) prints the stack above it. Any other exception is a bug of ours and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from types import ModuleType

from splice_cli import COMMANDS, overview

# The one command table is `splice_cli.COMMANDS` (name -> one-line help); the command `NAME` is the module
# `splice.cli.NAME`, with `add_arguments(parser)` and `run(args)`.

# Errors caused by the user's input, as "module:class" (looked up only in modules already loaded: an error can only be
# of a class whose module was imported, and the command line imports nothing to classify one).
USER_ERRORS = (
    "splice.training.config:ConfigError",  # a flag, YAML key or path with a bad value
    "splice.data_io:DataError",  # a bad data record: file, line, field, value, fix
    "splice.training.trainer:CheckpointMismatchError",  # --resume from a checkpoint of another model
    "splice.export:ExportError",  # `splice export` refusing a model
)
# OSErrors about a path the user named (a missing file, no permission, a full disk): not bugs of ours.
USER_OS_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC)
# Optional packages (top-level import names) and the extra that installs each.
OPTIONAL_PACKAGES = {
    "peft": "train",
    "datasets": "train",
    "faiss": "train",
    "pycocoevalcap": "train",
    "jiwer": "train",
    "tensorboard": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
}
VERBOSE_VARIABLE = "SPLICE_VERBOSE"


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help showing each flag's default (`(default: X)`) unless its text already says it; examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if shown and "default" not in text and not isinstance(action, argparse._HelpAction):
            text += " (default: %(default)s)"
        return text


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser with the flags of the command named in `argv` (only that command's: building the others
    would import their choices)."""
    parser, commands = overview()
    chosen = next((word for word in argv if not word.startswith("-")), None)
    if chosen in COMMANDS:
        sub = commands[chosen]
        sub.formatter_class = DefaultsHelpFormatter
        sub.add_argument("-h", "--help", action="help", help="show this help message and exit")
        sub.add_argument(
            "--verbose",
            action="store_true",
            help=f"on an error, print the stack above the one-line message (also: {VERBOSE_VARIABLE}=1)",
        )
        command(chosen).add_arguments(sub)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line (`--help` prints and exits 0; a bad flag prints one line and exits 2)."""
    return build_parser(argv).parse_args(argv)


def verbose(args: argparse.Namespace) -> bool:
    """Whether errors show their stack: `--verbose`, or `SPLICE_VERBOSE` set to anything but 0."""
    return getattr(args, "verbose", False) or os.environ.get(VERBOSE_VARIABLE, "").strip() not in ("", "0")


def preflight(argv: list[str]) -> None:
    r"""
    Parse `argv` and run the command's cheap checks (its `check(args)`, if it has one: the standard library and
    `splice.training.config` only). What fails prints one line `splice CMD: error: ...` and exits 2; `--help` exits 0.
    The console script runs this before torch loads (`splice_cli.parse_without_torch`); `run` checks again.
    """
    args = parse(argv)
    check = getattr(command(args.command), "check", None)
    if check is None or verbose(args):  # verbose: the full run raises the same error, with its stack
        return
    from ..training.config import ConfigError

    try:
        check(args)
    except ConfigError as error:
        print(f"splice {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None, exit_on_error: bool | None = None) -> None:
    r"""
    Parse the command line and run the command (`splice --help` lists them).

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        exit_on_error: print a user error (`USER_ERRORS`, see the module docstring) as one line
            `splice CMD: error: ...` and exit 2, as argparse does for a bad flag; `False` raises it. Defaults to `True`
            from the console (`argv` not given), else `False` (callers of `main([...])` get the exception).
    """
    exit_on_error = argv is None if exit_on_error is None else exit_on_error
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    try:
        command(args.command).run(args)
    except KeyboardInterrupt:
        if not exit_on_error:
            raise
        print(f"splice {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        message = user_error_message(error)
        if message is None or not exit_on_error:
            raise
        if verbose(args):
            traceback.print_exc()
        print(f"splice {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error_message(error: BaseException) -> str | None:
    """The one line for an error caused by the user's input (see `USER_ERRORS`), or `None` for anything else."""
    for entry in USER_ERRORS:
        module_name, class_name = entry.split(":")
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name, ())):
            return " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.errno in USER_OS_ERRNOS and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}; check the path (and its permissions)"
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in OPTIONAL_PACKAGES:
        package = error.name.split(".")[0]
        return f"this needs {package}, which is not installed; pip install 'splice[{OPTIONAL_PACKAGES[package]}]'"
    return None


def command(name: str) -> ModuleType:
    """The module of the command `name` (`splice.cli.NAME`)."""
    if name not in COMMANDS:
        raise ValueError(f"{name!r} is not a splice command; the commands are {sorted(COMMANDS)}.")
    return importlib.import_module(f"{__name__}.{name}")
