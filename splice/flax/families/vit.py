"""ViT and DeiT encoders in Flax NNX (`ViTModel`, `DeiTModel`), parameters named as in their checkpoints.

DeiT is ViT with a distillation token after `[CLS]`; that token is the only difference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..nn import LayerNorm, Linear, QKVAttention, activation, dropout
from .bert import Pooler


class PatchEmbeddings(nnx.Module):
    """The stride-`p` convolution as a matmul over flattened `[C, p, p]` patches (same weight layout as the conv)."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        c, p, d = config.num_channels, config.patch_size, config.hidden_size
        self.projection = _Conv(c * p * p, d, (d, c, p, p), rngs=rngs, std=config.initializer_range)
        self.patch, self.channels = p, c

    def __call__(self, pixel_values: jax.Array, dtype) -> jax.Array:
        b, c, h, w = pixel_values.shape  # NCHW, as the PyTorch model takes it
        p = self.patch
        x = pixel_values.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)  # [B, H/p, W/p, C, p, p]
        x = x.reshape(b, (h // p) * (w // p), c * p * p)  # [B, N, C*p*p]
        return self.projection(x, dtype)  # [B, N, D]


class _Conv(Linear):
    """A `Conv2d` weight `[D, C, p, p]` applied to flattened patches."""

    def __init__(self, d_in: int, d_out: int, shape: tuple[int, ...], *, rngs: nnx.Rngs, std: float):
        super().__init__(d_in, d_out, rngs=rngs, std=std)
        self.weight = nnx.Param(self.weight[...].reshape(shape))

    def __call__(self, x, dtype=jnp.float32):
        w = self.weight[...].reshape(self.weight[...].shape[0], -1).astype(dtype)  # [D, C*p*p]
        return x.astype(dtype) @ w.T + self.bias[...].astype(dtype)


class Embeddings(nnx.Module):
    def __init__(self, config: Any, distilled: bool, *, rngs: nnx.Rngs):
        d, std = config.hidden_size, config.initializer_range
        n = (config.image_size // config.patch_size) ** 2 + (2 if distilled else 1)
        self.cls_token = nnx.Param(std * jax.random.normal(rngs.params(), (1, 1, d)))
        self.distillation_token = nnx.Param(std * jax.random.normal(rngs.params(), (1, 1, d))) if distilled else None
        self.position_embeddings = nnx.Param(std * jax.random.normal(rngs.params(), (1, n, d)))
        self.patch_embeddings = PatchEmbeddings(config, rngs=rngs)
        self.rate, self.image_size = config.hidden_dropout_prob, config.image_size

    def __call__(self, pixel_values, rngs, dtype):
        size = tuple(pixel_values.shape[2:])
        if size != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values of size {size} given to a ViT with image_size={self.image_size}: resize the images "
                "with the model's image processor (the JAX ViT does not interpolate position embeddings)."
            )
        x = self.patch_embeddings(pixel_values, dtype)  # [B, N, D]
        tokens = [self.cls_token[...]] + ([] if self.distillation_token is None else [self.distillation_token[...]])
        tokens = [jnp.broadcast_to(t, (x.shape[0], 1, x.shape[2])).astype(dtype) for t in tokens]
        x = jnp.concatenate([*tokens, x], axis=1) + self.position_embeddings[...].astype(dtype)  # [B, N+1|2, D]
        return dropout(x, self.rate, rngs)


class _Dense(nnx.Module):
    def __init__(self, d_in: int, d_out: int, std: float, *, rngs: nnx.Rngs):
        self.dense = Linear(d_in, d_out, rngs=rngs, std=std)


class Attention(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        d, std = config.hidden_size, config.initializer_range
        self.attention = QKVAttention(d, config.num_attention_heads, config.attention_probs_dropout_prob, rngs=rngs,
                                      bias=config.qkv_bias, std=std)  # fmt: skip
        self.output = _Dense(d, d, std, rngs=rngs)


class Layer(nnx.Module):
    """Pre-LayerNorm: `x + attention(ln(x))`, then `x + mlp(ln(x))`."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        d, std = config.hidden_size, config.initializer_range
        self.layernorm_before = LayerNorm(d, config.layer_norm_eps)
        self.attention = Attention(config, rngs=rngs)
        self.layernorm_after = LayerNorm(d, config.layer_norm_eps)
        self.intermediate = _Dense(d, config.intermediate_size, std, rngs=rngs)
        self.output = _Dense(config.intermediate_size, d, std, rngs=rngs)
        self.act, self.rate = activation(config.hidden_act), config.hidden_dropout_prob

    def __call__(self, x, rngs, dtype):
        y, _ = self.attention.attention(self.layernorm_before(x, dtype), None, rngs, dtype)
        x = x + dropout(self.attention.output.dense(y, dtype), self.rate, rngs)
        y = self.act(self.intermediate.dense(self.layernorm_after(x, dtype), dtype))
        return x + dropout(self.output.dense(y, dtype), self.rate, rngs)


class Stack(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.layer = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])


class ViTEncoder(nnx.Module):
    """`ViTModel` / `DeiTModel` (with pooler, kept for checkpoints): `last_hidden_state` `[B, N+1|2, D]`."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.embeddings = Embeddings(config, config.model_type == "deit", rngs=rngs)
        self.encoder = Stack(config, rngs=rngs)
        self.layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.pooler = Pooler(config, rngs=rngs)

    def encode(self, pixel_values, attention_mask, rngs, dtype):
        x = self.embeddings(pixel_values, rngs, dtype)
        for layer in self.encoder.layer:
            x = layer(x, rngs, dtype)
        return self.layernorm(x, dtype)
