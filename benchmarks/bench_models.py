"""The checkpoints the benchmarks time and the inputs they feed them.

ViT + GPT-2 (`build_checkpoint`, saved once and loaded into both libraries by `load_pair`) and ViT + Llama
(bench.py's injected rows), at the `SIZES` below, random weights redrawn so that greedy decoding varies; images and
token ids are seeded. Shared by bench.py, bandwidth.py, gpu.py and smallcap_scale.py.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

import splice

IMAGE_SIZE, PATCH_SIZE = 224, 16
ENCODER_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1  # patches + [CLS]
GPT2_BOS = GPT2_EOS = 50256  # GPT-2's <|endoftext|> starts, ends and pads
LLAMA_BOS, LLAMA_EOS = 1, 2


@dataclass(frozen=True)
class Size:
    width: int
    layers: int
    heads: int
    llama_intermediate: int  # ~8/3 x width rounded up to 64, Llama's convention (same MLP parameters as GPT-2's 4x)


SIZES = {
    "tiny": Size(256, 4, 4, 704),
    "small": Size(384, 6, 6, 1024),
    "base": Size(768, 12, 12, 2048),  # ViT-B/16 224 and GPT-2 124M dimensions
}


# -- models -------------------------------------------------------------------------------------------------------


def vit_config(size: Size) -> transformers.ViTConfig:
    return transformers.ViTConfig(
        hidden_size=size.width,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * size.width,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )


def gpt2_config(size: Size) -> transformers.GPT2Config:
    # GPT-2's real vocabulary (50257) at every size, so the LM head costs what it costs in a real captioner.
    return transformers.GPT2Config(
        n_embd=size.width, n_layer=size.layers, n_head=size.heads, bos_token_id=GPT2_BOS, eos_token_id=GPT2_EOS
    )


def llama_config(size: Size) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=size.width,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        intermediate_size=size.llama_intermediate,
        vocab_size=32000,
        bos_token_id=LLAMA_BOS,
        eos_token_id=LLAMA_EOS,
        pad_token_id=LLAMA_EOS,
    )


@torch.no_grad()
def redraw(model: nn.Module, width: int, seed: int = 0) -> nn.Module:
    """Re-draw the weights at std width^-0.5 (biases small, norm scales ~1).

    The default init (std 0.02) makes greedy decoding repeat one token, so "generated ids are equal" would be nearly
    vacuous; these weights give varied tokens while keeping activations in range at every size.
    """
    generator = torch.Generator().manual_seed(seed)
    norm_ids = {
        id(module.weight)
        for module in model.modules()
        if "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), nn.Parameter)
    }
    for param in model.parameters():  # tied parameters appear once
        noise = torch.randn(param.shape, generator=generator)
        if id(param) in norm_ids:
            value = 1.0 + 0.1 * noise
        else:
            value = noise * (width**-0.5 if param.dim() >= 2 else 0.02)
        param.copy_(value.to(param.dtype))
    return model


def build_checkpoint(size: Size, directory: str) -> None:
    """Build transformers' ViT + GPT-2 composite with random weights and save it; both arms load this directory."""
    torch.manual_seed(0)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(size), gpt2_config(size))
    model = redraw(transformers.VisionEncoderDecoderModel(config=config), size.width)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = GPT2_BOS
        cfg.pad_token_id = GPT2_EOS
        cfg.eos_token_id = GPT2_EOS
    model.save_pretrained(directory)


def load_pair(directory: str, device: torch.device, dtype: torch.dtype, train: bool) -> tuple[nn.Module, nn.Module]:
    """Fresh copies of the same checkpoint in both libraries (training sections must not see each other's updates)."""
    models = (
        transformers.VisionEncoderDecoderModel.from_pretrained(directory),
        splice.VisionEncoderDecoderModel.from_pretrained(directory),
    )
    return tuple(model.to(device=device, dtype=dtype).train(train) for model in models)  # type: ignore[return-value]


def release_memory() -> None:
    """Collect models the caller has just dropped (`del`), so sizes and sections do not stack up in memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- inputs -------------------------------------------------------------------------------------------------------


def pixels(batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(dtype)  # [B, 3, H, W], on the CPU


def token_ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)  # [B, T]


def generate_kwargs(max_new_tokens: int, num_beams: int = 1) -> dict[str, Any]:
    # min_new_tokens == max_new_tokens masks eos, so every sequence (and both arms) runs exactly max_new_tokens steps.
    return {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": max_new_tokens,
        "num_beams": num_beams,
        "do_sample": False,
    }
