"""One training epoch with a frozen encoder: running the encoder every step vs reading the feature cache.

Run: `python benchmarks/feature_cache.py [--images 512] [--repeats 3]`. Prints the median epoch times and the ratio.
The same model, data and optimizer settings in both arms; the cache is built once beforehand (its build time is
printed too, and is paid once per encoder and data set, not per epoch).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, ViTConfig
from transformers.modeling_outputs import BaseModelOutput

from splice import VisionEncoderDecoderConfig, VisionEncoderDecoderModel
from splice.training.feature_cache import FeatureCache
from splice.training.freezing import apply_freeze_policy


def build(width: int, layers: int) -> VisionEncoderDecoderModel:
    encoder = ViTConfig(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=6, intermediate_size=4 * width,
        image_size=224, patch_size=16,
    )  # fmt: skip
    decoder = GPT2Config(n_embd=width, n_layer=layers, n_head=6, vocab_size=1000, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))


def epoch(model, pixel_values, labels, batch_size: int, cache: FeatureCache | None, keys: list[str]) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        batch = {"labels": labels[i : i + batch_size]}
        if cache is None:
            batch["pixel_values"] = pixel_values[i : i + batch_size]
        else:
            batch["encoder_outputs"] = BaseModelOutput(last_hidden_state=cache.get(keys[i : i + batch_size]))
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    model = build(args.width, args.layers).train()
    counts = apply_freeze_policy(model, "encoder")
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.images, 3, 224, 224, generator=generator)
    labels = torch.randint(3, 1000, (args.images, 16), generator=generator)
    with tempfile.TemporaryDirectory() as directory:
        cache = FeatureCache(directory, model.encoder, batch_size=32)
        start = time.perf_counter()
        cache.build(list(pixel_values), lambda items: {"pixel_values": torch.stack(items)})
        build_seconds = time.perf_counter() - start
        keys = [cache.key(p) for p in pixel_values]
        plain, cached = [], []
        for _ in range(args.repeats):  # interleaved, so both arms see the same machine state
            plain.append(epoch(model, pixel_values, labels, args.batch_size, None, keys))
            cached.append(epoch(model, pixel_values, labels, args.batch_size, cache, keys))
    a, b = statistics.median(plain), statistics.median(cached)
    print(
        f"ViT {args.width}/{args.layers}L 224px + GPT-2 {args.width}/{args.layers}L, encoder frozen; "
        f"{counts['trainable']:,} trainable parameters; {args.images} images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"epoch without cache: {a:.2f} s | with cache: {b:.2f} s | speed-up {a / b:.2f}x "
        f"(cache built once in {build_seconds:.2f} s; medians of {args.repeats})"
    )


if __name__ == "__main__":
    main()
