"""`splice demo`: compose a small captioner from scratch, train it on generated shapes, caption held-out images.

Everything is offline: the images are drawn, the tokenizer is trained on the captions, the encoder (ViT) and the
decoder (GPT-2) start from random weights.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessor

from .configuration import VisionEncoderDecoderConfig
from .modeling import VisionEncoderDecoderModel
from .processing import SpliceProcessor

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle", "triangle")
PLACES = ("left", "right")


def draw_scene(colour: str, shape: str, place: str, rng: random.Random, size: int = 32) -> Image.Image:
    """One shape of one colour on a grey background, in the left or right half, with jittered size and position."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 8, size // 5)
    cx = rng.randint(r, size // 2 - r) + (size // 2 if place == "right" else 0)
    cy = rng.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return image


def shapes_dataset(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    """`n` (image, caption) pairs: "a red circle on the left"."""
    rng = random.Random(seed)
    data = []
    for _ in range(n):
        colour, shape, place = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(PLACES)
        data.append((draw_scene(colour, shape, place, rng), f"a {colour} {shape} on the {place}"))
    return data


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer learnt from the captions, with [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3."""
    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # Targets end with EOS so the decoder learns to stop; generation starts from BOS (the decoder start token).
    core.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> VisionEncoderDecoderModel:
    encoder = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8
    )
    decoder = GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=32,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        encoder,
        decoder,
        decoder_start_token_id=tokenizer.bos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return VisionEncoderDecoderModel(config)


def run_demo(
    output_dir: str = "splice-demo",
    steps: int = 300,
    batch_size: int = 32,
    seed: int = 0,
    n_train: int = 2000,
    n_eval: int = 200,
) -> dict:
    r"""
    Train a small captioner on generated shapes, evaluate on held-out scenes, save it and caption samples.

    Args:
        output_dir: where the model and its processor are saved.
        steps: optimisation steps.
        batch_size: images per step.
        seed: seeds data, weights and order.
        n_train, n_eval: numbers of generated training and held-out scenes.

    Returns:
        `dict` with `exact_match` on held-out scenes, `seconds` and `output_dir`.
    """
    torch.manual_seed(seed)
    start = time.time()
    train, held_out = shapes_dataset(n_train, seed), shapes_dataset(n_eval, seed + 1)
    tokenizer = train_tokenizer([c for _, c in train])
    processor = SpliceProcessor(ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    model = build_model(tokenizer).train()
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; training {steps} steps")

    pixel_values = processor(images=[im for im, _ in train])["pixel_values"]  # [N, 3, 32, 32]
    labels = tokenizer([c for _, c in train], padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100  # no loss on padding
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = torch.randint(len(train), (batch_size,), generator=generator)
        loss = model(pixel_values=pixel_values[idx], labels=labels[idx]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step in (1, steps):
            print(f"step {step:4d}  loss {loss.item():.4f}")

    model.eval()
    captions = model.caption([im for im, _ in held_out], processor=processor, max_new_tokens=8)
    exact = sum(c == ref for c, (_, ref) in zip(captions, held_out)) / len(held_out)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    for caption, (_, reference) in list(zip(captions, held_out))[:4]:
        print(f"  generated: {caption!r:34} reference: {reference!r}")
    seconds = time.time() - start
    print(f"held-out exact match: {exact:.1%}  ({len(held_out)} scenes)  time: {seconds:.0f}s  saved: {output_dir}")
    return {"exact_match": exact, "seconds": seconds, "output_dir": output_dir}
