"""The `splice` command line: `demo`, `train`, `caption`, `eval`, `datastore`; one module per command.

Each command's module imports only the standard library (and `TrainConfig`) at the top; only the chosen command builds
its flags and imports what it runs, so `splice --help` loads neither torch nor transformers from here.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from splice_cli import COMMANDS, overview

# The one command table is `splice_cli.COMMANDS` (name -> one-line help); the command `NAME` is the module
# `splice.cli.NAME`, with `add_arguments(parser)` and `run(args)`.


def main(argv: list[str] | None = None, exit_on_error: bool | None = None) -> None:
    r"""
    Parse the command line and run the command (`splice --help` lists them).

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        exit_on_error: print a bad value (`ConfigError`) as one line `splice CMD: error: ...` and exit 2, as argparse
            does for a bad flag; `False` raises it. Defaults to `True` from the console (`argv` not given), else
            `False` (callers of `main([...])` get the exception).
    """
    from ..training.config import ConfigError

    exit_on_error = argv is None if exit_on_error is None else exit_on_error
    argv = sys.argv[1:] if argv is None else argv
    parser, commands = overview()
    # The command is the first word; only its flags are built (building the others would import their choices).
    chosen = next((word for word in argv if not word.startswith("-")), None)
    if chosen in COMMANDS:
        commands[chosen].add_argument("-h", "--help", action="help", help="show this help message and exit")
        command(chosen).add_arguments(commands[chosen])
    args = parser.parse_args(argv)
    try:
        command(args.command).run(args)
    except ConfigError as error:
        if not exit_on_error:
            raise
        print(f"splice {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def command(name: str) -> ModuleType:
    """The module of the command `name` (`splice.cli.NAME`)."""
    if name not in COMMANDS:
        raise ValueError(f"{name!r} is not a splice command; the commands are {sorted(COMMANDS)}.")
    return importlib.import_module(f"{__name__}.{name}")
