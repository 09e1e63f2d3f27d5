"""`splice export MODEL_DIR OUT_DIR [--opset N] [--quantize int8]`: ONNX in optimum's layout, checked by a run."""

from __future__ import annotations

import argparse

MIN_OPSET, MAX_OPSET = 14, 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice export`."""
    parser.add_argument("model", help="a directory saved by splice or transformers (config.json + weights)")
    parser.add_argument("out_dir", help="where to write the ONNX files, configs and processor files")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default 17)")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="also write int8 *_quantized.onnx")
    parser.add_argument("--no-check", action="store_true", help="skip the final comparison with PyTorch")


def check(args: argparse.Namespace) -> None:
    """The flags' checks that need no torch (run before it loads): the opset's range and the model directory."""
    from pathlib import Path

    from ..training.config import ConfigError

    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ConfigError(f"--opset={args.opset}: out of range; use {MIN_OPSET} to {MAX_OPSET} (default 17)")
    if not (Path(args.model) / "config.json").is_file():
        raise ConfigError(
            f"MODEL={args.model!r}: no config.json there; pass a directory written by `model.save_pretrained` or "
            "`splice train` (its output_dir)"
        )


def run(args: argparse.Namespace) -> None:
    """Export, then load the export and compare it with the PyTorch model. A refused model or a mismatch raises
    `ExportError`, which the command line prints as one line (exit 2)."""
    check(args)
    from splice_onnx import ExportFormatError

    from ..export import ExportError, export_onnx

    try:
        export_onnx(args.model, args.out_dir, opset=args.opset, quantize=args.quantize, check=not args.no_check)
    except ExportFormatError as error:  # the check could not load what was just written
        raise ExportError(f"{error} (OUT_DIR={args.out_dir!r})") from None
