"""Every difference between the releases splice supports, in one place; no other module branches on a version.

Each entry names the release that changed it. The supported range is `pyproject.toml`'s, tested by `.ci/run` at both
ends (README, "Compatibility").
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import CompileConfig
from transformers.modeling_outputs import Seq2SeqLMOutput

TRANSFORMERS_VERSION = transformers.__version__

# transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache`.
CACHE_NAME = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
CACHE_NAMES = ("cache", "past_key_values")

try:  # transformers 5.0 records `output_hidden_states` with hooks through this private collector
    from transformers.utils.output_capturing import _active_collector as active_output_collector
except ImportError:  # pragma: no cover - a release without it: hidden states are recorded without the swap
    active_output_collector = None

# jax 0.10 lowers `lax.top_k` to a StableHLO `composite` op that tensorflow 2.21's XlaCallModule (StableHLO 1.13)
# cannot load, so what splice lowers to TensorFlow takes its top-k from a stable sort (same values, same indices).
JAX2TF_SORT_TOP_K = True

# torch 2.3 added `torch._weight_int8pack_mm` (int8 weight x floating activations, per-channel scales).
_INT8PACK_MM = hasattr(torch, "_weight_int8pack_mm")

# transformers compiles `generate`'s decoding steps (static cache + `compile_config`) only on accelerators unless the
# private flag `CompileConfig._compile_all_devices` is set (a class attribute since 4.48, not a field; 5.23-5.25 read it
# in `_valid_auto_compile_criteria`). Without it a CPU decodes eagerly, silently: tests/test_compiled.py would see it.
_COMPILE_ALL_DEVICES = "_compile_all_devices"


def compile_config(mode: str) -> CompileConfig:
    """transformers' `CompileConfig` with `torch.compile`'s `mode`, honoured on every device (CPUs included)."""
    config = CompileConfig(mode=mode)
    setattr(config, _COMPILE_ALL_DEVICES, True)
    return config


def compiled_graph_count() -> int:
    """How many graphs `torch.compile` has compiled in this process (dynamo's private counter, read-only; 0 where a
    torch release lacks it). A call that compiled nothing reused a graph: after a second shape torch makes a graph's
    sizes symbolic ("automatic dynamic shapes"), so later batch sizes and lengths need no compilation."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo's counters
        return 0
    return int(counters["stats"]["unique_graphs"])


COMPATIBILITY_HINT = (
    "See the README's 'Compatibility' section: install a tested transformers release "
    "(`pip install 'transformers==<newest tested>'`) and report the failure with this message."
)


def pop_cache(kwargs: dict[str, Any]) -> Any:
    """The cache passed under either name (`cache` since transformers 5.24, `past_key_values` before), removed from
    `kwargs`; both at once is an error."""
    given = {name: kwargs.pop(name) for name in CACHE_NAMES if kwargs.get(name) is not None}
    for name in CACHE_NAMES:
        kwargs.pop(name, None)
    if len(given) > 1:
        raise ValueError("Pass the cache as `cache` or as `past_key_values`, not both.")
    return next(iter(given.values()), None)


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{name: cache}` under the name the installed transformers' models take."""
    return {CACHE_NAME: cache}


def output_cache(outputs: Any) -> Any:
    """The cache a transformers model output carries, under whichever name this release gives it."""
    return outputs.get(CACHE_NAME)


def int8pack_mm_dtype(rows: torch.Tensor, weight_int8: torch.Tensor) -> torch.dtype | None:
    """The activation dtype in which to run `torch._weight_int8pack_mm(rows [N, K], weight_int8 [out, K], scales)`
    here, or None where it cannot run (splice then multiplies by the dequantized weight).

    CPU only (the CUDA kernel has other shape rules). torch 2.13's CPU kernel crashes the process (a segmentation
    fault, not an exception) on bfloat16 activations when K is not a multiple of 16 (measured: K = 8, 24, 37, 56, 72
    crash, K = 16, 32, 48, 80, 96, 384 run), and its float32 path is about 18x slower than its bfloat16 path (one
    decoder's 36 layers at width 384, batch 1: 12.8 ms against 0.55 ms, 0.70 ms with the casts), so float32 rows are
    rounded to bfloat16 for it where K allows; float16 runs at any K.
    """
    if not _INT8PACK_MM or rows.device.type != "cpu" or weight_int8.device.type != "cpu":
        return None
    aligned = rows.shape[-1] % 16 == 0
    if rows.dtype == torch.bfloat16:
        return torch.bfloat16 if aligned else None
    if rows.dtype == torch.float32:
        return torch.bfloat16 if aligned else torch.float32
    return torch.float16 if rows.dtype == torch.float16 else None


def faiss_mapped_flat_flag(faiss: Any) -> int:
    """The `faiss.read_index` flag that maps a flat index's vectors from its file instead of reading them into memory:
    `IO_FLAG_MMAP_IFC`, which FAISS 1.9 (the floor) lacks and 1.15 has; without it (0) a flat index is read."""
    return getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
