"""Command-line inputs: image files, folders and globs expanded to paths; flag value checks shared by the commands."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

from ..training.config import ConfigError, loading, missing_path


def at_least_one(value: str) -> int:
    """argparse `type` of count flags (`--batch-size`, `--num-beams`, `--max-new-tokens`, `--n`): an integer ≥ 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {value!r}")
    return number


def add_decoding_arguments(parser: argparse.ArgumentParser, compile_help: str) -> None:
    """`--dtype`, `--quantize` and `--compile`: how the PyTorch model decodes (`splice caption`, `splice serve`)."""
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default=None, help="compute in this dtype (default: the saved model's)"
    )
    parser.add_argument(
        "--quantize", choices=("int8",), default=None, help="int8 weight-only linear layers (fastest with --dtype bf16)"
    )
    parser.add_argument("--compile", action="store_true", help=compile_help)


# What `SpliceProcessor.save_pretrained` writes: any one of each group (older transformers: preprocessor_config.json).
PROCESSOR_FILES = (("processor_config.json", "preprocessor_config.json"), ("tokenizer_config.json", "tokenizer.json"))


def load_model_and_processor(model_dir: str, auto_class: Any, with_processor: bool = True) -> tuple[Any, Any]:
    r"""
    The trained model in `model_dir` (or a hub id) and its `SpliceProcessor`; one-line errors for what is missing.

    Raises:
        `ConfigError`: no model there (naming the id and why), or no processor files (naming them and the fix).
    """
    from ..processing import SpliceProcessor

    folder = Path(model_dir)
    missing = missing_path("model", model_dir, "the MODEL argument")
    if missing is not None:
        raise missing
    if folder.is_file():
        raise ConfigError(
            f"model={model_dir!r} is a file; pass the model's directory (the output_dir of `splice train`)"
        )
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ConfigError(f"model={model_dir!r}: the folder has no config.json; pass the output_dir of `splice train`")
    with loading("model", model_dir):
        model = auto_class.from_pretrained(model_dir).eval()
    if not with_processor:
        return model, None
    missing = [
        " or ".join(group)
        for group in PROCESSOR_FILES
        if folder.is_dir() and not any((folder / n).is_file() for n in group)
    ]
    if missing:
        raise ConfigError(
            f"model={model_dir!r}: no processor saved with the model (missing {', '.join(missing)}); save it there "
            f"with SpliceProcessor(image_processor, tokenizer).save_pretrained({model_dir!r})"
        )
    with loading("model", model_dir, "processor"):
        return model, SpliceProcessor.from_pretrained(model_dir)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and globs, in order, without duplicates.

    Raises:
        `ConfigError`: an input that matches nothing, or inputs that hold no image file at all.
    """
    from ..data_io import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item))] or [Path(item)]
        for path in matches:
            if path.is_dir():
                paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
            elif path.exists():
                paths.append(path)
            else:
                raise ConfigError(f"inputs: no such file, folder or glob match: {item!r}; check the path")
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(
            f"the inputs {' '.join(repr(i) for i in inputs)} hold no image file (looked for {suffixes}); pass image "
            "files, folders of images or globs such as 'photos/*.jpg'"
        )
    return list(dict.fromkeys(paths))


def readable_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The paths that open as images, and `(path, reason)` for those that do not (skipped, never fatal alone)."""
    from ..data_io import UNREADABLE_IMAGE_ERRORS, open_image

    readable, skipped = [], []
    for path in paths:
        try:
            open_image(path)
            readable.append(path)
        except UNREADABLE_IMAGE_ERRORS as error:
            skipped.append((path, str(error).splitlines()[0][:200]))
    if paths and not readable:
        raise ConfigError(f"none of the {len(paths)} input files could be read as an image (first: {skipped[0][1]})")
    return readable, skipped


def report_skipped(skipped: list[tuple[Path, str]], shown: int = 5) -> None:
    """One stderr line: how many unreadable images were skipped, naming the first few."""
    if skipped:
        names = ", ".join(str(path) for path, _ in skipped[:shown]) + (", ..." if len(skipped) > shown else "")
        print(f"skipped {len(skipped)} unreadable image(s): {names}", file=sys.stderr)
