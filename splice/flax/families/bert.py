"""BERT and RoBERTa in Flax NNX: the encoder (`BertModel`, `RobertaModel`) and the decoder with cross-attention
(`BertLMHeadModel`, `RobertaForCausalLM`), parameters named as in their transformers checkpoints.

RoBERTa is BERT with another position rule (positions count non-padding tokens from `pad_token_id + 1`) and other
names for the model and its head; both differences are class attributes here, not a second copy.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..nn import Embedding, LayerNorm, Linear, QKVAttention, activation, decoder_bias, dropout, padding_bias


def _check_absolute(config: Any) -> None:
    kind = getattr(config, "position_embedding_type", "absolute") or "absolute"
    if kind != "absolute":
        raise ValueError(f"position_embedding_type={kind!r}: splice's JAX {config.model_type} supports 'absolute'.")


class Embeddings(nnx.Module):
    def __init__(self, config: Any, roberta: bool, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, rngs=rngs, std=std)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size, rngs=rngs, std=std)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size, rngs=rngs, std=std)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.rate, self.roberta, self.pad = config.hidden_dropout_prob, roberta, config.pad_token_id

    def positions(self, ids: jax.Array, index: jax.Array | int) -> jax.Array:
        if not self.roberta:  # BERT: 0, 1, 2, ... after what the cache holds
            return jnp.broadcast_to(index + jnp.arange(ids.shape[1]), ids.shape)
        real = (ids != self.pad).astype(jnp.int32)  # RoBERTa: count real tokens, from pad + 1
        return (jnp.cumsum(real, axis=1) + index) * real + self.pad

    def __call__(self, ids, position_ids, index, rngs, dtype):
        position_ids = self.positions(ids, index) if position_ids is None else position_ids
        x = self.word_embeddings(ids) + self.position_embeddings(position_ids) + self.token_type_embeddings.weight[0]
        return dropout(self.LayerNorm(x, dtype), self.rate, rngs)  # [B, T, D]


class AttentionBlock(nnx.Module):
    """`self` (query/key/value) then `output` (dense + residual + LayerNorm): BERT's attention and cross-attention."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        d, std = config.hidden_size, config.initializer_range
        self.self = QKVAttention(d, config.num_attention_heads, config.attention_probs_dropout_prob, rngs=rngs,
                                 std=std)  # fmt: skip
        self.output = DenseOutput(d, d, config, rngs=rngs)

    def __call__(self, x, bias, rngs, dtype, **kv):
        y, cache = self.self(x, bias, rngs, dtype, **kv)
        return self.output(y, x, rngs, dtype), cache


class DenseOutput(nnx.Module):
    def __init__(self, d_in: int, d_out: int, config: Any, *, rngs: nnx.Rngs):
        self.dense = Linear(d_in, d_out, rngs=rngs, std=config.initializer_range)
        self.LayerNorm = LayerNorm(d_out, config.layer_norm_eps)
        self.rate = config.hidden_dropout_prob

    def __call__(self, y, residual, rngs, dtype):
        return self.LayerNorm(dropout(self.dense(y, dtype), self.rate, rngs) + residual, dtype)


class Intermediate(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.dense = Linear(config.hidden_size, config.intermediate_size, rngs=rngs, std=config.initializer_range)
        self.act = activation(config.hidden_act)

    def __call__(self, x, dtype):
        return self.act(self.dense(x, dtype))


class Layer(nnx.Module):
    def __init__(self, config: Any, cross: bool, *, rngs: nnx.Rngs):
        self.attention = AttentionBlock(config, rngs=rngs)
        self.crossattention = AttentionBlock(config, rngs=rngs) if cross else None
        self.intermediate = Intermediate(config, rngs=rngs)
        self.output = DenseOutput(config.intermediate_size, config.hidden_size, config, rngs=rngs)

    def __call__(self, x, bias, rngs, dtype, source=None, source_bias=None, cache=None, index=0):
        self_cache = None if cache is None else {"k": cache["k"], "v": cache["v"]}
        x, self_cache = self.attention(x, bias, rngs, dtype, cache=self_cache, index=index)
        if self.crossattention is not None:
            cross = None if cache is None else {"k": cache["ck"], "v": cache["cv"]}
            x, _ = self.crossattention(x, source_bias, rngs, dtype, source=source, cache=cross, cross=True)
        x = self.output(self.intermediate(x, dtype), x, rngs, dtype)
        new_cache = None if cache is None else {**cache, **self_cache}
        return x, new_cache


class Stack(nnx.Module):
    def __init__(self, config: Any, cross: bool, *, rngs: nnx.Rngs):
        self.layer = nnx.List([Layer(config, cross, rngs=rngs) for _ in range(config.num_hidden_layers)])


class Pooler(nnx.Module):
    """Kept so that checkpoints round-trip; the composite never runs it (it reads `last_hidden_state`)."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.dense = Linear(config.hidden_size, config.hidden_size, rngs=rngs, std=config.initializer_range)


class BertBody(nnx.Module):
    """`BertModel` / `RobertaModel`: embeddings, the layer stack and (encoders only) the pooler."""

    def __init__(self, config: Any, roberta: bool, *, rngs: nnx.Rngs, cross: bool = False, pooler: bool = True):
        _check_absolute(config)
        self.embeddings = Embeddings(config, roberta, rngs=rngs)
        self.encoder = Stack(config, cross, rngs=rngs)
        self.pooler = Pooler(config, rngs=rngs) if pooler else None

    def encode(self, input_ids, attention_mask, rngs, dtype):
        """The encoder's `last_hidden_state` `[B, S, D]`."""
        return self(input_ids, padding_bias(attention_mask), rngs, dtype)[0]

    def __call__(self, ids, bias, rngs, dtype, position_ids=None, source=None, source_bias=None, cache=None, index=0):
        x = self.embeddings(ids, position_ids, index, rngs, dtype)  # [B, T, D]
        layers = [] if cache is None else cache["layers"]
        new_layers = []
        for i, layer in enumerate(self.encoder.layer):
            x, layer_cache = layer(x, bias, rngs, dtype, source, source_bias, layers[i] if layers else None, index)
            new_layers.append(layer_cache)
        return x, new_layers


class BertPredictionHead(nnx.Module):
    """BERT's `cls.predictions`: `transform` (dense, activation, LayerNorm), then the vocabulary projection."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.transform = _Transform(config, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        tied = config.tie_word_embeddings
        self.decoder = None if tied else Linear(config.hidden_size, config.vocab_size, rngs=rngs, bias=False)

    def __call__(self, x, embeddings: Embedding, dtype):
        x = self.transform(x, dtype)
        logits = embeddings.attend(x, dtype) if self.decoder is None else self.decoder(x, dtype)
        return logits + self.bias[...].astype(dtype)


class _Transform(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.dense = Linear(config.hidden_size, config.hidden_size, rngs=rngs, std=config.initializer_range)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.act = activation(config.hidden_act)

    def __call__(self, x, dtype):
        return self.LayerNorm(self.act(self.dense(x, dtype)), dtype)


class _Cls(nnx.Module):
    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.predictions = BertPredictionHead(config, rngs=rngs)

    def __call__(self, x, embeddings, dtype):
        return self.predictions(x, embeddings, dtype)


class RobertaLMHead(nnx.Module):
    """RoBERTa's `lm_head`: dense, GELU, `layer_norm`, then the vocabulary projection (same math as BERT's head)."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.dense = Linear(config.hidden_size, config.hidden_size, rngs=rngs, std=config.initializer_range)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))
        tied = config.tie_word_embeddings
        self.decoder = None if tied else Linear(config.hidden_size, config.vocab_size, rngs=rngs, bias=False)

    def __call__(self, x, embeddings: Embedding, dtype):
        x = self.layer_norm(activation("gelu")(self.dense(x, dtype)), dtype)
        logits = embeddings.attend(x, dtype) if self.decoder is None else self.decoder(x, dtype)
        return logits + self.bias[...].astype(dtype)


def encoder(config: Any, *, rngs: nnx.Rngs) -> BertBody:
    """`BertModel` / `RobertaModel` (with its pooler): the parameters sit directly under the composite's `encoder.`."""
    return BertBody(config, config.model_type == "roberta", rngs=rngs)


class BertDecoder(nnx.Module):
    """`BertLMHeadModel` / `RobertaForCausalLM` with cross-attention: the body under `bert.` / `roberta.`."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        self.roberta_layout = config.model_type == "roberta"
        body = BertBody(config, self.roberta_layout, rngs=rngs, cross=True, pooler=False)
        if self.roberta_layout:
            self.roberta, self.lm_head = body, RobertaLMHead(config, rngs=rngs)
        else:
            self.bert, self.cls = body, _Cls(config, rngs=rngs)

    def decode(self, ids, mask, source, source_bias, rngs, dtype, position_ids=None, cache=None):
        body, head = (self.roberta, self.lm_head) if self.roberta_layout else (self.bert, self.cls)
        index, bias = decoder_bias(ids, mask, cache)
        x, layers = body(ids, bias, rngs, dtype, position_ids, source, source_bias, cache, index)
        new_cache = None if cache is None else {"index": index + ids.shape[1], "layers": layers}
        return head(x, body.embeddings.word_embeddings, dtype), new_cache

    def cross_kv(self, source, dtype) -> list[dict[str, jax.Array]]:
        """Per layer, the cross-attention keys and values of the encoder states (computed once per generation)."""
        body = self.roberta if self.roberta_layout else self.bert
        return [layer.crossattention.self.project_kv(source, dtype) for layer in body.encoder.layer]
