"""`GridEncoderModel`: a small convolutional encoder whose feature-map tokens carry learned 2D positions.

The 2D counterpart of `LineEncoderModel`: a few 3x3 convolutional stages (batch norm, ReLU, the first
`downsample` of them followed by a 2x2 max-pooling) read the image with a locality prior, and each cell of the final
feature map becomes one token, left to right and top to bottom, `[B, (H / 2**k) * (W / 2**k), E]`. Unlike a ResNet's
map flattened by `splice.encoders.as_token_states`, each token then gets a learned position embedding (started as a
2D sinusoid table: half the width encodes the row, half the column) and a few transformer layers give it context,
so the decoder's cross-attention can tell the left shape of a pair from the right one.

Registered with `AutoConfig`/`AutoModel` as `model_type="splice_grid_encoder"`, so a config dict
`{"model_type": "splice_grid_encoder", ...}` builds it and composites that contain it save and load like any other.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .conv_tokens import conv_stage, init_conv_token_weights, token_layers
from .line_encoder import sinusoid


@strict
class GridEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`GridEncoderModel`].

    Args:
        image_size (`int` or `list[int]`, *optional*, defaults to 64): the input's side, or `[height, width]`.
        num_channels (`int`, *optional*, defaults to 3): input channels.
        channels (`list[int]`, *optional*, defaults to `[32, 64, 128, 128]`): width of each convolutional stage (a
            3x3 convolution, batch norm, ReLU; the first `downsample` stages end in a 2x2 max-pooling).
        downsample (`int`, *optional*, defaults to 3): stages that halve the resolution (a 64 px input gives an 8x8
            grid of 64 tokens).
        hidden_size (`int`, *optional*, defaults to 128): the width E of the output tokens.
        num_hidden_layers (`int`, *optional*, defaults to 1): transformer layers over the grid's tokens.
        num_attention_heads (`int`, *optional*, defaults to 4)
        intermediate_size (`int`, *optional*, defaults to 256): the transformer layers' feed-forward width.
        dropout (`float`, *optional*, defaults to 0.0)
        initializer_range (`float`, *optional*, defaults to 0.02): std of the linear layers' initial weights.
        position_init_scale (`float`, *optional*, defaults to 0.5): the learned position embeddings start as this
            times a 2D sinusoid table (0: zeros, so positions are learned from nothing).
    """

    model_type = "splice_grid_encoder"
    image_size: int | list[int] | tuple[int, int] = 64
    num_channels: int = 3
    channels: list[int] | tuple[int, ...] = (32, 64, 128, 128)
    downsample: int = 3
    hidden_size: int = 128
    num_hidden_layers: int = 1
    num_attention_heads: int = 4
    intermediate_size: int = 256
    dropout: float | int = 0.0
    initializer_range: float = 0.02
    position_init_scale: float = 0.5

    @property
    def grid_size(self) -> tuple[int, int]:
        """`(rows, columns)` of the output grid: the input's height and width divided by `2**downsample`."""
        height, width = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        return height // 2**self.downsample, width // 2**self.downsample


def sinusoid_2d(rows: int, columns: int, width: int) -> torch.Tensor:
    """2D position table `[1, rows * columns, width]`, row-major: row sinusoids, then column ones, each `width / 2`."""
    half = width // 2
    row_table = sinusoid(rows, half)[0][:, None].expand(rows, columns, half)  # [R, C, E/2]
    column_table = sinusoid(columns, width - half)[0][None].expand(rows, columns, width - half)  # [R, C, E/2]
    return torch.cat([row_table, column_table], dim=-1).reshape(1, rows * columns, width)


class GridEncoderModel(PreTrainedModel):
    r"""
    The grid encoder: `pixel_values [B, C, H, W]` → `last_hidden_state [B, (H / 2**k) * (W / 2**k), E]`, row-major.

    Args:
        config (`GridEncoderConfig`)
    """

    config_class = GridEncoderConfig
    base_model_prefix = "grid_encoder"
    main_input_name = "pixel_values"
    _supports_sdpa = True

    def __init__(self, config: GridEncoderConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        width_in = config.num_channels
        for stage, width in enumerate(config.channels):
            layers += conv_stage(width_in, width)
            if stage < config.downsample:
                layers.append(nn.MaxPool2d(2))
            width_in = width
        self.convolutions = nn.Sequential(*layers)
        self.projection = nn.Linear(width_in, config.hidden_size)
        rows, columns = config.grid_size
        self.position_embeddings = nn.Parameter(torch.zeros(1, rows * columns, config.hidden_size))
        self.layers, self.norm = token_layers(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not init_conv_token_weights(module, self.config.initializer_range) and isinstance(module, GridEncoderModel):
            # Learned, but started as a 2D sinusoid table, so each cell's row and column are readable by the decoder's
            # cross-attention from the first step instead of emerging from random vectors.
            rows, columns = self.config.grid_size
            table = sinusoid_2d(rows, columns, self.config.hidden_size)
            module.position_embeddings.copy_(self.config.position_init_scale * table)

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
        # Channels-last activations: oneDNN's CPU convolutions, batch norm and pooling run faster on them.
        features = self.convolutions(pixel_values.contiguous(memory_format=torch.channels_last))  # [B, C, H', W']
        if features.shape[2] * features.shape[3] != self.position_embeddings.shape[1]:
            raise ValueError(
                f"GridEncoderModel was built for image_size={self.config.image_size} (a {self.config.grid_size} grid) "
                f"but got pixel_values of shape {tuple(pixel_values.shape)} ({tuple(features.shape[2:])} grid)."
            )
        cells = features.flatten(2).transpose(1, 2)  # [B, H'*W', C], row-major
        states = self.projection(cells) + self.position_embeddings  # [B, H'*W', E]
        states = self.norm(self.layers(states))
        if return_dict is False:
            return (states,)
        return BaseModelOutput(last_hidden_state=states)
