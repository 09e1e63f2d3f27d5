"""Batch-1 decoding on a GPU: bf16, static cache + CUDA graphs, and the GPU's memory-bandwidth bound.

Run on a machine with a CUDA device: `python benchmarks/gpu.py [--size base] [--repeats 5] [--tokens 24]`;
`--dry-run` runs the CPU side only (argument checks, the checkpoint, the arms' construction and ids on the CPU,
nothing timed, nothing compiled), so the script is known to work before a device is lent.

Same checkpoint as bench.py (ViT + GPT-2 of `--size`, GPT-2's 50,257-token vocabulary, random weights redrawn), every
arm loading the same directory. Rows:

1. the bandwidth bound: the best of `--repeats` device-to-device copies of a 1 GiB buffer (bytes read + written /
   time), next to which every batch-1 row reports its weight bytes per step (bandwidth.py's count) and the fraction of
   the bound its time per step reaches ((t(T tokens) - t(1 token)) / (T - 1));
2. batch-1 greedy `generate`, T new tokens: transformers fp32 (the reference of every ratio), transformers bf16,
   splice bf16 eager, splice bf16 through the compiled step with CUDA graphs
   (`CompiledDecoding(mode="reduce-overhead")`: a static cache, so each step replays one graph), and splice fp32
   through the same (must give transformers fp32's ids exactly);
3. bench.py's generation rows in bf16, transformers vs splice eager: greedy batch 1 / 8 / 32 and beam-4 batch 8.

Ids: transformers and splice in one dtype must agree (bf16 with bf16, fp32 with fp32); bf16 against fp32 is reported
as token agreement. Compilation runs in the warm-up and is reported apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402
from bandwidth import weight_bytes_per_step  # noqa: E402
from bench import GENERATION_CASES, interleaved, require_same_ids, timed  # noqa: E402
from bench_models import SIZES, build_checkpoint, generate_kwargs, pixels  # noqa: E402
from bench_report import load_average  # noqa: E402

import splice  # noqa: E402
from splice.models.compiled_step import CompiledDecoding  # noqa: E402

COPY_BYTES = 2**30
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` bytes per second of a device-to-device copy (read + written)."""
    source = torch.ones(COPY_BYTES // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    return 2 * COPY_BYTES / min(timed(lambda: target.copy_(source), device) for _ in range(repeats))


def load(directory: str, library: str, dtype: str, device: torch.device) -> Any:
    cls = transformers.VisionEncoderDecoderModel if library == "transformers" else splice.VisionEncoderDecoderModel
    return cls.from_pretrained(directory, dtype=DTYPES[dtype]).to(device).eval()


def batch1_arms(directory: str, device: torch.device, compiled: bool) -> dict[str, tuple[Any, str]]:
    """name -> (a callable `(pixel_values, new_tokens) -> ids`, its dtype)."""

    def eager(model: Any) -> Any:
        return lambda pv, n: model.generate(pv, **generate_kwargs(n))

    arms = {
        "transformers fp32": (eager(load(directory, "transformers", "fp32", device)), "fp32"),
        "transformers bf16": (eager(load(directory, "transformers", "bf16", device)), "bf16"),
        "splice bf16": (eager(load(directory, "splice", "bf16", device)), "bf16"),
    }
    if compiled:
        for dtype in ("bf16", "fp32"):
            step = CompiledDecoding(load(directory, "splice", dtype, device), mode="reduce-overhead")
            arms[f"splice {dtype}, static cache + CUDA graphs"] = (
                lambda pv, n, s=step: s.generate(pv, **generate_kwargs(n)),
                dtype,
            )
    return arms


@torch.no_grad()
def batch1_rows(directory: str, device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    arms = batch1_arms(directory, device, compiled=not args.dry_run)
    bytes_per_step = {
        dtype: weight_bytes_per_step(load(directory, "splice", dtype, torch.device("cpu")).decoder)
        for dtype in ("fp32", "bf16")
    }
    image = pixels(1, torch.float32, seed=4).to(device)
    ids = {}
    for name, (generate, dtype) in arms.items():  # warm-up: compiles the compiled arms (timed apart)
        start = time.perf_counter()
        for tokens in (1, args.tokens):
            ids[name] = generate(image.to(DTYPES[dtype]), tokens)
        print(f"{name}: warm-up (compilation included) {time.perf_counter() - start:.1f} s", flush=True)
    for name, (_, dtype) in arms.items():
        if dtype == "fp32" or name.startswith("splice bf16,"):  # exact arms: the eager ids of their dtype
            reference = ids["transformers fp32" if dtype == "fp32" else "splice bf16"]
            require_same_ids(f"{name} (batch 1)", reference, ids[name], 1 + args.tokens)
    lengths = (1, args.tokens)
    functions = [lambda g=g, d=d, n=n: g(image.to(DTYPES[d]), n) for g, d in arms.values() for n in lengths]
    times = interleaved(*functions, args.repeats, device)
    rows, reference_time = [], None
    for index, (name, (_, dtype)) in enumerate(arms.items()):
        one, full = statistics.median(times[2 * index]), statistics.median(times[2 * index + 1])
        reference_time = full if reference_time is None else reference_time
        step = (full - one) / (args.tokens - 1)
        agreement = (ids[name] == ids["transformers fp32"])[:, 1:].float().mean().item()
        rows.append({
            "row": name, "generate_s": full, "vs_transformers_fp32": reference_time / full, "step_ms": 1e3 * step,
            "weight_mb_per_step": bytes_per_step[dtype] / 1e6, "bytes_per_s": bytes_per_step[dtype] / step,
            "agreement_with_fp32": agreement,
        })  # fmt: skip
    return rows


@torch.no_grad()
def generation_rows(directory: str, device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    """bench.py's generation rows in bf16: transformers vs splice, eager, identical ids asserted."""
    hf, sp = (load(directory, library, "bf16", device) for library in ("transformers", "splice"))
    rows = []
    for key, batch, beams in GENERATION_CASES:
        pv = pixels(batch, torch.bfloat16, seed=4).to(device)
        kwargs = generate_kwargs(args.tokens, beams)
        require_same_ids(f"bf16 {key}", hf.generate(pv, **kwargs), sp.generate(pv, **kwargs), 1 + args.tokens)
        reference, spliced = interleaved(
            lambda pv=pv, kw=kwargs: hf.generate(pv, **kw),
            lambda pv=pv, kw=kwargs: sp.generate(pv, **kw),
            args.repeats,
            device,
        )
        ratio = statistics.median(reference) / statistics.median(spliced)
        rows.append({"row": f"bf16 {key}, batch {batch}", "transformers_s": reference, "splice_s": spliced,
                     "ratio": ratio})  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per generate (at least 2)")
    parser.add_argument("--dry-run", action="store_true", help="CPU only: build and check the arms, time nothing")
    parser.add_argument("--output", default="benchmarks/gpu.json")
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (a step time is a difference of two lengths)")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch; run with --dry-run to check the CPU side")
    if args.dry_run:
        args.repeats, args.tokens = 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    name = "dry run on the CPU" if args.dry_run else torch.cuda.get_device_name(device)
    bound = None if args.dry_run else copy_bandwidth(device, args.repeats)
    shown = "n/a (dry run)" if bound is None else f"{bound / 1e9:.0f} GB/s"
    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; copy bandwidth {shown}")
    with tempfile.TemporaryDirectory(prefix="splice-gpu-") as directory:
        build_checkpoint(SIZES[args.size], directory)
        rows = batch1_rows(directory, device, args)
        generation = generation_rows(directory, device, args)
    print(f"\n| batch 1, {args.tokens} tokens | generate s | vs transformers fp32 | ms / step | MB / step | of bound |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        fraction = "n/a" if bound is None else f"{r['bytes_per_s'] / bound:.0%}"
        print(
            f"| {r['row']} | {r['generate_s']:.4f} | {r['vs_transformers_fp32']:.2f}x | {r['step_ms']:.2f} | "
            f"{r['weight_mb_per_step']:.1f} | {fraction} |"
        )
    print("\n" + "\n".join(f"{r['row']}: {r['ratio']:.2f}x transformers" for r in generation))
    print(f"load average at end {load_average():.2f}")
    if not args.dry_run:
        payload = {"device": name, "copy_bandwidth_bytes_per_s": bound, "batch1": rows, "generation": generation}
        Path(args.output).write_text(json.dumps(payload | {"settings": vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
