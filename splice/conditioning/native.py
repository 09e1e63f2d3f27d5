"""Native conditioning: the decoder's own cross-attention (GPT-2, BERT, RoBERTa, Electra, TrOCR, BART)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache

from .._compat import cache_kwargs
from ..encoders import enc_to_dec_projection
from .base import Conditioning, enable_cross_attention, has_native_cross_attention, is_cross_attention_name

# transformers' name for the projection from the encoder's width to the decoder's (a checkpoint key).
PROJECTION = "enc_to_dec_proj"


class Native(Conditioning):
    name = "native"

    def prepare_decoder_config(self, decoder_config: PreTrainedConfig) -> None:
        enable_cross_attention(decoder_config)

    def build(self, model: nn.Module) -> dict[str, nn.Module]:
        if not has_native_cross_attention(model.decoder):
            raise ValueError(
                f"The decoder {type(model.decoder).__name__} has no cross-attention layers, so "
                "conditioning='native' cannot feed it the encoder states. Use conditioning='injected' (splice adds "
                "gated cross-attention to any decoder) or 'prefix', or 'auto' to choose. Decoders with native "
                "cross-attention: GPT-2, BERT, RoBERTa, Electra, TrOCR, BART (`BartForCausalLM`), built with "
                "`add_cross_attention=True` (`from_encoder_decoder_configs` sets it)."
            )
        projection = enc_to_dec_projection(model.config.encoder, model.config.decoder)
        return {} if projection is None else {PROJECTION: nn.Linear(*projection)}

    def adapt(self, model: nn.Module, states: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        projection = getattr(model, PROJECTION, None)
        return (states if projection is None else projection(states)), mask  # [B, S, D]

    def decode(self, model: nn.Module, states: Tensor, mask: Tensor | None, cache: Cache | None, **kwargs: Any) -> Any:
        # The decoder keeps the cross-attention keys/values in `generate`'s `EncoderDecoderCache` itself.
        return model.decoder(
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            **cache_kwargs(cache),
            **kwargs,
        )

    def parameter_names(self, model: nn.Module) -> set[str]:
        return {f"decoder.{name}" for name, _ in model.decoder.named_parameters() if is_cross_attention_name(name)}
