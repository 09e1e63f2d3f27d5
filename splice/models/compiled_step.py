"""A compiled decoding step, opt-in: transformers' static cache and `torch.compile` of the model's forward.

`generate(..., cache_implementation="static")` gives the decoder a fixed-size cache, so every decoding step has the
same shapes, and transformers' `generate` then runs its steps through `torch.compile` of the model's forward
(`CompileConfig`; on a CPU only when asked, `splice._compat.compile_config`). The compiled graph is exact: the same
operations in the same order, fused (generated ids are identical to eager decoding; tests/test_compiled.py checks it
against each supported decoder, bf16 + int8 included). The LM head keeps its eager decoding-step kernel inside the
graph (`splice.onednn.step_linear`), and a decoding step traces as one graph (no graph break; tested).

Measured on a 2-core CPU at batch 1 (benchmarks/README.md, "A compiled decoding step"): 1.2x eager `generate` in fp32,
1.4x in bf16 + int8. The first shape compiles for 6-23 s on an idle machine (4-8 s with inductor's kernels cached on
disk; one to three minutes were measured on a busy one), a second about as long, later ones not at all: torch then
compiles one graph for any batch size and length ("automatic dynamic shapes"). That first compilation is why it is
**off by default**: `generate` would stall the first time it runs, and training-time evaluation would pay for it for
nothing. [`CompiledDecoding`] is the switch (also `splice caption --compile`, `splice serve --compile`): it prints one
line before the first call of a shape and one after it (compiled, or reused a graph), and falls back to eager
decoding, with a warning naming the reason, where a decoder or setting is not supported.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any, TextIO

import torch

from .._compat import compile_config, compiled_graph_count

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def unsupported_reason(model: Any, generate_kwargs: dict[str, Any]) -> str | None:
    """Why `model` cannot decode through a compiled static-cache step with these `generate` arguments, or None."""
    decoder = model.get_decoder()
    if not getattr(decoder, "_can_compile_fullgraph", False):
        return f"transformers' {type(decoder).__name__} does not support a static cache with torch.compile"
    if model.conditioning.positions_before_text(model, None) != 0:
        return (
            f"{model.conditioning.name} conditioning keeps encoder positions in the cache ahead of the text; a static "
            "cache cannot"
        )
    if (generate_kwargs.get("num_beams") or model.generation_config.num_beams or 1) > 1:
        return "beam search: transformers compiles the steps of greedy search and sampling only"
    if any(kwargs_name in generate_kwargs for kwargs_name in ("cache", "past_key_values", "cache_implementation")):
        return "a cache (or cache_implementation) was passed to generate; the compiled step brings its own"
    if model.device.type not in ("cpu", "cuda"):
        return f"device {model.device.type!r}: compiled only on cpu and cuda"
    if model.device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        return "torch.compile on a CPU needs a C++ compiler (inductor builds its kernels); none is on PATH"
    return None


class CompiledDecoding:
    r"""
    `generate` through a static cache and a compiled forward, compiled once per shape.

    Args:
        model: a splice model (`SpliceModel` or a composite).
        mode (`str`): `torch.compile`'s mode. `"default"` on a CPU; `"reduce-overhead"` (CUDA graphs) on a GPU.
        verbose (`bool`): print one line before the first call of a shape and one after it (compiled or not, how long).
        file (*optional*): where those lines go (default: standard output).

    Example:

    ```python
    >>> fast = CompiledDecoding(model)
    >>> ids = fast.generate(pixel_values, max_new_tokens=24)  # first call of this shape: compiles (tens of seconds)
    >>> ids = fast.generate(pixel_values, max_new_tokens=24)  # reuses the compiled step
    ```
    """

    def __init__(self, model: Any, mode: str = "default", verbose: bool = True, file: TextIO | None = None) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"mode={mode!r} is not a torch.compile mode; choose one of {COMPILE_MODES}.")
        self.model = model
        self.mode = mode
        self.compile_config = compile_config(mode)
        self.verbose = verbose
        self.file = file
        self.compiled_shapes: dict[tuple, float] = {}  # shape key -> seconds the first call took (compilation)
        self._warned: set[str] = set()

    def shape_key(self, inputs: torch.Tensor, generate_kwargs: dict[str, Any]) -> tuple:
        """What a compiled step is specialised to: batch, beams, maximum length, dtype, device."""
        config = self.model.generation_config
        beams = generate_kwargs.get("num_beams") or config.num_beams or 1
        new_tokens = generate_kwargs.get("max_new_tokens") or config.max_new_tokens
        length = new_tokens if new_tokens is not None else generate_kwargs.get("max_length", config.max_length)
        main_input = inputs if inputs is not None else generate_kwargs.get(self.model.main_input_name)
        batch = main_input.shape[0] if main_input is not None else None  # None: inputs given another way (embeddings)
        return batch, beams, length, self.model.dtype, str(self.model.device)

    def generate(self, inputs: torch.Tensor | None = None, **generate_kwargs: Any) -> Any:
        """`model.generate(inputs, **generate_kwargs)`, its decoding steps compiled where supported (same ids)."""
        reason = unsupported_reason(self.model, generate_kwargs)
        if reason is not None:
            if reason not in self._warned:
                self._warned.add(reason)
                logger.warning("splice: decoding eagerly, not compiled: %s.", reason)
            return self.model.generate(inputs, **generate_kwargs)
        key = self.shape_key(inputs, generate_kwargs)
        first = key not in self.compiled_shapes
        if first and self.verbose:
            batch, beams, length, dtype, device = key
            print(
                f"splice: compiling the decoding step (torch.compile mode={self.mode!r}, static cache) for batch "
                f"{batch}, {beams} beam(s), length {length}, {dtype}, {device}, unless a compiled graph fits it...",
                file=self.file,
                flush=True,
            )
        graphs, start = compiled_graph_count() if first else 0, time.perf_counter()
        output = self.model.generate(
            inputs, cache_implementation="static", compile_config=self.compile_config, **generate_kwargs
        )
        if first:
            self.compiled_shapes[key] = time.perf_counter() - start
            if self.verbose:
                done = "compiled in" if compiled_graph_count() > graphs else "no compilation needed, a graph fits:"
                seconds = self.compiled_shapes[key]
                print(f"splice: {done} {seconds:.1f} s (later calls reuse it)", file=self.file, flush=True)
        return output

    def caption(self, images: Any, processor: Any = None, **generate_kwargs: Any) -> list[str]:
        """`model.caption(images, processor, **generate_kwargs)` with this object's `generate`."""
        return self.model.caption(images, processor, generate=self.generate, **generate_kwargs)
