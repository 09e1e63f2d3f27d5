"""The composite in Flax NNX: encoder → (`enc_to_dec_proj` when the widths differ) → decoder's cross-attention.

Only the "native" conditioning (the decoder's own cross-attention, as transformers' composites use) is implemented.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..encoders import enc_to_dec_projection, encoder_hidden_size
from .families import family
from .nn import Linear, padding_bias


class CompositeModule(nnx.Module):
    """`encoder` + optional `enc_to_dec_proj` + `decoder`, the parameter tree of a transformers composite checkpoint."""

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        if config.conditioning != "native":
            raise ValueError(
                f"conditioning={config.conditioning!r}: splice's JAX and TensorFlow classes implement 'native' "
                "(the decoder's own cross-attention); use the PyTorch classes for 'injected' and 'prefix'."
            )
        if config.tie_encoder_decoder:
            raise ValueError("tie_encoder_decoder=True has no JAX implementation in splice; use the PyTorch classes.")
        # transformers' rule, shared with PyTorch: `cross_attention_hidden_size` set means "no projection, the
        # cross-attention reads the encoder's width" (and must equal it); unset, widths differing add `enc_to_dec_proj`.
        projection = enc_to_dec_projection(config.encoder, config.decoder)
        enc_width, dec_width = encoder_hidden_size(config.encoder), config.decoder.hidden_size
        if projection is None and enc_width != dec_width:
            raise ValueError(
                f"cross_attention_hidden_size={enc_width}: the decoder's cross-attention reads the encoder's "
                f"{enc_width}-wide states directly, but the JAX {config.decoder.model_type} decoder (as its PyTorch "
                f"class) reads states of its own width {dec_width}. Remove `cross_attention_hidden_size` from the "
                "decoder config (an `enc_to_dec_proj` then maps the widths), or use the PyTorch classes for decoders "
                "whose cross-attention reads another width (TrOCR, BART)."
            )
        self.encoder = family("encoder", config.encoder)(config.encoder, rngs=rngs)
        self.enc_to_dec_proj = Linear(*projection, rngs=rngs) if projection is not None else None
        self.decoder = family("decoder", config.decoder)(config.decoder, rngs=rngs)

    def encode(self, inputs: jax.Array, attention_mask: jax.Array | None, rngs: nnx.Rngs | None, dtype) -> jax.Array:
        """The encoder's `last_hidden_state` `[B, S, E]` (before `enc_to_dec_proj`)."""
        return self.encoder.encode(inputs, attention_mask, rngs, dtype)

    def decoder_source(self, states: jax.Array, dtype) -> jax.Array:
        """What the decoder's cross-attention reads: the states in the decoder's width `[B, S, D]`."""
        return states if self.enc_to_dec_proj is None else self.enc_to_dec_proj(states, dtype)

    def decode(
        self, decoder_input_ids: jax.Array, states: jax.Array, attention_mask: jax.Array | None,
        decoder_attention_mask: jax.Array | None, rngs: nnx.Rngs | None, dtype, *,
        decoder_position_ids: jax.Array | None = None, cache: dict | None = None,
    ) -> tuple[jax.Array, dict | None]:  # fmt: skip
        """Logits `[B, T, V]` (float32) of the decoder tokens, and the updated cache when one is given."""
        logits, cache = self.decoder.decode(
            decoder_input_ids, decoder_attention_mask, self.decoder_source(states, dtype), padding_bias(attention_mask),
            rngs, dtype, decoder_position_ids, cache,
        )  # fmt: skip
        return logits.astype(jnp.float32), cache

    def init_cache(self, states: jax.Array, max_length: int, dtype) -> dict:
        """A fixed-size cache for `max_length` decoder tokens: empty self-attention keys/values `[B, H, L, D/H]` and
        the cross-attention keys/values of `states`, computed once."""
        layers = []
        for kv in self.decoder.cross_kv(self.decoder_source(states, dtype), dtype):
            b, h, _, dh = kv["k"].shape
            empty = jnp.zeros((b, h, max_length, dh), dtype)
            layers.append({"k": empty, "v": empty, "ck": kv["k"], "cv": kv["v"]})
        return {"index": jnp.array(0, jnp.int32), "layers": layers}
