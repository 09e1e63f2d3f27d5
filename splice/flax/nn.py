"""Building blocks of splice's JAX models (Flax NNX), with parameters named and laid out as PyTorch stores them.

A `Linear`'s `weight` is `[out, in]` like `torch.nn.Linear`, GPT-2's `Conv1D` keeps `[in, out]`, `LayerNorm` and
`Embedding` hold `weight` (and `bias`): the dotted path of every parameter is the key of the same tensor in a
transformers safetensors checkpoint, so a checkpoint loads with no renaming and no transposes.

`dtype` is the computation dtype (e.g. `jnp.bfloat16`); parameters stay float32. Softmax and layer norms run in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# transformers' `hidden_act` names → functions (exact erf GELU for "gelu", tanh approximation for the GPT-2 ones).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation transformers calls `name`; an unknown one is a `ValueError` listing those supported."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} has no JAX implementation in splice; supported: {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class Linear(nnx.Module):
    """`torch.nn.Linear`: `weight` `[out, in]`, `bias` `[out]`."""

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, bias: bool = True, std: float = 0.02):
        self.weight = _normal(rngs, (d_out, d_in), std)
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        y = x.astype(dtype) @ self.weight[...].astype(dtype).T
        return y if self.bias is None else y + self.bias[...].astype(dtype)


class Conv1D(nnx.Module):
    """GPT-2's `Conv1D`: a linear layer stored `[in, out]`."""

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, std: float = 0.02):
        self.weight = _normal(rngs, (d_in, d_out), std)
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

    def __call__(self, x: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return x.astype(dtype) @ self.weight[...].astype(dtype) + self.bias[...].astype(dtype)


class LayerNorm(nnx.Module):
    """`torch.nn.LayerNorm` over the last axis, computed in float32, returned in `dtype`."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(dtype)


class Embedding(nnx.Module):
    """`torch.nn.Embedding`: `weight` `[num, dim]`."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, std: float = 0.02):
        self.weight = _normal(rngs, (num, dim), std)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)

    def attend(self, x: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """Logits against the embedding matrix (a tied language-model head)."""
        return x.astype(dtype) @ self.weight[...].astype(dtype).T


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout when `rngs` is given (training), identity otherwise."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)  # [B, T, D] -> [B, H, T, D/H]


def merge_heads(x: jax.Array) -> jax.Array:
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)  # [B, H, T, D/H] -> [B, T, D]


def attention_bias(keep: jax.Array) -> jax.Array:
    """Boolean `[B, 1|H, Tq, Tk]` (True: attend) → additive float32 bias (0 or the most negative float)."""
    return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, rate: float, rngs: nnx.Rngs | None,
    scale: float | None = None,
) -> jax.Array:  # fmt: skip
    """Scaled dot-product attention on `[B, H, T, D/H]` heads; `bias` `[B, 1|H, Tq, Tk]`; returns `[B, Tq, D]`."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(0, 1, 3, 2)).astype(jnp.float32) * scale  # [B, H, Tq, Tk]
    if bias is not None:
        scores = scores + bias
    probs = dropout(jax.nn.softmax(scores, axis=-1), rate, rngs).astype(v.dtype)
    return merge_heads(probs @ v)


def write_cache(cache: dict[str, jax.Array], k: jax.Array, v: jax.Array, index: jax.Array) -> dict[str, jax.Array]:
    """Write new `[B, H, T, D/H]` keys/values into a fixed-size `[B, H, L, D/H]` cache at position `index`."""
    start = (0, 0, index, 0)
    return {
        "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
        "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start),
    }


def causal_bias(index: jax.Array | int, t: int, length: int, key_mask: jax.Array | None) -> jax.Array:
    """Decoder self-attention bias `[B|1, 1, T, L]`: `T` new queries at positions `index..index+T-1` see keys up to
    their own position; `key_mask` `[B, L]` (1: a real token) hides padding. `L` is `T` without a cache."""
    q = index + jnp.arange(t)  # [T]
    keep = (jnp.arange(length)[None, :] <= q[:, None])[None, None]  # [1, 1, T, L]
    if key_mask is not None:
        keep = keep & key_mask[:, None, None, :].astype(bool)  # [B, 1, T, L]
    return attention_bias(keep)


def decoder_bias(ids: jax.Array, mask: jax.Array | None, cache: dict | None) -> tuple[jax.Array | int, jax.Array]:
    """For new decoder tokens `ids` `[B, T]`: the position of the first (what the cache holds, else 0) and the causal
    self-attention bias over the cache's fixed length (or `T` without a cache)."""
    index = 0 if cache is None else cache["index"]
    length = ids.shape[1] if cache is None else cache["layers"][0]["k"].shape[2]
    return index, causal_bias(index, ids.shape[1], length, mask)


def padding_bias(mask: jax.Array | None) -> jax.Array | None:
    """A `[B, S]` padding mask (1: a real token) → bias `[B, 1, 1, S]`; `None` stays `None` (attend everywhere)."""
    return None if mask is None else attention_bias(mask[:, None, None, :].astype(bool))


class QKVAttention(nnx.Module):
    """Separate `query` / `key` / `value` projections (the BERT, RoBERTa, ViT, DeiT layout), with an optional cache.

    Self-attention: keys and values come from `x`, written into `cache` (`{"k", "v"}`) at `index` when one is given.
    Cross-attention: from `source` (the encoder states), or from `cache` (`{"k", "v"}` computed once by `project_kv`).
    """

    def __init__(self, dim: int, heads: int, dropout_rate: float, *, rngs: nnx.Rngs, bias: bool = True,
                 std: float = 0.02):  # fmt: skip
        self.query = Linear(dim, dim, rngs=rngs, bias=bias, std=std)
        self.key = Linear(dim, dim, rngs=rngs, bias=bias, std=std)
        self.value = Linear(dim, dim, rngs=rngs, bias=bias, std=std)
        self.heads, self.dropout_rate = heads, dropout_rate

    def project_kv(self, source: jax.Array, dtype: jnp.dtype) -> dict[str, jax.Array]:
        """Keys and values `[B, H, S, D/H]` of `source` `[B, S, D]`."""
        return {
            "k": split_heads(self.key(source, dtype), self.heads),
            "v": split_heads(self.value(source, dtype), self.heads),
        }

    def __call__(
        self, x: jax.Array, bias: jax.Array | None, rngs: nnx.Rngs | None, dtype: jnp.dtype, *,
        source: jax.Array | None = None, cache: dict | None = None, index: jax.Array | int = 0, cross: bool = False,
    ) -> tuple[jax.Array, dict | None]:  # fmt: skip
        q = split_heads(self.query(x, dtype), self.heads)  # [B, H, T, D/H]
        if cross:
            kv = cache if cache is not None else self.project_kv(source, dtype)
        else:
            kv = self.project_kv(x, dtype)
            if cache is not None:
                kv = cache = write_cache(cache, kv["k"], kv["v"], index)
        return attend(q, kv["k"], kv["v"], bias, self.dropout_rate, rngs), cache
