"""What splice's two small convolutional encoders share (`LineEncoderModel`, `GridEncoderModel`): the convolutional
stage, the transformer layers over the tokens, and the weight initialisation of both.

Each encoder keeps what makes it itself: how its stages pool, how the feature map becomes tokens, and its position
table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def conv_stage(width_in: int, width: int) -> list[nn.Module]:
    """A 3x3 convolution (no bias: batch norm follows), batch norm and ReLU; the caller adds its pooling."""
    return [nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]


def token_layers(config: Any) -> tuple[nn.TransformerEncoder, nn.LayerNorm]:
    """Pre-norm transformer layers over the tokens `[B, S, E]` (`config`: `hidden_size`, `num_attention_heads`,
    `intermediate_size`, `dropout`, `num_hidden_layers`) and the final layer norm."""
    layer = nn.TransformerEncoderLayer(
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, config.num_hidden_layers, enable_nested_tensor=False), nn.LayerNorm(
        config.hidden_size
    )


@torch.no_grad()
def init_conv_token_weights(module: nn.Module, std: float) -> bool:
    """Initialise a convolution (Kaiming, for ReLU), a linear layer (normal, `std`) or a norm; whether it was one."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        module.weight.normal_(0.0, std)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        module.weight.fill_(1.0)
        module.bias.zero_()
    else:
        return False
    return True
