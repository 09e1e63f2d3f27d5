"""Which backend serves a model directory: a list of loaders, tried in order.

A loader is a function `(model_dir, device, datastore, **torch_options) -> Backend | None` that returns a backend for
a directory it recognises, or `None` to let the next loader try (`torch_options`: `load_backend`'s dtype, quantize,
compile). PyTorch takes any splice directory, so other runtimes go before
it: onnxruntime serves a directory written by `splice export` (it has the manifest `splice_onnx.json`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backend import Backend

Loader = Callable[..., "Backend | None"]


def _torch_loader(model_dir: Path, device: str, datastore: str | None, **torch_options: Any) -> Backend:
    from .torch_backend import TorchBackend  # torch and transformers load with the model, not with the app

    return TorchBackend.from_directory(model_dir, device=device, datastore=datastore, **torch_options)


def _onnx_loader(model_dir: Path, device: str, datastore: str | None, **torch_options: Any) -> Backend | None:
    """A directory written by `splice export` (it has the manifest `splice_onnx.json`): onnxruntime, no torch."""
    from .onnx_backend import OnnxBackend, is_export

    if not is_export(model_dir):
        return None
    given = sorted(name for name, value in torch_options.items() if value)
    if given:
        raise ValueError(
            f"{', '.join(given)}: options of the PyTorch backend; model_dir={str(model_dir)!r} is an export "
            "(onnxruntime). Serve the PyTorch model directory, or an export written with `--quantize int8`"
        )
    return OnnxBackend.from_directory(model_dir, device=device, datastore=datastore)


# Tried in order; the first that returns a backend serves the directory. PyTorch takes any splice directory, so other
# runtimes (onnxruntime for `splice export` output) go before it.
LOADERS: list[Loader] = [_onnx_loader, _torch_loader]


def load_backend(
    model_dir: str | Path,
    device: str = "cpu",
    datastore: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    compile: bool = False,
) -> Backend:
    r"""
    The backend that serves `model_dir`.

    Args:
        model_dir: a directory saved by `save_pretrained` with its processor (or tokenizer) next to it.
        device: `"cpu"` or `"cuda"`.
        datastore (*optional*): SmallCap: retrieve prompts from this datastore (default: the one saved with the model).
        dtype, quantize, compile: PyTorch models only: compute in `"bf16"`/`"fp32"`, `"int8"` weight-only layers, a
            compiled decoding step (`TorchBackend.from_directory`).
    """
    for loader in LOADERS:
        backend = loader(Path(model_dir), device, datastore, dtype=dtype, quantize=quantize, compile=compile)
        if backend is not None:
            return backend
    raise ValueError(f"model_dir={str(model_dir)!r}: no backend can serve this directory")
