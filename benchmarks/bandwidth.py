"""Batch-1 decoding against the memory-bandwidth bound, and reduced precision (bf16, int8) against fp32.

Run: `python benchmarks/bandwidth.py [--size small] [--repeats 5] [--tokens 24] [--threads N] [--no-jax] [--output P]`.

At batch 1 a decoding step multiplies one position by every decoder weight, so its time is bounded below by reading
those weights from memory. This script measures:

1. the machine's memory bandwidth: the best of `--repeats` passes over a 512 MiB buffer, read-only (a sum) and a copy
   (bytes read + written); the read figure is the bound, since a decoding step only reads weights;
2. per arm, the bytes of weights one decoding step reads (counted from the module tree: every decoder layer, the whole
   LM head, one row of each embedding; GPT-2's cross-attention key/value projection is left out, since it runs once
   per `generate` and its result is cached), the time per step ((time of T new tokens - time of 1) / (T - 1): the
   encoder pass and the first step cancel), and the fraction of the bound reached (bytes / step time / bandwidth);
3. for each reduced-precision arm, the speed of `generate` (T new tokens, batch 1, greedy, encoder included) against
   transformers fp32 and splice fp32, and its agreement with fp32's tokens (free-running on the timed image, and
   teacher-forced on 8 more images: the fraction of positions whose argmax equals fp32's greedy token).

Arms: transformers fp32, splice fp32, splice bf16, splice fp32 + int8 (the int8 layers take bf16 inputs), splice
bf16 + int8 (the LM head and embeddings in bf16), the same with the LM head in int8 too (measured, not a default),
splice fp32, splice bf16 + int8 and its int8-head variant through the opt-in compiled decoding step
(`CompiledDecoding`: static cache + `torch.compile`, compiled in the warm-up, its compile time reported apart; ids
asserted equal to the same model decoding eagerly), and JAX fp32 (splice's Flax class, jit, unless `--no-jax`); `--arms`
picks some. Every arm loads the same checkpoint (bench.py's ViT + GPT-2 of `--size`, GPT-2's 50,257-token vocabulary,
random weights redrawn so that greedy decoding varies); transformers fp32 and splice fp32 must produce identical ids,
and each compiled arm the ids of its model decoding eagerly (else the run aborts). Arms are timed interleaved, median
of `--repeats`. Timings are ratios within one run: compare nothing across runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from bench import abort, cpu_model  # noqa: E402
from bench_models import SIZES, build_checkpoint, generate_kwargs, pixels  # noqa: E402
from bench_report import load_average  # noqa: E402
from torch import nn  # noqa: E402

import splice  # noqa: E402
from splice.models.compiled_step import CompiledDecoding  # noqa: E402
from splice.precision import quantize  # noqa: E402

BUFFER_BYTES = 512 * 2**20
# Projections of the encoder states, computed once per `generate` and kept in the cache: not read per step.
ONCE_PER_GENERATE = ("crossattention.c_attn",)
AGREEMENT_IMAGES = 8
REQUIRED_ARMS = ("transformers fp32", "splice fp32")  # the ratios' denominators
COMPILED_ARMS = ("splice fp32", "splice bf16 + int8", "splice bf16 + int8, LM head int8")


def memory_bandwidth(repeats: int) -> dict[str, float]:
    """Best-of-`repeats` bytes per second: read-only (`sum` over the buffer) and copy (read + written)."""
    source = torch.ones(BUFFER_BYTES // 4)
    target = torch.empty_like(source)
    source.sum(), target.copy_(source)  # warm-up: pages faulted in, thread pool started
    read = min(timed(lambda: source.sum()) for _ in range(repeats))
    copy = min(timed(lambda: target.copy_(source)) for _ in range(repeats))
    return {"read": BUFFER_BYTES / read, "copy": 2 * BUFFER_BYTES / copy}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes_per_step(decoder: nn.Module) -> int:
    """Bytes of weights one batch-1 decoding step reads: each leaf module's parameters and buffers once (a tied
    tensor counts once, as the LM head), one row per embedding lookup, minus `ONCE_PER_GENERATE` projections."""
    seen: set[int] = set()
    total = 0
    for name, module in decoder.named_modules():
        if next(module.children(), None) is not None or name.endswith(ONCE_PER_GENERATE):
            continue
        if isinstance(module, nn.Embedding):  # a lookup reads one row per position, not the table
            total += module.weight.shape[1] * module.weight.element_size()
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor is not None and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


class Arm:
    """One way of running the checkpoint: `generate(pixel_values, new_tokens)` -> ids `[B, 1 + new_tokens]`."""

    def __init__(self, name: str, model: Any, dtype: torch.dtype | None, bytes_per_step: int) -> None:
        self.name, self.model, self.dtype, self.bytes_per_step = name, model, dtype, bytes_per_step
        self.times: dict[int, list[float]] = {}

    def generate(self, pixel_values: torch.Tensor, new_tokens: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model.generate(pixel_values.to(self.dtype), **generate_kwargs(new_tokens))

    def logits(self, pixel_values: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(pixel_values=pixel_values.to(self.dtype), decoder_input_ids=decoder_input_ids).logits


class JaxArm(Arm):
    """splice's Flax class on the same checkpoint; its `generate` has no `min_new_tokens`, so eos is an id that fp32
    greedy decoding never produces here (the ids are compared with fp32's)."""

    def __init__(self, directory: str, eos_token_id: int, bytes_per_step: int) -> None:
        from splice.flax import FlaxVisionEncoderDecoderModel

        model = FlaxVisionEncoderDecoderModel.from_pretrained(directory)
        super().__init__("JAX fp32 (jit)", model, None, bytes_per_step)
        self.eos_token_id = eos_token_id
        self.compile_seconds: dict[int, float] = {}

    def generate(self, pixel_values: torch.Tensor, new_tokens: int) -> torch.Tensor:
        kwargs = {"max_new_tokens": new_tokens, "eos_token_id": self.eos_token_id, "do_sample": False}
        return torch.from_numpy(np.asarray(self.model.generate(pixel_values.numpy(), **kwargs).sequences))


class CompiledArm(Arm):
    """An arm's model through the opt-in compiled decoding step (`CompiledDecoding`: static cache + `torch.compile`);
    each length is its own static-cache shape, so each compiles once, in the warm-up (timed apart). Its ids must equal
    those of `eager`, the same model decoding eagerly."""

    def __init__(self, eager: Arm, model: nn.Module) -> None:
        super().__init__(f"{eager.name}, compiled step", model, eager.dtype, eager.bytes_per_step)
        self.eager = eager
        self.compiled = CompiledDecoding(model)
        self.compile_seconds = self.compiled.compiled_shapes

    def generate(self, pixel_values: torch.Tensor, new_tokens: int) -> torch.Tensor:
        with torch.no_grad():
            return self.compiled.generate(pixel_values.to(self.dtype), **generate_kwargs(new_tokens))


def build_arms(directory: str, jax: bool, eos_for_jax: int, only: list[str] | None = None) -> list[Arm]:
    def spliced(dtype: str | None = None, quantize: str | None = None) -> nn.Module:
        return splice.VisionEncoderDecoderModel.from_pretrained(directory, dtype=dtype, quantize=quantize).eval()

    def int8_head() -> nn.Module:  # measured, not the default: the LM head in int8 too
        return quantize(spliced("bf16"), "int8", include_lm_head=True)

    reference = transformers.VisionEncoderDecoderModel.from_pretrained(directory).eval()
    loaders = {
        "transformers fp32": (lambda: reference, torch.float32),
        "splice fp32": (spliced, torch.float32),
        "splice bf16": (lambda: spliced("bf16"), torch.bfloat16),
        "splice fp32 + int8": (lambda: spliced(None, "int8"), torch.float32),
        "splice bf16 + int8": (lambda: spliced("bf16", "int8"), torch.bfloat16),
        "splice bf16 + int8, LM head int8": (int8_head, torch.bfloat16),
    }
    wanted = {name for name in loaders if only is None or name in {*only, *REQUIRED_ARMS}}
    models = {name: (load(), dtype) for name, (load, dtype) in loaders.items() if name in wanted}
    arms = [Arm(name, model, dtype, weight_bytes_per_step(model.decoder)) for name, (model, dtype) in models.items()]
    # The compiled step of splice fp32 (always) and of the fastest reduced-precision modes (when they run).
    compiled = [CompiledArm(arm, loaders[arm.name][0]()) for arm in arms if arm.name in COMPILED_ARMS]
    arms += compiled
    if jax:
        arms.append(JaxArm(directory, eos_for_jax, arms[1].bytes_per_step))
    return arms


def agreement(arm: Arm, reference_ids: torch.Tensor, image: torch.Tensor, images: torch.Tensor, ids8: torch.Tensor):
    """(free-running on the timed image, teacher-forced on `images`) agreement with fp32's greedy tokens."""
    free = (arm.generate(image, reference_ids.shape[1] - 1) == reference_ids)[:, 1:].float().mean().item()
    if isinstance(arm, JaxArm):
        return free, None
    forced = (arm.logits(images, ids8[:, :-1]).argmax(-1) == ids8[:, 1:]).float().mean().item()
    return free, forced


def run(args: argparse.Namespace) -> dict[str, Any]:
    bandwidth = memory_bandwidth(args.repeats)
    bound = bandwidth["read"]
    print(
        f"{cpu_model()}, torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}; load average {load_average():.2f} at start; memory bandwidth: read "
        f"{bound / 1e9:.1f} GB/s, copy {bandwidth['copy'] / 1e9:.1f} GB/s",
        flush=True,
    )
    image = pixels(1, torch.float32, seed=4)
    images = pixels(AGREEMENT_IMAGES, torch.float32, seed=5)
    with tempfile.TemporaryDirectory(prefix="splice-bandwidth-") as directory:
        build_checkpoint(SIZES[args.size], directory)
        fp32 = splice.VisionEncoderDecoderModel.from_pretrained(directory).eval()
        with torch.no_grad():
            reference_ids = fp32.generate(image, **generate_kwargs(args.tokens))
            ids8 = fp32.generate(images, **generate_kwargs(args.tokens))
        del fp32
        unused = sorted(set(range(50257)) - set(reference_ids.flatten().tolist()))[0]
        arms = build_arms(directory, args.jax, unused, args.arms)
    for arm in arms:  # warm-up (JAX compiles here: timed apart), and the agreement columns
        for tokens in (1, args.tokens):
            start = time.perf_counter()
            arm.ids = arm.generate(image, tokens)
            if isinstance(arm, JaxArm):
                arm.compile_seconds[tokens] = time.perf_counter() - start
        arm.agreement = agreement(arm, reference_ids, image, images, ids8)
    for arm in arms:
        if arm.name.startswith("transformers") and arm.agreement != (1.0, 1.0):
            abort(f"{arm.name} and splice fp32 generate different ids (agreement {arm.agreement})")
        if isinstance(arm, CompiledArm) and not torch.equal(arm.ids, arm.eager.ids):
            abort(f"{arm.name} generates other ids than {arm.eager.name} decoding eagerly")
    for _ in range(args.repeats):
        for tokens in (1, args.tokens):
            for arm in arms:
                arm.times.setdefault(tokens, []).append(timed(lambda a=arm, t=tokens: a.generate(image, t)))
    return report(arms, bandwidth, args)


def report(arms: list[Arm], bandwidth: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    tokens = args.tokens
    median = {arm.name: statistics.median(arm.times[tokens]) for arm in arms}
    rows = []
    for arm in arms:
        step = (median[arm.name] - statistics.median(arm.times[1])) / (tokens - 1)
        free, forced = arm.agreement
        rows.append({
            "arm": arm.name, "generate_s": median[arm.name], "step_ms": 1e3 * step,
            "vs_transformers_fp32": median["transformers fp32"] / median[arm.name],
            "vs_splice_fp32": median["splice fp32"] / median[arm.name],
            "agreement_free": free, "agreement_teacher_forced": forced,
            "weight_mb_per_step": arm.bytes_per_step / 1e6,
            "bandwidth_fraction": arm.bytes_per_step / step / bandwidth["read"],
            "times": {str(t): v for t, v in arm.times.items()},
            **({"compile_s": {str(k): v for k, v in arm.compile_seconds.items()}} if hasattr(arm, "compile_seconds")
               else {}),
        })  # fmt: skip
    lines = [
        f"| mode | generate s | vs transformers fp32 | vs splice fp32 | token agreement (free / teacher-forced) | "
        f"MB read / step | ms / step | of the {bandwidth['read'] / 1e9:.0f} GB/s bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        forced = "n/a" if r["agreement_teacher_forced"] is None else f"{r['agreement_teacher_forced']:.1%}"
        lines.append(
            f"| {r['arm']} | {r['generate_s']:.4f} | {r['vs_transformers_fp32']:.2f}x | {r['vs_splice_fp32']:.2f}x | "
            f"{r['agreement_free']:.1%} / {forced} | {r['weight_mb_per_step']:.1f} | {r['step_ms']:.2f} | "
            f"{r['bandwidth_fraction']:.0%} |"
        )
    print("\n" + "\n".join(lines))
    load = load_average()
    print(f"\nbatch 1, greedy, {tokens} new tokens, {args.size}, median of {args.repeats}; load {load:.2f} at end")
    return {
        "machine": {"cpu": cpu_model(), "torch": torch.__version__, "transformers": transformers.__version__,
                    "threads": torch.get_num_threads(), "load_average_1min_at_end": load},
        "settings": vars(args), "bandwidth_bytes_per_s": bandwidth, "rows": rows,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per timed generate (at least 2)")
    parser.add_argument("--no-jax", dest="jax", action="store_false", help="leave out the JAX arm")
    parser.add_argument(
        "--arms",
        default=None,
        help="comma-separated eager arm names to run (transformers fp32, splice fp32 and splice fp32's compiled "
        "step always run; a compiled step runs with its eager arm); default: all",
    )
    parser.add_argument("--output", default="benchmarks/bandwidth.json")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and XLA threads (default: torch's); 1 on a busy machine"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        # One thread per framework: on a machine shared with other work, OpenMP workers spin-waiting for descheduled
        # peers distort multi-threaded timings far more than time-slicing distorts single-threaded ones.
        torch.set_num_threads(args.threads)
        flags = f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    args.arms = None if args.arms is None else sorted({name.strip() for name in args.arms.split(",")})
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (a step time is a difference of two lengths)")
    result = run(args)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
