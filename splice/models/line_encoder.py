"""`LineEncoderModel`: a CRNN-style text-line encoder (Shi, Bai & Yao, 2015), one token per column group.

A small convolutional stack reads the image with a locality prior that a ViT learns only slowly from scratch; it
halves the height at every stage but the width only `width_downsample` times, then averages the remaining rows, so the
output is a left-to-right sequence `[B, W / 2**width_downsample, E]`, as CTC (`ctc_weight`) needs. Learned position
embeddings and a few transformer layers give each column its place and context, for the attention decoder.

Registered with `AutoConfig`/`AutoModel` as `model_type="splice_line_encoder"`, so a config dict
`{"model_type": "splice_line_encoder", ...}` builds it and composites that contain it save and load like any other.
"""

from __future__ import annotations

import math

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .conv_tokens import conv_stage, init_conv_token_weights, token_layers


@strict
class LineEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`LineEncoderModel`].

    Args:
        image_size (`int` or `list[int]`, *optional*, defaults to `[32, 160]`): `[height, width]` of the input.
        num_channels (`int`, *optional*, defaults to 3): input channels.
        channels (`list[int]`, *optional*, defaults to `[32, 64, 128, 128]`): width of each convolutional stage; each
            stage is a 3x3 convolution (batch norm, ReLU), then a 2x2 max-pooling (the first `width_downsample` stages)
            or a 2x1 one (height only); what height remains is averaged.
        width_downsample (`int`, *optional*, defaults to 2): stages that also halve the width (tokens = W / 2**k).
        hidden_size (`int`, *optional*, defaults to 128): the width E of the output tokens.
        num_hidden_layers (`int`, *optional*, defaults to 2): transformer layers over the column tokens.
        num_attention_heads (`int`, *optional*, defaults to 4)
        intermediate_size (`int`, *optional*, defaults to 256): the transformer layers' feed-forward width.
        dropout (`float`, *optional*, defaults to 0.0)
        initializer_range (`float`, *optional*, defaults to 0.02): std of the linear layers' initial weights.
        position_init_scale (`float`, *optional*, defaults to 0.0): the learned position embeddings start as this
            times a sinusoid table (0: zeros, so positions are learned from nothing).
    """

    model_type = "splice_line_encoder"
    image_size: int | list[int] | tuple[int, int] = (32, 160)
    num_channels: int = 3
    channels: list[int] | tuple[int, ...] = (32, 64, 128, 128)
    width_downsample: int = 2
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    dropout: float | int = 0.0
    initializer_range: float = 0.02
    position_init_scale: float = 0.0

    @property
    def num_tokens(self) -> int:
        """Output tokens per image: the input width divided by `2**width_downsample`."""
        width = self.image_size if isinstance(self.image_size, int) else self.image_size[1]
        return width // 2**self.width_downsample


def sinusoid(length: int, width: int) -> torch.Tensor:
    """Sinusoidal position table `[1, length, width]`: sines and cosines of geometrically spaced frequencies."""
    positions = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
    frequencies = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies[: width // 2])
    return table[None]


class LineEncoderModel(PreTrainedModel):
    r"""
    The CRNN-style line encoder: `pixel_values [B, C, H, W]` → `last_hidden_state [B, W / 2**k, E]`.

    Args:
        config (`LineEncoderConfig`)
    """

    config_class = LineEncoderConfig
    base_model_prefix = "line_encoder"
    main_input_name = "pixel_values"
    _supports_sdpa = True

    def __init__(self, config: LineEncoderConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        width_in = config.num_channels
        for stage, width in enumerate(config.channels):
            layers += [
                *conv_stage(width_in, width),
                nn.MaxPool2d((2, 2) if stage < config.width_downsample else (2, 1)),
            ]
            width_in = width
        self.convolutions = nn.Sequential(*layers)
        self.projection = nn.Linear(width_in, config.hidden_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_tokens, config.hidden_size))
        self.layers, self.norm = token_layers(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not init_conv_token_weights(module, self.config.initializer_range) and isinstance(module, LineEncoderModel):
            # Learned, but started as a sinusoid table (Vaswani et al., 2017), so each column's place is readable by
            # the decoder's cross-attention from the first step instead of emerging from random vectors.
            module.position_embeddings.copy_(
                self.config.position_init_scale * sinusoid(module.position_embeddings.shape[1], self.config.hidden_size)
            )

    def get_input_embeddings(self) -> nn.Module:
        return self.projection

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        # Channels-last activations: oneDNN's CPU convolutions, batch norm and pooling run faster on them
        # (benchmarks/README.md, the OCR demo's rows).
        features = self.convolutions(pixel_values.contiguous(memory_format=torch.channels_last))  # [B, C, H', W']
        columns = features.mean(2).transpose(1, 2)  # [B, W', C]: rows averaged, left to right
        states = self.projection(columns) + self.position_embeddings[:, : columns.shape[1]]  # [B, W', E]
        states = self.norm(self.layers(states))  # [B, W', E]
        if return_dict is False:
            return (states,)
        return BaseModelOutput(last_hidden_state=states)
