"""The matmuls of one batch-1 decoding step, kernel by kernel: how fast each streams its weights.

Run: `python benchmarks/step_matmuls.py [--threads N] [--repeats 30]`.

bench.py's `small` decoder (GPT-2, 6 layers, width 384) and its LM head (50,257 x 384): per layer the self-attention
qkv and output projections, the cross-attention query and output projections (its key/value projection runs once per
`generate`) and the MLP's two. Each matrix is distinct, as in a real step, and the same set is multiplied repeatedly,
so the 50 MB of layers and the 77 MB head are read from the CPU's cache where it holds them (this machine's L3 is
300 MB): the figures are the kernels' best case, to set beside `bandwidth.py`'s in-situ step times and DRAM bound.
Kernels per dtype: `F.linear` on an `nn.Linear` weight `[out, in]`, `addmm` on a GPT-2 `Conv1D` weight `[in, out]`,
`torch.mv`, oneDNN's matmul on the unpacked weight (what `splice.onednn` uses), and in bf16 PyTorch's int8
weight-only kernel (`torch._weight_int8pack_mm`, what `splice.quantize` uses).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

WIDTH, LAYERS, VOCAB = 384, 6, 50257
# (in, out) per layer: self-attention qkv and output, cross-attention query and output, MLP up and down.
LAYER_SHAPES = [
    (WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)
]  # fmt: skip
_linear_pointwise = torch.ops.mkldnn._linear_pointwise


def best_of(calls: list[Callable[[], object]], repeats: int) -> float:
    """Median seconds of one pass over `calls` (after one untimed pass)."""
    for call in calls:
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for call in calls:
            call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rows(dtype: torch.dtype, repeats: int) -> list[tuple[str, float, int]]:
    """(kernel, seconds per step's worth of calls, bytes read) for the layers and the head in `dtype`."""
    torch.manual_seed(0)
    weights = [torch.randn(n, k, dtype=dtype) * 0.05 for _ in range(LAYERS) for k, n in LAYER_SHAPES]  # [out, in]
    conv1d = [w.t().contiguous() for w in weights]  # [in, out]
    biases = [torch.zeros(w.shape[0], dtype=dtype) for w in weights]
    head = torch.randn(VOCAB, WIDTH, dtype=dtype) * 0.05
    x = {k: torch.randn(1, k, dtype=dtype) for k in (WIDTH, 4 * WIDTH)}  # one position
    layer_bytes = sum(w.numel() * w.element_size() for w in weights)
    head_bytes = head.numel() * head.element_size()
    pairs = list(zip(weights, biases))
    kernels = {
        "layers, F.linear [out, in]": ([lambda w=w, b=b: F.linear(x[w.shape[1]], w, b) for w, b in pairs], layer_bytes),
        "layers, addmm [in, out] (Conv1D)": (
            [lambda w=w, b=b: torch.addmm(b, x[w.shape[0]], w) for w, b in zip(conv1d, biases)],
            layer_bytes,
        ),
        "layers, torch.mv": ([lambda w=w, b=b: torch.mv(w, x[w.shape[1]][0]) + b for w, b in pairs], layer_bytes),
        "layers, oneDNN (unpacked)": (
            [lambda w=w, b=b: _linear_pointwise(x[w.shape[1]], w, b, "none", [], "") for w, b in pairs],
            layer_bytes,
        ),
        "head, F.linear": ([lambda: F.linear(x[WIDTH], head)], head_bytes),
        "head, torch.mv": ([lambda: torch.mv(head, x[WIDTH][0])], head_bytes),
        "head, oneDNN (unpacked)": ([lambda: _linear_pointwise(x[WIDTH], head, None, "none", [], "")], head_bytes),
    }
    if dtype == torch.bfloat16:
        int8 = [torch.randint(-127, 128, w.shape, dtype=torch.int8) for w in weights]
        scales = [torch.rand(w.shape[0], dtype=dtype) for w in weights]
        head_int8, head_scale = torch.randint(-127, 128, head.shape, dtype=torch.int8), torch.rand(VOCAB, dtype=dtype)
        kernels["layers, int8 weight-only"] = (
            [lambda q=q, s=s: torch._weight_int8pack_mm(x[q.shape[1]], q, s) for q, s in zip(int8, scales)],
            sum(q.numel() for q in int8),
        )
        kernels["head, int8 weight-only"] = (
            [lambda: torch._weight_int8pack_mm(x[WIDTH], head_int8, head_scale)],
            head_int8.numel(),
        )
    with torch.no_grad():
        return [(name, best_of(calls, repeats), nbytes) for name, (calls, nbytes) in kernels.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| dtype | kernel | ms per step | GB/s |\n| --- | --- | ---: | ---: |")
    for dtype in (torch.float32, torch.bfloat16):
        for name, seconds, nbytes in rows(dtype, args.repeats):
            short = str(dtype).removeprefix("torch.")
            print(f"| {short} | {name} | {1e3 * seconds:.3f} | {nbytes / seconds / 1e9:.1f} |")


if __name__ == "__main__":
    main()
