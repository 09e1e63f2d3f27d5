"""Shared by the JAX and TensorFlow tests: every family pair their classes implement, built in PyTorch (the oracle)
with re-drawn tiny random weights, saved as a checkpoint the other frameworks load.

A plain module (see `tiny.py`). Every pair: encoders ViT, DeiT, BERT, RoBERTa (24 wide: `enc_to_dec_proj`) × decoders
GPT-2, BERT, RoBERTa, all with native cross-attention.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import transformers
from tiny import (
    BERT_NO_DROPOUT,
    DECODER_START,
    GPT2_NO_DROPOUT,
    PAD,
    bert_decoder_config,
    bert_encoder_config,
    deit_config,
    gpt2_config,
    pixel_values,
    randomize,
    roberta_decoder_config,
    roberta_encoder_config,
    text_inputs,
    vit_config,
)

import splice

ENCODERS = {"vit": vit_config, "deit": deit_config, "bert": bert_encoder_config, "roberta": roberta_encoder_config}
DECODERS = {"gpt2": gpt2_config, "bert": bert_decoder_config, "roberta": roberta_decoder_config}
PAIRS = [f"{e}-{d}" for e in ENCODERS for d in DECODERS]
MAX_NEW_TOKENS = 8


class Pair(NamedTuple):
    name: str
    vision: bool
    torch_model: torch.nn.Module  # splice's PyTorch class
    directory: str  # its checkpoint
    inputs: dict[str, torch.Tensor]  # the encoder input (and attention_mask for text)
    decoder_input_ids: torch.Tensor
    eos_token_id: int  # an id the model generates early for row 0 only: rows finish at different steps


def build_pair(name: str, directory: str, seed: int = 0, dropout: bool = True) -> Pair:
    """`dropout=False` zeroes every dropout rate (training tests that compare runs, or want a quick compile)."""
    encoder, decoder = name.split("-")
    off = {} if dropout else (GPT2_NO_DROPOUT if decoder == "gpt2" else BERT_NO_DROPOUT)
    vision = encoder in ("vit", "deit")
    torch_class = splice.VisionEncoderDecoderModel if vision else splice.EncoderDecoderModel
    config_class = splice.VisionEncoderDecoderConfig if vision else splice.EncoderDecoderConfig
    config = config_class.from_encoder_decoder_configs(
        ENCODERS[encoder](**({} if encoder in ("vit", "deit") or dropout else BERT_NO_DROPOUT)),
        DECODERS[decoder](**off),
        decoder_start_token_id=DECODER_START,
        pad_token_id=PAD,
    )
    model = randomize(torch_class(config), seed=seed, std=0.25).eval()
    model.save_pretrained(directory)
    if vision:
        inputs = {"pixel_values": pixel_values(config.encoder, seed=seed)}
    else:
        inputs = text_inputs(seed=seed)
        inputs["attention_mask"][1, -3:] = 0  # row 1 padded: the mask must reach both attentions
    decoder_input_ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=None)
    row0, row1 = greedy[0, 1:].tolist(), greedy[1, 1:].tolist()
    candidates = row0[1:4] or row0
    early = next((t for t in candidates if t not in row1[:4]), candidates[0])
    return Pair(name, vision, model, directory, inputs, decoder_input_ids, early)


def numpy_inputs(pair: Pair) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in pair.inputs.items()}


def torch_logits(pair: Pair) -> np.ndarray:
    with torch.no_grad():
        return pair.torch_model(**pair.inputs, decoder_input_ids=pair.decoder_input_ids).logits.numpy()


def transformers_logits(pair: Pair) -> np.ndarray:
    """The same checkpoint in transformers' own PyTorch class."""
    cls = transformers.VisionEncoderDecoderModel if pair.vision else transformers.EncoderDecoderModel
    model = cls.from_pretrained(pair.directory).eval()
    with torch.no_grad():
        return model(**pair.inputs, decoder_input_ids=pair.decoder_input_ids).logits.numpy()


def torch_generate(pair: Pair, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = pair.torch_model.generate(**pair.inputs, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=pair.eos_token_id,
                                        **kwargs)  # fmt: skip
    return out.numpy()
