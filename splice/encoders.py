"""What splice needs from an encoder: a tower without an LM head, its width, and token states `[B, S, E]`."""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig, PreTrainedModel


def encoder_tower(encoder: PreTrainedModel) -> PreTrainedModel:
    """Return the part of `encoder` that encodes the input.

    A full dual-tower checkpoint (CLIPModel, SiglipModel) loads through `AutoModel` as both towers; splicing uses its
    vision tower, the part whose states a captioner reads. A full encoder-decoder checkpoint (T5, Whisper) contributes
    its encoder.
    """
    vision = getattr(encoder, "vision_model", None)
    if isinstance(vision, PreTrainedModel) and getattr(encoder, "text_model", None) is not None:
        return vision
    if getattr(encoder.config, "is_encoder_decoder", False):  # T5Model, WhisperModel: keep their encoder
        return encoder.get_encoder()
    return encoder


def encoder_hidden_size(config: PreTrainedConfig) -> int:
    """Width E of the encoder's output states (`hidden_sizes[-1]` for convolutional stages, e.g. ConvNeXt, ResNet)."""
    if getattr(config, "add_adapter", False) and isinstance(getattr(config, "output_hidden_size", None), int):
        return config.output_hidden_size  # Wav2Vec2 with an adapter projects its output to this width
    if getattr(config, "hidden_sizes", None):
        return config.hidden_sizes[-1]
    for name in ("hidden_size", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"Cannot tell the output width of encoder config {type(config).__name__}: it has none of `hidden_sizes`, "
        "`hidden_size`, `d_model`, `dim`. Set `hidden_size` on the encoder config."
    )


def as_token_states(hidden: torch.Tensor) -> torch.Tensor:
    """Token states `[B, S, E]` from an encoder's `last_hidden_state`.

    Convolutional encoders return feature maps `[B, E, H, W]`; each spatial position becomes one token.
    """
    if hidden.dim() == 4:
        return hidden.flatten(2).transpose(1, 2).contiguous()  # [B, E, H, W] -> [B, H*W, E], dense for `.view`
    if hidden.dim() != 3:
        raise ValueError(f"Encoder returned last_hidden_state of shape {tuple(hidden.shape)}; expected [B, S, E].")
    return hidden
