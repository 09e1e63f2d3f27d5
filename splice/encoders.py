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


def enc_to_dec_projection(encoder_config: PreTrainedConfig, decoder_config: PreTrainedConfig) -> tuple[int, int] | None:
    """The one rule for `cross_attention_hidden_size` (transformers' composites define it; PyTorch and JAX share it).

    The decoder config's `cross_attention_hidden_size` is the width of the encoder states its cross-attention reads.
    Unset, the decoder reads states of its own width, so encoder states of another width pass through a projection
    `enc_to_dec_proj`; set, it must equal the encoder's width and no projection is added (TrOCR's decoder reads its
    ViT's 768-wide states at width 1024 that way).

    Returns:
        `(encoder width, decoder width)` of the `enc_to_dec_proj` to add, or `None` when none is needed.

    Raises:
        `ValueError`: `cross_attention_hidden_size` is set to something other than the encoder's width.
    """
    enc_width, dec_width = encoder_hidden_size(encoder_config), decoder_config.hidden_size
    cross_width = getattr(decoder_config, "cross_attention_hidden_size", None)
    if cross_width is not None and cross_width != enc_width:
        raise ValueError(
            f"The decoder config sets cross_attention_hidden_size={cross_width}, but the encoder's hidden size is "
            f"{enc_width}. Remove `cross_attention_hidden_size` from the decoder config (splice then adds a "
            "projection `enc_to_dec_proj`) or set it to the encoder's hidden size."
        )
    return (enc_width, dec_width) if cross_width is None and enc_width != dec_width else None


def num_token_states(hidden: torch.Tensor) -> int:
    """How many token states S `as_token_states(hidden)` gives, read from the shape alone (no copy of a feature map)."""
    return hidden.shape[2] * hidden.shape[3] if hidden.dim() == 4 else hidden.shape[1]


def as_token_states(hidden: torch.Tensor) -> torch.Tensor:
    """Token states `[B, S, E]` from an encoder's `last_hidden_state`.

    Convolutional encoders return feature maps `[B, E, H, W]`; each spatial position becomes one token.
    """
    if hidden.dim() == 4:
        return hidden.flatten(2).transpose(1, 2).contiguous()  # [B, E, H, W] -> [B, H*W, E], dense for `.view`
    if hidden.dim() != 3:
        raise ValueError(f"Encoder returned last_hidden_state of shape {tuple(hidden.shape)}; expected [B, S, E].")
    return hidden
