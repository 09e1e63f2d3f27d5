"""The `splice` command line: `demo`, `train`, `caption`, `eval`, `datastore`; one module per command.

Each command's module imports only the standard library (and `TrainConfig`) at the top; only the chosen command builds
its flags and imports what it runs, so `splice --help` loads neither torch nor transformers from here.
"""

from __future__ import annotations

import sys

from splice_cli import overview

from . import caption, datastore, demo, train
from . import eval as evaluate

# Each module has `add_arguments(parser)` and `run(args)`; the one-line helps are `splice_cli.COMMANDS`.
COMMANDS = {"demo": demo, "train": train, "caption": caption, "eval": evaluate, "datastore": datastore}


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
        COMMANDS[chosen].add_arguments(commands[chosen])
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except ConfigError as error:
        if not exit_on_error:
            raise
        print(f"splice {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
