"""Native conditioning: the decoder's own cross-attention (GPT-2, BERT, RoBERTa, Electra, TrOCR, BART)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers.cache_utils import Cache

from .._compat import cache_kwargs
from ..encoders import encoder_hidden_size
from .base import CROSS_ATTENTION_NAMES, Conditioning, has_native_cross_attention


def _is_norm(name: str) -> bool:
    return any(fragment in name.lower() for fragment in ("ln_", "layernorm", "layer_norm", "norm."))


class Native(Conditioning):
    name = "native"

    def build(self, model: nn.Module) -> None:
        config = model.config
        if not has_native_cross_attention(model.decoder):
            raise ValueError(
                f"The decoder {type(model.decoder).__name__} has no cross-attention layers, so "
                "conditioning='native' cannot feed it the encoder states. Use conditioning='injected' (splice adds "
                "gated cross-attention to any decoder) or 'prefix', or 'auto' to choose. Decoders with native "
                "cross-attention: GPT-2, BERT, RoBERTa, Electra, TrOCR, BART (`BartForCausalLM`), built with "
                "`add_cross_attention=True` (`from_encoder_decoder_configs` sets it)."
            )
        enc_width = encoder_hidden_size(config.encoder)
        dec_width = config.decoder.hidden_size
        cross_width = getattr(config.decoder, "cross_attention_hidden_size", None)
        if cross_width is not None and cross_width != enc_width:
            raise ValueError(
                f"The decoder config sets cross_attention_hidden_size={cross_width}, but the encoder's hidden size is "
                f"{enc_width}. Remove `cross_attention_hidden_size` from the decoder config (splice then adds a "
                "projection `enc_to_dec_proj`) or set it to the encoder's hidden size."
            )
        if cross_width is None and enc_width != dec_width:
            model.enc_to_dec_proj = nn.Linear(enc_width, dec_width)

    def decode(self, model: nn.Module, states: Tensor, mask: Tensor | None, cache: Cache | None, **kwargs: Any) -> Any:
        # The decoder keeps the cross-attention keys/values in `generate`'s `EncoderDecoderCache` itself.
        return model.decoder(
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            **cache_kwargs(cache),
            **kwargs,
        )

    def parameter_names(self, model: nn.Module) -> set[str]:
        # SmallCap keeps GPT-2's cross-attention layer norms frozen (`train_cross_attention_norm=False`).
        with_norms = getattr(model.config, "train_cross_attention_norm", True)
        return {
            f"decoder.{name}"
            for name, _ in model.decoder.named_parameters()
            if any(fragment in part for part in name.split(".") for fragment in CROSS_ATTENTION_NAMES)
            and (with_norms or not _is_norm(name))
        }
