"""Where a batch-1 decoding step's time goes: `torch.profiler` self time per op, per step.

Run: `python benchmarks/step_profile.py [--dtype fp32|bf16] [--quantize int8] [--compiled] [--tokens 24] [--top 12]`.

bench.py's `small` checkpoint (ViT-384/6L + GPT-2-384/6L, vocabulary 50,257), greedy, batch 1, `min_new_tokens` as in
bench.py. Per op: (self CPU time in a `generate` of `--tokens` + 1 new tokens - in one of 1 new token) / `--tokens`,
so the encoder pass and the first step cancel; the median of 3 profiles of each. `--compiled` decodes through
`splice.CompiledDecoding` (compiled in an untimed warm-up). The rows are ops' self times; their sum is the CPU time
of a step, which the profiler's own bookkeeping inflates a little: compare shares, not milliseconds, with
`bandwidth.py`'s step times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_models import SIZES, build_checkpoint, generate_kwargs, pixels  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import splice  # noqa: E402


def self_times(generate, image: torch.Tensor, tokens: int) -> dict[str, float]:
    """Median over 3 profiles: op name -> self CPU seconds in one `generate` of `tokens` new tokens."""
    runs = []
    for _ in range(3):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(image, **generate_kwargs(tokens))
        runs.append({event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()})
    return {key: statistics.median(run.get(key, 0.0) for run in runs) for key in set().union(*runs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--quantize", choices=("int8",), default=None)
    parser.add_argument("--compiled", action="store_true", help="through splice.CompiledDecoding")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--top", type=int, default=12, help="rows shown (the rest summed)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="splice-profile-") as directory:
        build_checkpoint(SIZES["small"], directory)
        model = splice.VisionEncoderDecoderModel.from_pretrained(directory, dtype=args.dtype, quantize=args.quantize)
    model = model.eval()
    generate = splice.CompiledDecoding(model, verbose=False).generate if args.compiled else model.generate
    image = pixels(1, model.dtype, seed=4)
    with torch.no_grad():  # warm-up (and compilation) of both lengths
        for tokens in (1, args.tokens + 1):
            generate(image, **generate_kwargs(tokens))
            generate(image, **generate_kwargs(tokens))
    long, short = self_times(generate, image, args.tokens + 1), self_times(generate, image, 1)
    per_step = defaultdict(float)
    for key in long:
        per_step[key] = max(0.0, (long[key] - short.get(key, 0.0)) / args.tokens)
    total = sum(per_step.values())
    ranked = sorted(per_step.items(), key=lambda item: -item[1])
    mode = f"{args.dtype}{' + ' + args.quantize if args.quantize else ''}{', compiled' if args.compiled else ''}"
    print(f"{mode}: {1e3 * total:.2f} ms of self CPU time per decoding step (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)\n")  # fmt: skip
    print("| op | ms / step | share |\n| --- | ---: | ---: |")
    for key, seconds in ranked[: args.top]:
        print(f"| `{key[:70]}` | {1e3 * seconds:.3f} | {seconds / total:.1%} |")
    rest = sum(seconds for _, seconds in ranked[args.top :])
    print(f"| every other op | {1e3 * rest:.3f} | {rest / total:.1%} |")


if __name__ == "__main__":
    main()
