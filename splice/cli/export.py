"""`splice export MODEL_DIR OUT_DIR [--opset N] [--quantize int8]`: ONNX in optimum's layout, checked by a run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice export`."""
    parser.add_argument("model", help="a directory saved by splice or transformers (config.json + weights)")
    parser.add_argument("out_dir", help="where to write the ONNX files, configs and processor files")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="also write int8 *_quantized.onnx")
    parser.add_argument("--no-check", action="store_true", help="skip the final comparison with PyTorch")


def run(args: argparse.Namespace) -> None:
    """Export, then load the export and compare it with the PyTorch model (a mismatch exits with an error)."""
    from ..export import ExportError, export_onnx

    try:
        export_onnx(args.model, args.out_dir, opset=args.opset, quantize=args.quantize, check=not args.no_check)
    except ExportError as error:
        raise SystemExit(f"splice export: error: {error}") from None
