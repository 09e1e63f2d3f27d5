"""splice's ONNX runtime: run a directory written by `splice export` with onnxruntime, NumPy, `tokenizers` and Pillow.

Imports neither torch nor transformers nor the `splice` package (whose face loads torch), so a deployment installs
`onnxruntime numpy tokenizers pillow` and this package (`pip install --no-deps splice`); see the README's "Export".
"""

from __future__ import annotations

from importlib import metadata

from .model import FORMAT_VERSION, MANIFEST, ExportFormatError, OnnxCaptioner, OnnxSeq2Seq, read_manifest

try:
    __version__ = metadata.version("splice")
except metadata.PackageNotFoundError:  # run from a source tree
    __version__ = "unknown"

__all__ = ["FORMAT_VERSION", "MANIFEST", "ExportFormatError", "OnnxCaptioner", "OnnxSeq2Seq", "read_manifest"]
