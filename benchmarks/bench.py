"""splice vs transformers, same weights, same process: training, frozen-encoder training, generation, injection.

Run: `python benchmarks/bench.py [--sizes tiny,small] [--repeats 5] [--device cpu|cuda] [--dtype fp32|bf16]`.

For each size a transformers `VisionEncoderDecoderModel` (ViT encoder + GPT-2 decoder, random weights) is built and
saved, and the same directory is loaded into `splice.VisionEncoderDecoderModel`. The two must agree (logits and
generated ids) before anything is timed: timing two different computations would be meaningless, so a mismatch aborts.
Arms are timed interleaved (transformers, splice, transformers, splice, ...) so both see the same machine state, and
the median of `--repeats` is reported. Ratios are transformers time / splice time: > 1 means splice is faster.
See benchmarks/README.md for what each row measures and the targets.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is built from a config; nothing may be fetched
os.environ.setdefault("TQDM_DISABLE", "1")  # FeatureCache.build's progress bar would interleave with the table

import torch  # noqa: E402
import transformers  # noqa: E402
from bench_models import (  # noqa: E402
    ENCODER_TOKENS,
    LLAMA_BOS,
    SIZES,
    Size,
    build_checkpoint,
    generate_kwargs,
    llama_config,
    load_pair,
    pixels,
    redraw,
    release_memory,
    token_ids,
    vit_config,
)
from bench_report import (  # noqa: E402
    MFU_TARGET,
    TARGETS,
    Row,
    add_mfu,
    load_average,
    mfu_table,
    notes,
    row_json,
    table,
    write_json,
)
from torch import nn  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import splice  # noqa: E402
from splice.training.feature_cache import FeatureCache, cached_batch  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()  # "Loading weights" bars on every from_pretrained

LABEL_LENGTH = 24  # target tokens per training sample, a typical caption length in GPT-2 tokens
TRAIN_BATCH = 8
# Max |logit| difference tolerated by the parity check; the two implementations run the same modules, so in fp32 it is
# expected to be exactly 0, and bf16 only leaves room for a different summation order.
LOGIT_ATOL = {"fp32": 1e-5, "bf16": 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- environment --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "splice": getattr(splice, "__version__", "unknown"),
        "device": str(device),
        # Other processes on the cores distort every timing (OpenMP workers spin-wait for descheduled peers).
        "load_average_1min_at_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)  # CUDA launches are asynchronous: time the work, not the launch
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(*args: Any) -> tuple[list[float], ...]:
    """`interleaved(arm, arm, ..., repeats, device)`: alternate the arms so that drift (other load, thermal state) hits
    them alike; the caller warms them up."""
    *arms, repeats, device = args
    times: tuple[list[float], ...] = tuple([] for _ in arms)
    for _ in range(repeats):
        for arm, samples in zip(arms, times):
            samples.append(timed(arm, device))
    return times


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of one large square matmul: the ceiling MFU is measured against."""
    n = 8192 if device.type == "cuda" else 4096
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up: allocator, BLAS thread pool, cuBLAS heuristics
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


# -- parity -------------------------------------------------------------------------------------------------------


def abort(message: str) -> NoReturn:
    sys.exit(f"ABORTED: {message}\nTimings are only meaningful when both arms compute the same thing.")


def require_same_ids(what: str, reference: torch.Tensor, spliced: torch.Tensor, length: int) -> None:
    if reference.shape != spliced.shape or not torch.equal(reference, spliced):
        mismatch = (reference != spliced).nonzero()[:1].tolist() if reference.shape == spliced.shape else "shape"
        abort(
            f"{what}: generated ids differ (shapes {tuple(reference.shape)} vs {tuple(spliced.shape)}, first "
            f"mismatch at {mismatch})."
        )
    if reference.shape[1] != length:
        abort(f"{what}: expected {length} tokens per sequence, got {reference.shape[1]} (eos not suppressed?).")


@torch.no_grad()
def check_parity(size_name: str, hf: nn.Module, sp: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Same logits and loss on one batch, same greedy ids; abort otherwise."""
    device, dtype = args.device, DTYPES[args.dtype]
    batch = {
        "pixel_values": pixels(2, dtype, seed=1).to(device),
        "labels": token_ids(2, LABEL_LENGTH, hf.config.decoder.vocab_size, seed=1).to(device),
    }
    a, b = hf(**batch), sp(**batch)
    logit_diff = (a.logits.float() - b.logits.float()).abs().max().item()
    loss_diff = abs(a.loss.item() - b.loss.item())
    if logit_diff > LOGIT_ATOL[args.dtype]:
        abort(
            f"[{size_name}] logits differ: max |transformers - splice| = {logit_diff:.3g} "
            f"(tolerance {LOGIT_ATOL[args.dtype]:g}, {args.dtype})."
        )
    kwargs = generate_kwargs(args.max_new_tokens)
    ids = hf.generate(batch["pixel_values"], **kwargs), sp.generate(batch["pixel_values"], **kwargs)
    require_same_ids(f"[{size_name}] greedy parity check", *ids, 1 + args.max_new_tokens)
    distinct = len(set(ids[0][:, 1:].flatten().tolist()))
    return {"max_abs_logit_diff": logit_diff, "loss_abs_diff": loss_diff, "distinct_generated_ids": distinct}


# -- (a) unfrozen train step ----------------------------------------------------------------------------------------


def train_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_flops_per_train_step(model: nn.Module, batch: int) -> float:
    """6 x B x (N_enc x S_enc + N_dec x T), forward 2 FLOPs per weight per token, backward 4.

    N_enc / N_dec are the encoder / decoder parameters that multiply activations (position embeddings and the
    encoder's unused pooler excluded; GPT-2's tied embedding counts once, as the LM head). Each weight is charged for
    the tokens it multiplies: S_enc = 197 (196 patches + CLS) for the encoder and for the decoder's cross-attention
    key/value projection, T = label length for the rest of the decoder. Attention scores (~S x T) are left out.
    """
    skipped = ("position_embeddings", "wpe.", "pooler.")
    enc = sum(p.numel() for n, p in model.encoder.named_parameters() if not any(s in n for s in skipped))
    dec = cross_kv = 0
    for name, param in model.decoder.named_parameters():
        if "crossattention.c_attn." in name:  # GPT-2's cross-attention key/value projection reads the encoder states
            cross_kv += param.numel()
        elif not any(s in name for s in skipped):
            dec += param.numel()
    return 6.0 * batch * ((enc + cross_kv) * ENCODER_TOKENS + dec * LABEL_LENGTH)


def bench_train_step(size_name: str, directory: str, args: argparse.Namespace) -> Row:
    hf, sp = load_pair(directory, args.device, DTYPES[args.dtype], train=True)
    batch = {
        "pixel_values": pixels(TRAIN_BATCH, DTYPES[args.dtype], seed=2).to(args.device),
        "labels": token_ids(TRAIN_BATCH, LABEL_LENGTH, hf.config.decoder.vocab_size, seed=2).to(args.device),
    }
    steps = train_step(hf, batch), train_step(sp, batch)
    for step in steps:  # warm-up, two steps: AdamW allocates its state on the first, the second is a steady one
        step()
        step()
    times = interleaved(*steps, args.repeats, args.device)
    flops = model_flops_per_train_step(sp, TRAIN_BATCH)
    row = Row(size_name, "train", f"train step, unfrozen, batch {TRAIN_BATCH}", *times, TARGETS["train"])
    row.extra = {"model_flops_per_step": flops, "mfu_target": MFU_TARGET}
    return row


# -- (b) frozen encoder, two epochs ---------------------------------------------------------------------------------


# What an optimizer trains, after freezing the rest of the model (the frozen-encoder rows: all but the encoder).
Trainable = Callable[[nn.Module], list[nn.Parameter]]


def freeze_encoder(model: nn.Module) -> list[nn.Parameter]:
    model.encoder.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def epochs_encoder_each_step(
    model: nn.Module, data: dict[str, torch.Tensor], device: torch.device, trainable: Trainable = freeze_encoder
) -> None:
    """transformers: two epochs, the frozen encoder re-encodes every image at every step."""
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-5)
    for _ in range(2):
        for i in range(0, len(data["labels"]), TRAIN_BATCH):
            batch = {k: v[i : i + TRAIN_BATCH].to(device) for k, v in data.items()}
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def epochs_feature_cache(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    device: torch.device,
    log: list,
    trainable: Trainable = freeze_encoder,
) -> None:
    """splice: build a fresh FeatureCache (timed: fingerprint + one encoder pass), then two epochs reading it."""
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-5)
    with tempfile.TemporaryDirectory(prefix="splice-bench-cache-") as directory:
        start = time.perf_counter()
        cache = FeatureCache(directory, model.encoder, batch_size=32)
        cache.build(list(data["pixel_values"]), lambda items: {"pixel_values": torch.stack(items)})
        log.append(time.perf_counter() - start)
        for _ in range(2):
            for i in range(0, len(data["labels"]), TRAIN_BATCH):
                # The documented collator path: items are content-hashed and looked up every step.
                batch = cached_batch(cache, {k: v[i : i + TRAIN_BATCH] for k, v in data.items()})
                encoder_outputs = BaseModelOutput(last_hidden_state=batch["encoder_outputs"][0].to(device))
                model(encoder_outputs=encoder_outputs, labels=batch["labels"].to(device)).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def bench_frozen_encoder(size_name: str, directory: str, args: argparse.Namespace) -> Row:
    hf, sp = load_pair(directory, args.device, DTYPES[args.dtype], train=True)
    data = {  # kept on the CPU, moved per batch, as a DataLoader would deliver it
        "pixel_values": pixels(args.samples, DTYPES[args.dtype], seed=3),
        "labels": token_ids(args.samples, LABEL_LENGTH, hf.config.decoder.vocab_size, seed=3),
    }
    build_times: list[float] = []
    warmup = {k: v[:TRAIN_BATCH] for k, v in data.items()}
    epochs_encoder_each_step(hf, warmup, args.device)  # warm-up: one short run per arm (allocator, thread pools)
    epochs_feature_cache(sp, warmup, args.device, [])
    times = interleaved(
        lambda: epochs_encoder_each_step(hf, data, args.device),
        lambda: epochs_feature_cache(sp, data, args.device, build_times),
        args.repeats,
        args.device,
    )
    name = f"2 epochs x {args.samples} samples, frozen encoder (splice: FeatureCache, build included)"
    row = Row(size_name, "frozen", name, *times, TARGETS["frozen"], {"cache_build_seconds": build_times})
    return row


# -- (c) generation -------------------------------------------------------------------------------------------------

GENERATION_CASES = (("greedy-1", 1, 1), ("greedy-8", 8, 1), ("greedy-32", 32, 1), ("beam-4", 8, 4))


@torch.no_grad()
def bench_generate(size_name: str, hf: nn.Module, sp: nn.Module, args: argparse.Namespace) -> list[Row]:
    """Each row also times splice with PyTorch's oneDNN switch off, which leaves the cross-attention reorder saving as
    the only difference (the LM head goes back to `F.linear`): the split of the gain between the two fast paths."""
    rows = []
    for key, batch, beams in GENERATION_CASES:
        pixel_values = pixels(batch, DTYPES[args.dtype], seed=4).to(args.device)
        kwargs = generate_kwargs(args.max_new_tokens, beams)
        name = f"generate {'greedy' if beams == 1 else f'beam-{beams}'}, batch {batch}, {args.max_new_tokens} tokens"

        def without_onednn(pv=pixel_values, kw=kwargs) -> torch.Tensor:
            before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
            try:
                return sp.generate(pv, **kw)
            finally:
                torch.backends.mkldnn.enabled = before

        # The parity calls double as the warm-up of each arm.
        ids = hf.generate(pixel_values, **kwargs)
        require_same_ids(f"[{size_name}] {name}", ids, sp.generate(pixel_values, **kwargs), 1 + args.max_new_tokens)
        require_same_ids(f"[{size_name}] {name}, oneDNN off", ids, without_onednn(), 1 + args.max_new_tokens)
        reference, spliced, off = interleaved(
            lambda pv=pixel_values, kw=kwargs: hf.generate(pv, **kw),
            lambda pv=pixel_values, kw=kwargs: sp.generate(pv, **kw),
            without_onednn,
            args.repeats,
            args.device,
        )
        ratio_off = statistics.median(reference) / statistics.median(off)
        extra = {"splice_onednn_off_seconds": off, "ratio_onednn_off": ratio_off}
        rows.append(Row(size_name, key, name, reference, spliced, TARGETS.get(key), extra))
    return rows


# -- (d) injected cross-attention on Llama --------------------------------------------------------------------------


def build_injected(size: Size, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """A bare Llama decoder and splice's ViT + the same Llama with injected cross-attention (gates at 0: identity)."""
    torch.manual_seed(0)
    bare = redraw(transformers.LlamaForCausalLM(llama_config(size)), size.width, seed=5)
    encoder = redraw(transformers.ViTModel(vit_config(size), add_pooling_layer=False), size.width, seed=6)
    model = splice.VisionEncoderDecoderModel(encoder=encoder, decoder=copy.deepcopy(bare))
    if model.config.conditioning != "injected":
        abort(f"expected injected conditioning for a Llama decoder, got {model.config.conditioning!r}")
    return bare.to(device=device, dtype=dtype).eval(), model.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def bench_injected(size_name: str, size: Size, args: argparse.Namespace) -> list[Row]:
    """Overhead of injection: splice gets precomputed encoder outputs, so only the decoder side is timed."""
    bare, model = build_injected(size, args.device, DTYPES[args.dtype])
    pixel_values = pixels(TRAIN_BATCH, DTYPES[args.dtype], seed=7).to(args.device)
    encoder_outputs = BaseModelOutput(last_hidden_state=model.encoder(pixel_values=pixel_values).last_hidden_state)
    ids = token_ids(TRAIN_BATCH, args.max_new_tokens, 32000, seed=7).to(args.device)
    start = torch.full((TRAIN_BATCH, 1), LLAMA_BOS, device=args.device)
    kwargs = generate_kwargs(args.max_new_tokens)

    def bare_forward() -> torch.Tensor:
        return bare(input_ids=ids).logits

    def spliced_forward() -> torch.Tensor:
        return model(encoder_outputs=encoder_outputs, decoder_input_ids=ids).logits

    def bare_generate() -> torch.Tensor:
        return bare.generate(input_ids=start, attention_mask=torch.ones_like(start), **kwargs)

    def spliced_generate() -> torch.Tensor:
        return model.generate(encoder_outputs=encoder_outputs, **kwargs)

    # Zero gates make the injected blocks add exact zeros, so the outputs must match the bare decoder's.
    logit_diff = (bare_forward().float() - spliced_forward().float()).abs().max().item()
    if logit_diff > LOGIT_ATOL[args.dtype]:
        abort(f"[{size_name}] injected Llama logits differ from the bare Llama by {logit_diff:.3g}")
    length = 1 + args.max_new_tokens
    require_same_ids(f"[{size_name}] injected Llama generate", bare_generate(), spliced_generate(), length)
    rows = []
    for key, name, arms in (
        (
            "injected-forward",
            f"injected Llama forward, batch {TRAIN_BATCH}, {args.max_new_tokens} tokens",
            (bare_forward, spliced_forward),
        ),
        (
            "injected-generate",
            f"injected Llama generate greedy, batch {TRAIN_BATCH}, {args.max_new_tokens} tokens",
            (bare_generate, spliced_generate),
        ),
    ):
        times = interleaved(*arms, args.repeats, args.device)
        rows.append(Row(size_name, key, name, *times, extra={"max_abs_logit_diff": logit_diff}))
    return rows


# -- main -----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small", help="comma-separated, of: " + ", ".join(SIZES))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per arm; the median is reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--samples", type=int, default=64, help="samples per epoch in the frozen-encoder benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--output", default="benchmarks/results.json")
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.samples % TRAIN_BATCH:
        parser.error(f"--samples must be a multiple of the batch size {TRAIN_BATCH}")
    args.device = torch.device(args.device)
    return args


def bench_size(size_name: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[Row]]:
    size = SIZES[size_name]
    with tempfile.TemporaryDirectory(prefix=f"splice-bench-{size_name}-") as directory:
        build_checkpoint(size, directory)
        hf, sp = load_pair(directory, args.device, DTYPES[args.dtype], train=False)
        parity = check_parity(size_name, hf, sp, args)
        print(f"[{size_name}] parity: {parity}", flush=True)
        rows = bench_generate(size_name, hf, sp, args)  # before any training, on the pristine weights
        del hf, sp
        release_memory()
        rows.append(bench_train_step(size_name, directory, args))
        release_memory()
        rows.append(bench_frozen_encoder(size_name, directory, args))
        release_memory()
    rows.extend(bench_injected(size_name, size, args))
    release_memory()
    return parity, rows


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    machine = machine_info(args.device)
    # Measured at the start and again at the end; the best of the two is the ceiling (a VM's clock varies by ~20%).
    peaks = [matmul_peak(args.device, DTYPES[args.dtype])]
    print(
        f"machine: {machine['cpu']} ({machine['cpu_count']} CPUs), torch {machine['torch']} "
        f"({machine['torch_threads']} threads), transformers {machine['transformers']}, device {args.device}"
        f"{' ' + machine['gpu'] if 'gpu' in machine else ''}, {args.dtype}, matmul {peaks[0] / 1e9:.1f} GFLOP/s"
    )
    load = machine["load_average_1min_at_start"]
    print(
        f"sizes {','.join(args.sizes)}, {args.repeats} repeats (median), interleaved transformers/splice; "
        f"1-min load average at start {'n/a' if load is None else f'{load:.1f}'}",
        flush=True,
    )
    parities: dict[str, Any] = {}
    rows: list[Row] = []
    for size_name in args.sizes:
        parities[size_name], size_rows = bench_size(size_name, args)
        rows.extend(size_rows)
    peaks.append(matmul_peak(args.device, DTYPES[args.dtype]))
    peak = max(peaks)
    add_mfu(rows, peak)
    results = {
        name: {"parity": parity, "rows": [row_json(row) for row in rows if row.size == name]}
        for name, parity in parities.items()
    }
    total = time.perf_counter() - started
    machine["load_average_1min_at_end"] = load_average()
    print("\n" + table(rows) + "\n\n" + mfu_table(rows, peak) + "\n\n" + notes(rows))
    print(f"\ntotal runtime {total:.0f} s; results in {args.output}")
    settings = {k: str(v) if isinstance(v, torch.device) else v for k, v in vars(args).items()}
    write_json(
        args.output,
        {
            "machine": machine,
            "settings": settings,
            "matmul_peak_flops": peak,
            "matmul_flops_start_end": peaks,
            "mfu_formula": "6 * batch * (N_enc * S_enc + N_dec * T); see model_flops_per_train_step in bench.py",
            "sizes": results,
            "total_seconds": total,
        },
    )


if __name__ == "__main__":
    main()
