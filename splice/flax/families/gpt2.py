"""GPT-2 with cross-attention in Flax NNX (`GPT2LMHeadModel`, `add_cross_attention=True`), checkpoint names kept.

Pre-LayerNorm blocks; `c_attn` is one fused `[D, 3D]` projection (`[D, 2D]` keys/values for cross-attention).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..nn import (
    Conv1D,
    Embedding,
    LayerNorm,
    Linear,
    activation,
    attend,
    decoder_bias,
    dropout,
    split_heads,
    write_cache,
)


def _check(config: Any) -> None:
    if getattr(config, "reorder_and_upcast_attn", False):
        raise ValueError("reorder_and_upcast_attn=True has no JAX implementation in splice; set it to False.")


class Attention(nnx.Module):
    def __init__(self, config: Any, layer_idx: int, cross: bool, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        if cross:
            self.q_attn = Conv1D(d, d, rngs=rngs, std=std)
            self.c_attn = Conv1D(d, 2 * d, rngs=rngs, std=std)
        else:
            self.c_attn = Conv1D(d, 3 * d, rngs=rngs, std=std)
        self.c_proj = Conv1D(d, d, rngs=rngs, std=std)
        self.heads, self.cross = config.n_head, cross
        head_dim = d // config.n_head
        scale = 1.0 / math.sqrt(head_dim) if config.scale_attn_weights else 1.0
        self.scale = scale / (layer_idx + 1) if config.scale_attn_by_inverse_layer_idx else scale
        self.attn_rate, self.resid_rate = config.attn_pdrop, config.resid_pdrop

    def project_kv(self, source, dtype) -> dict[str, jax.Array]:
        k, v = jnp.split(self.c_attn(source, dtype), 2, axis=-1)  # 2 x [B, S, D]
        return {"k": split_heads(k, self.heads), "v": split_heads(v, self.heads)}

    def __call__(self, x, bias, rngs, dtype, source=None, cache=None, index=0):
        if self.cross:
            q = self.q_attn(x, dtype)
            kv = cache if cache is not None else self.project_kv(source, dtype)
        else:
            q, k, v = jnp.split(self.c_attn(x, dtype), 3, axis=-1)  # 3 x [B, T, D]
            kv = {"k": split_heads(k, self.heads), "v": split_heads(v, self.heads)}
            if cache is not None:
                kv = cache = write_cache(cache, kv["k"], kv["v"], index)
        y = attend(split_heads(q, self.heads), kv["k"], kv["v"], bias, self.attn_rate, rngs, self.scale)
        return dropout(self.c_proj(y, dtype), self.resid_rate, rngs), cache


class MLP(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        inner = config.n_inner or 4 * d
        self.c_fc = Conv1D(d, inner, rngs=rngs, std=std)
        self.c_proj = Conv1D(inner, d, rngs=rngs, std=std)
        self.act, self.rate = activation(config.activation_function), config.resid_pdrop

    def __call__(self, x, rngs, dtype):
        return dropout(self.c_proj(self.act(self.c_fc(x, dtype)), dtype), self.rate, rngs)


class Block(nnx.Module):
    def __init__(self, config: Any, layer_idx: int, *, rngs: nnx.Rngs):
        d, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = LayerNorm(d, eps)
        self.attn = Attention(config, layer_idx, False, rngs=rngs)
        self.ln_cross_attn = LayerNorm(d, eps)
        self.crossattention = Attention(config, layer_idx, True, rngs=rngs)
        self.ln_2 = LayerNorm(d, eps)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, bias, source, source_bias, rngs, dtype, cache=None, index=0):
        self_cache = None if cache is None else {"k": cache["k"], "v": cache["v"]}
        y, self_cache = self.attn(self.ln_1(x, dtype), bias, rngs, dtype, cache=self_cache, index=index)
        x = x + y
        cross = None if cache is None else {"k": cache["ck"], "v": cache["cv"]}
        y, _ = self.crossattention(self.ln_cross_attn(x, dtype), source_bias, rngs, dtype, source=source, cache=cross)
        x = x + y
        x = x + self.mlp(self.ln_2(x, dtype), rngs, dtype)
        return x, None if cache is None else {**cache, **self_cache}


class Transformer(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        self.wte = Embedding(config.vocab_size, d, rngs=rngs, std=std)
        self.wpe = Embedding(config.n_positions, d, rngs=rngs, std=std)
        self.h = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(d, config.layer_norm_epsilon)
        self.rate = config.embd_pdrop


class GPT2Decoder(nnx.Module):
    """`GPT2LMHeadModel`: `transformer.`, then `lm_head` (tied to `wte` unless `tie_word_embeddings=False`)."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        _check(config)
        self.transformer = Transformer(config, rngs=rngs)
        tied = config.tie_word_embeddings
        self.lm_head = None if tied else Linear(config.n_embd, config.vocab_size, rngs=rngs, bias=False)

    def decode(self, ids, mask, source, source_bias, rngs, dtype, position_ids=None, cache=None):
        t = self.transformer
        index, bias = decoder_bias(ids, mask, cache)
        if position_ids is None:
            position_ids = jnp.broadcast_to(index + jnp.arange(ids.shape[1]), ids.shape)  # [B, T]
        x = dropout((t.wte(ids) + t.wpe(position_ids)).astype(dtype), t.rate, rngs)  # [B, T, D]
        layers = []
        for i, block in enumerate(t.h):
            x, layer_cache = block(
                x, bias, source, source_bias, rngs, dtype, None if cache is None else cache["layers"][i], index
            )
            layers.append(layer_cache)
        x = t.ln_f(x, dtype)
        logits = t.wte.attend(x, dtype) if self.lm_head is None else self.lm_head(x, dtype)
        return logits, None if cache is None else {"index": index + ids.shape[1], "layers": layers}

    def cross_kv(self, source, dtype) -> list[dict[str, jax.Array]]:
        return [block.crossattention.project_kv(source, dtype) for block in self.transformer.h]
