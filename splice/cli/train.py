"""`splice train`: one flag per `TrainConfig` field (or `--config` YAML), then training; prints the final metrics."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..training.config import TrainConfig


def _json_or_str(value: str) -> Any:
    if value.lstrip()[:1] not in ("{", "[") and not value.isdigit():
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not valid JSON ({error.msg} at character {error.pos})"
        ) from None


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the `Args:` section of a dataclass docstring (`name[, name]: text`)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    args = (cls.__doc__ or "").split("Args:", 1)[-1]
    for line in args.splitlines():
        entry = re.match(r"^ {8}(\w+(?:, \w+)*)(?: \(.*?\))?: (.*)$", line)
        if entry:
            names = entry.group(1).split(", ")
            docs.update(dict.fromkeys(names, entry.group(2)))
        elif line.startswith(" " * 12) and names:  # a continuation line of the last entry
            docs.update({name: f"{docs[name]} {line.strip()}" for name in names})
    return docs


def _default(spec: dataclasses.Field) -> Any:
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


EXAMPLES = """examples:
  # from scratch, offline: JSON configs for both parts, built-in generated data
  splice train --encoder '{"model_type": "vit", "hidden_size": 128, "num_hidden_layers": 4,
                           "num_attention_heads": 4, "intermediate_size": 256, "image_size": 64, "patch_size": 8}' \\
               --decoder '{"model_type": "gpt2", "n_embd": 128, "n_layer": 3, "n_head": 4}' \\
               --data builtin:shapes --n-train 2000 --epochs 5 --output-dir runs/shapes
  # pretrained parts from local directories (HF_HUB_OFFLINE=1: nothing is fetched)
  HF_HUB_OFFLINE=1 splice train --encoder ./vit-dir --decoder ./gpt2-dir --data ./imagefolder --freeze encoder
  # the same fields from a YAML file; flags override it; continue an interrupted run exactly
  splice train --config train.yaml --resume
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and one flag per `TrainConfig` field, each with its description, default and choices."""
    # The copies in `training.config` (the library's own tuples import torch; a test keeps them equal).
    from ..training.config import CONDITIONINGS, FREEZE_POLICIES, PRESETS, TASKS, TrainConfig

    choices = {"conditioning": CONDITIONINGS, "freeze": FREEZE_POLICIES, "task": TASKS, "preset": PRESETS}
    parser.epilog = EXAMPLES
    docs = field_docs(TrainConfig)
    parser.add_argument("--config", help="YAML file of TrainConfig fields; flags given here override it")
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = _default(spec)
        described = docs.get(spec.name, spec.name.replace("_", " ")).rstrip(".")
        shown = "not set" if default is None else json.dumps(default) if isinstance(default, dict | list) else default
        structured = "dict" in str(spec.type) or "list" in str(spec.type)
        help_text = f"{described}{'; a value, or JSON (object or list)' if structured else ''} (default: {shown})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if spec.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif structured:
            parser.add_argument(flag, type=_json_or_str, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(spec.type).split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=None, choices=choices.get(spec.name), help=help_text)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed flags: the `--config` YAML, then the flags given (validated in `TrainConfig`)."""
    from ..training.config import TrainConfig

    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config", "verbose")}
    return TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig(**overrides)


def parse_config(argv: list[str]) -> TrainConfig:
    r"""
    The `TrainConfig` that `splice train ARGV...` would train, without training.

    Raises:
        `SystemExit(2)`: a flag argparse rejects (unknown, not a number, not a choice).
        `ConfigError`: a value `TrainConfig` rejects.
    """
    parser = argparse.ArgumentParser(prog="splice train", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return build_config(parser.parse_args(argv))


def check(args: argparse.Namespace) -> None:
    """The cheap checks, before torch loads: every value (`TrainConfig`), and `--resume` has a checkpoint to resume."""
    from ..training.config import check_resume

    check_resume(build_config(args))


def run(args: argparse.Namespace) -> None:
    """Build the `TrainConfig` (YAML, then the flags given), check what is cheap to check, and train; prints the final
    metrics as JSON (held-out, or on the training data without `--eval-data` on files: the log line says which)."""
    from ..training.config import check_resume

    config = build_config(args)
    check_resume(config)  # before torch and the model load
    from ..training.pipeline import train

    print(json.dumps(train(config), indent=2))
