"""Tiny random configs, weight re-drawing and inputs shared by the parity and seed-doc tests.

A plain module (not a conftest): `tests/conftest.py` puts `tests/` on `sys.path` (and sets `HF_HUB_OFFLINE`), test
files `from tiny import ...`. Every factory takes keyword overrides on top of its tiny defaults. Everything here is
offline: configs are built in code, never fetched from the hub.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import transformers
from torch import nn

from splice.conditioning.injected import cross_attention_parameters


@contextlib.contextmanager
def mkldnn_enabled(enabled: bool) -> Iterator[None]:
    """PyTorch's oneDNN switch, set for a block (`torch.backends.mkldnn.flags` also sets TF32 and warns about it)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 37
VOCAB = 99
MAX_POSITIONS = 64
PAD, BOS, EOS = 0, 1, 2
# Composite special tokens used by every pair (inside the vocabulary of every decoder).
DECODER_START = BOS

_TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": MAX_POSITIONS,
}
_SPECIALS = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
_VIT = {
    "image_size": 30,
    "patch_size": 10,
    "num_channels": 3,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INTERMEDIATE,
}

# Dropout off, for the tests that train or compare train-mode runs (ViT, DeiT and BEiT default to 0 already).
BERT_NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
GPT2_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}

# ---------------------------------------------------------------------------------------------------------------------
# encoders


def vit_config(**overrides) -> transformers.ViTConfig:
    return transformers.ViTConfig(**(_VIT | overrides))


def deit_config(**overrides) -> transformers.DeiTConfig:
    return transformers.DeiTConfig(**(_VIT | overrides))


def beit_config(**overrides) -> transformers.BeitConfig:
    # Relative position bias on, so the BEiT-specific attention path is exercised.
    return transformers.BeitConfig(**(_VIT | {"use_relative_position_bias": True} | overrides))


_SWIN = {"image_size": 32, "patch_size": 4, "depths": [1, 1], "num_heads": [2, 2], "window_size": 2, "mlp_ratio": 2.0}


def swin_config(**overrides) -> transformers.SwinConfig:
    # embed_dim 12 -> output width 24 (embed_dim * 2 ** (stages - 1)), unlike the decoders' 32: the composite needs
    # `enc_to_dec_proj`, so that path is covered too.
    return transformers.SwinConfig(**(_SWIN | {"embed_dim": 12} | overrides))


def donut_swin_config(**overrides) -> transformers.DonutSwinConfig:
    # embed_dim 16 -> output width 32.
    return transformers.DonutSwinConfig(**(_SWIN | {"embed_dim": 16} | overrides))


def bert_encoder_config(**overrides) -> transformers.BertConfig:
    return transformers.BertConfig(**(_TEXT | {"pad_token_id": PAD} | overrides))


def roberta_encoder_config(**overrides) -> transformers.RobertaConfig:
    # Width 24, unlike the decoders' 32: the text composite needs `enc_to_dec_proj` as well.
    cfg = _TEXT | {"hidden_size": 24, "intermediate_size": 29, "num_attention_heads": 4}
    return transformers.RobertaConfig(**(cfg | _SPECIALS | overrides))


VISION_ENCODERS = {
    "vit": vit_config,
    "deit": deit_config,
    "beit": beit_config,
    "swin": swin_config,
    "donut-swin": donut_swin_config,
}
TEXT_ENCODERS = {"bert": bert_encoder_config, "roberta": roberta_encoder_config}

# ---------------------------------------------------------------------------------------------------------------------
# decoders (plain configs: `from_encoder_decoder_configs` turns on is_decoder / add_cross_attention)


def gpt2_config(**overrides) -> transformers.GPT2Config:
    # GPT-2 defaults to bos = eos = 50256: outside a 99-token vocabulary, so override.
    base = {"vocab_size": VOCAB, "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": INTERMEDIATE,
            "n_positions": MAX_POSITIONS}  # fmt: skip
    return transformers.GPT2Config(**(base | _SPECIALS | overrides))


def llama_config(**overrides) -> transformers.LlamaConfig:
    # Not a native cross-attention family: spliced with injected or prefix conditioning.
    return transformers.LlamaConfig(**(_TEXT | {"num_key_value_heads": 2} | _SPECIALS | overrides))


def bert_decoder_config(**overrides) -> transformers.BertConfig:
    # BERT has no bos/eos of its own: left unset, so generation runs to the length limit (no-eos path).
    return transformers.BertConfig(**(_TEXT | {"pad_token_id": PAD} | overrides))


def roberta_decoder_config(**overrides) -> transformers.RobertaConfig:
    return transformers.RobertaConfig(**(_TEXT | _SPECIALS | overrides))


def electra_decoder_config(**overrides) -> transformers.ElectraConfig:
    # ELECTRA, like BERT, has no bos/eos of its own.
    return transformers.ElectraConfig(**(_TEXT | {"embedding_size": HIDDEN, "pad_token_id": PAD} | overrides))


def trocr_config(**overrides) -> transformers.TrOCRConfig:
    base = {
        "vocab_size": VOCAB,
        "d_model": HIDDEN,
        "decoder_layers": LAYERS,
        "decoder_attention_heads": HEADS,
        "decoder_ffn_dim": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "decoder_start_token_id": EOS,
    }
    return transformers.TrOCRConfig(**(base | _SPECIALS | overrides))


def bart_decoder_config(**overrides) -> transformers.BartConfig:
    # Used through AutoModelForCausalLM, which maps "bart" to BartForCausalLM.
    base = {
        "vocab_size": VOCAB,
        "d_model": HIDDEN,
        "encoder_layers": LAYERS,
        "decoder_layers": LAYERS,
        "encoder_attention_heads": HEADS,
        "decoder_attention_heads": HEADS,
        "encoder_ffn_dim": INTERMEDIATE,
        "decoder_ffn_dim": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "decoder_start_token_id": EOS,
    }
    return transformers.BartConfig(**(base | _SPECIALS | overrides))


DECODERS = {
    "gpt2": gpt2_config,
    "bert": bert_decoder_config,
    "roberta": roberta_decoder_config,
    "trocr": trocr_config,
    "bart": bart_decoder_config,
    "electra": electra_decoder_config,
}

# ---------------------------------------------------------------------------------------------------------------------
# decoder families without native cross-attention (spliced with injected or prefix conditioning), and GPT-2 forced
# to those: the matrix of the conditioning and injection tests. Dropout off throughout.


class DecoderFamily(NamedTuple):
    config: Callable[..., transformers.PreTrainedConfig]  # tiny config factory, keyword overrides on top
    causal_lm: str  # the class AutoModelForCausalLM builds from it (a transformers attribute)
    layers: str  # dotted path of the decoder-layer list


def _family(config_class, **settings) -> Callable[..., transformers.PreTrainedConfig]:
    """A tiny-config factory for `config_class`: shared sizes and special tokens, then `settings`, then overrides."""
    base = _TEXT | _SPECIALS | {"attention_dropout": 0.0}
    return lambda **overrides: config_class(**(base | settings | overrides))


_GQA = {"num_key_value_heads": 2}
_HEAD_DIM_8 = {"head_dim": 8}

DECODER_FAMILIES = {
    "llama": DecoderFamily(llama_config, "LlamaForCausalLM", "model.layers"),
    "mistral": DecoderFamily(_family(transformers.MistralConfig, **_GQA, sliding_window=4), "MistralForCausalLM",
                             "model.layers"),
    "qwen2": DecoderFamily(_family(transformers.Qwen2Config, **_GQA), "Qwen2ForCausalLM", "model.layers"),
    "qwen3": DecoderFamily(_family(transformers.Qwen3Config, **_GQA, **_HEAD_DIM_8), "Qwen3ForCausalLM",
                           "model.layers"),
    "gemma2": DecoderFamily(_family(transformers.Gemma2Config, **_GQA, **_HEAD_DIM_8, sliding_window=4),
                            "Gemma2ForCausalLM", "model.layers"),
    "gemma3": DecoderFamily(_family(transformers.Gemma3TextConfig, **_GQA, **_HEAD_DIM_8, sliding_window=4),
                            "Gemma3ForCausalLM", "model.layers"),
    "phi3": DecoderFamily(_family(transformers.Phi3Config, **_GQA, resid_pdrop=0.0, embd_pdrop=0.0),
                          "Phi3ForCausalLM", "model.layers"),
    "opt": DecoderFamily(_family(transformers.OPTConfig, intermediate_size=None, ffn_dim=INTERMEDIATE,
                                 word_embed_proj_dim=HIDDEN, dropout=0.0), "OPTForCausalLM", "model.decoder.layers"),
    "gpt_neox": DecoderFamily(_family(transformers.GPTNeoXConfig, hidden_dropout=0.0), "GPTNeoXForCausalLM",
                              "gpt_neox.layers"),
    # GPT-2 has native cross-attention: the matrix forces it to "injected" / "prefix".
    "gpt2": DecoderFamily(lambda **overrides: gpt2_config(**(GPT2_NO_DROPOUT | overrides)), "GPT2LMHeadModel",
                          "transformer.h"),
}  # fmt: skip


def decoder_config(family: str, **overrides) -> transformers.PreTrainedConfig:
    """The tiny config of a decoder family of `DECODER_FAMILIES`, with keyword overrides."""
    return DECODER_FAMILIES[family].config(**overrides)


# ---------------------------------------------------------------------------------------------------------------------
# weights and inputs


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, std: float = 0.4, embedding_std: float | None = None) -> nn.Module:
    """Re-draw every floating parameter so that outputs are far from the (near-degenerate) default init.

    Matrices get N(0, std); embeddings (`nn.Embedding` weights) N(0, embedding_std), by default N(0, std) like the
    matrices; vectors (biases, LayerNorm shifts, scalars) N(0, std / 4); norm weights (LayerNorm / RMSNorm scales)
    1 + N(0, 0.1). The default init (std 0.02) makes greedy decoding repeat one id, which would make parity on
    generation trivially true. A smaller `embedding_std` (the conditioning tests use std / 4) keeps tied heads with
    scaled embeddings (Gemma) from just echoing the input token.
    """
    gen = torch.Generator().manual_seed(seed)
    norm_weights = set()
    embeddings = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter):
                norm_weights.add(id(weight))
        if isinstance(module, nn.Embedding):
            embeddings.add(id(module.weight))
    seen = set()
    for _, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or not param.is_floating_point():
            continue
        seen.add(id(param))
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if id(param) in norm_weights:
            value = 1.0 + 0.1 * noise
        elif embedding_std is not None and id(param) in embeddings:
            value = embedding_std * noise
        elif param.dim() >= 2:
            value = std * noise
        else:
            value = (std / 4) * noise
        param.copy_(value.to(param.dtype))
    return model


@torch.no_grad()
def open_gates(model: nn.Module, value: float = 0.5) -> int:
    """Fill every injected gate (`attn_gate`, `ffn_gate`; 0 at init, the identity) with `value`, so that the encoder
    reaches the logits; returns how many were opened (asserted to be some)."""
    opened = 0
    for name, param in cross_attention_parameters(model):
        if name.endswith(("attn_gate", "ffn_gate")):
            param.fill_(value)
            opened += 1
    assert opened, "no injected gates found"
    return opened


def image_size(encoder_config) -> int:
    size = encoder_config.image_size
    return size if isinstance(size, int) else size[0]


def pixel_values(encoder_config, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random `[B, C, H, W]` images for the encoder's image size."""
    gen = torch.Generator().manual_seed(seed)
    size = image_size(encoder_config)
    return torch.randn(batch, encoder_config.num_channels, size, size, generator=gen)


def text_inputs(batch: int = 2, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """`input_ids` + `attention_mask` with right padding (row i has `length - 3 * i` real tokens)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=gen)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        real = max(2, length - 3 * row)
        attention_mask[row, real:] = 0
        input_ids[row, real:] = PAD
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def labels(batch: int = 2, length: int = 7, seed: int = 1, pad_with_ignore: bool = False) -> torch.Tensor:
    """Random target ids in `[3, VOCAB)`; with `pad_with_ignore`, the tail of rows after the first is -100."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.randint(3, VOCAB, (batch, length), generator=gen)
    if pad_with_ignore:
        for row in range(1, batch):
            out[row, max(1, length - 2 * row) :] = -100
    return out


def write_bert_vocab(directory: str, words: list[str] | None = None) -> str:
    """Write a WordPiece `vocab.txt` (special tokens first) and return its path."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = words or [
        "a", "an", "the", "image", "of", "two", "cats", "cat", "chilling", "on", "couch", "hello", "world", "this",
        "is", "really", "long", "text", "corresponding", "summary", "tower", "tall", "paris", "dog", "cute", "##s",
        "##ing", "blanket", "bed", "laying", "next", "to", ".", ",",
    ]  # fmt: skip
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(specials + words) + "\n")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table (byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


BPE_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<|endoftext|>", "<mask>")


def byte_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tiny byte-level BPE vocabulary (specials, the 256 byte symbols, a few merges) for GPT-2 / RoBERTa tokenizers.

    Ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<|endoftext|>` 4, `<mask>` 5; 266 tokens in all.
    """
    vocab = {token: i for i, token in enumerate(BPE_SPECIALS)}
    for char in _bytes_to_unicode().values():
        vocab[char] = len(vocab)
    merges = [("h", "e"), ("l", "l"), ("Ġ", "w"), ("o", "r"), ("Ġ", "c"), ("a", "t")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return vocab, merges


# -- the seed-doc checkpoints' tokenizers, images and image processor (conftest.py's *_dir fixtures, the doc tests) ----

IMAGE_SIZE = 30  # tiny ViT: 30x30 images, 10x10 patches
BPE_VOCAB, BPE_MERGES = byte_bpe_vocab()
BPE_VOCAB_SIZE = len(BPE_VOCAB)
ENDOFTEXT = BPE_VOCAB["<|endoftext|>"]


def random_image(seed: int = 0, size: tuple[int, int] = (48, 40)):
    """Stands in for the COCO / IAM / cats images of the doc examples (not square, so the processor must resize)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def tiny_image_processor() -> transformers.ViTImageProcessor:
    return transformers.ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def bpe_gpt2_tokenizer() -> transformers.GPT2TokenizerFast:
    return transformers.GPT2TokenizerFast(vocab=dict(BPE_VOCAB), merges=list(BPE_MERGES))


# -- tiny models for the command line (`splice train --encoder JSON --decoder JSON`) -----------------------------------


def cli_encoder(**overrides) -> dict:
    """A one-layer ViT for 32x32 images, as a `--encoder` JSON dict."""
    return {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 37, "image_size": 32, "patch_size": 8, **overrides}  # fmt: skip


def cli_decoder(**overrides) -> dict:
    """A one-layer GPT-2, as a `--decoder` JSON dict."""
    return {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 64, **overrides}
