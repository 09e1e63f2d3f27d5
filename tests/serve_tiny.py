"""Tiny random models saved with their processors, for the `splice serve` tests (test_serve*.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import transformers as T
from PIL import Image
from tiny import bert_encoder_config, gpt2_config, randomize, vit_config

import splice
from splice.data.builtin import train_tokenizer

WORDS = "a red blue green circle square star on the left right top bottom two three big small".split()


def word_tokenizer() -> T.PreTrainedTokenizerFast:
    """A word-level tokenizer: [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3, then the words."""
    return train_tokenizer([" ".join(WORDS)])


def save_captioner(directory: Path, conditioning: str = "native", seed: int = 0, **config: object) -> Path:
    """A ViT + GPT-2 captioner (30x30 images, 3x3 patches) with weights drawn so captions vary by image (other
    conditionings: ViT + Llama; `config`: more composite settings, e.g. `prefix_length`)."""
    tokenizer = word_tokenizer()
    decoder = gpt2_config(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if conditioning != "native":
        decoder = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                pad_token_id=0)  # fmt: skip
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), decoder, conditioning=conditioning, **config
    )
    model = splice.VisionEncoderDecoderModel(config)
    randomize(model, seed=seed, std=1.5)
    model.save_pretrained(directory)
    splice.SpliceProcessor(T.ViTImageProcessor(size={"height": 30, "width": 30}), tokenizer).save_pretrained(directory)
    return directory


def save_text_model(directory: Path, seed: int = 0) -> Path:
    """A BERT + GPT-2 text-to-text model with a word-level tokenizer."""
    tokenizer = word_tokenizer()
    vocab = {"vocab_size": len(tokenizer), "pad_token_id": 0}
    decoder = gpt2_config(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = splice.EncoderDecoderConfig.from_encoder_decoder_configs(bert_encoder_config(**vocab), decoder)
    model = splice.EncoderDecoderModel(config)
    randomize(model, seed=seed, std=1.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def image(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A random RGB image (random size from 10 to 80 pixels a side unless given)."""
    rng = np.random.default_rng(seed)
    height, width = size or (int(rng.integers(10, 80)), int(rng.integers(10, 80)))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


SMALLCAP_CAPTIONS = [
    "a red circle", "a blue square on the left", "two green stars at the top right", "a big small star",
    "three red squares on the bottom left", "a circle", "green", "a blue star on the right of a red square",
]  # fmt: skip


def save_smallcap(directory: Path, retrieval_k: int = 2) -> Path:
    """A SmallCap model (CLIP vision 32 px, 4x4 patches; GPT-2, reduced cross-attention) with a datastore of
    captions of different lengths saved next to it (its own frozen encoder embeds the keys)."""
    from splice.models.smallcap import NO_RETRIEVAL_PROMPT, SmallCapConfig, SmallCapModel, build_prompt
    from splice.retrieval import Datastore, frozen_encoder_embedder

    tokenizer = train_tokenizer(SMALLCAP_CAPTIONS + WORDS + [NO_RETRIEVAL_PROMPT, build_prompt(SMALLCAP_CAPTIONS)])
    vision = T.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    decoder = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=len(tokenizer),
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    config = SmallCapConfig.from_encoder_decoder_configs(vision, decoder, retrieval_k=retrieval_k)
    model = SmallCapModel(config)
    randomize(model, seed=0, std=1.5)
    processor = splice.SpliceProcessor(T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    embedder = frozen_encoder_embedder(model.encoder.eval(), processor.image_processor)
    keys = [image(seed) for seed in range(len(SMALLCAP_CAPTIONS))]
    Datastore.build(SMALLCAP_CAPTIONS, embedder, key_kind="image", images=keys).save(directory / "datastore")
    return directory
