"""Assembly from pretrained parts: `from_encoder_decoder_pretrained`, with the seeds' `encoder_` / `decoder_` kwargs."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.utils import logging

from ..conditioning import enable_cross_attention
from ..encoders import encoder_tower

logger = logging.get_logger(__name__)


class FromPartsMixin:
    """`from_encoder_decoder_pretrained` for `SpliceModel` and its subclasses (which set `config_class`)."""

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str | None = None,
        decoder_pretrained_model_name_or_path: str | None = None,
        *model_args,
        **kwargs,
    ) -> Any:
        r"""
        Build the model from a pretrained encoder and a pretrained decoder (hub ids or local directories).

        Args:
            encoder_pretrained_model_name_or_path (`str`, *optional*): the encoder checkpoint.
            decoder_pretrained_model_name_or_path (`str`, *optional*): the decoder checkpoint.
            model_args: passed to the encoder's `from_pretrained`.
            kwargs: `encoder_*` go to the encoder (`encoder_model=` an instance), `decoder_*` to the decoder
                (`decoder_model=` an instance), `tokenizer=` fills special tokens the configs leave unset
                (see `configure_special_tokens`), the rest to the composite config (e.g. `decoder_start_token_id`).
        """
        kwargs_encoder = {k[len("encoder_") :]: kwargs.pop(k) for k in list(kwargs) if k.startswith("encoder_")}
        kwargs_decoder = {k[len("decoder_") :]: kwargs.pop(k) for k in list(kwargs) if k.startswith("decoder_")}
        # The composite field `decoder_start_token_id` is not a `decoder_` kwarg.
        if "start_token_id" in kwargs_decoder:
            kwargs["decoder_start_token_id"] = kwargs_decoder.pop("start_token_id")
        conditioning = kwargs.get("conditioning", "auto")
        tokenizer = kwargs.pop("tokenizer", None)

        encoder = kwargs_encoder.pop("model", None)
        if encoder is None:
            if encoder_pretrained_model_name_or_path is None:
                raise ValueError("Pass `encoder_pretrained_model_name_or_path` or an `encoder_model` instance.")
            if "config" not in kwargs_encoder:
                encoder_config, kwargs_encoder = AutoConfig.from_pretrained(
                    encoder_pretrained_model_name_or_path, **kwargs_encoder, return_unused_kwargs=True
                )
                if getattr(encoder_config, "is_decoder", False) or getattr(encoder_config, "add_cross_attention", 0):
                    logger.info("Loading a decoder checkpoint as the encoder: causal mask and cross-attention off.")
                    encoder_config.is_decoder = False
                    encoder_config.add_cross_attention = False
                kwargs_encoder["config"] = encoder_config
            encoder = AutoModel.from_pretrained(encoder_pretrained_model_name_or_path, *model_args, **kwargs_encoder)

        decoder = kwargs_decoder.pop("model", None)
        if decoder is None:
            if decoder_pretrained_model_name_or_path is None:
                raise ValueError("Pass `decoder_pretrained_model_name_or_path` or a `decoder_model` instance.")
            if "config" not in kwargs_decoder:
                decoder_config, kwargs_decoder = AutoConfig.from_pretrained(
                    decoder_pretrained_model_name_or_path, **kwargs_decoder, return_unused_kwargs=True
                )
                kwargs_decoder["config"] = decoder_config
            if cls.config_class.resolve_auto(conditioning, kwargs_decoder["config"]) == "native":
                logger.info("Adding cross-attention layers to the decoder; they start from random weights.")
                enable_cross_attention(kwargs_decoder["config"])
            decoder = AutoModelForCausalLM.from_pretrained(decoder_pretrained_model_name_or_path, **kwargs_decoder)

        # The decoder as built decides "auto": its own cross-attention if it has some (as in `__init__`).
        kwargs["conditioning"] = cls.config_class.resolve_auto(kwargs.get("conditioning", "auto"), decoder)
        config = cls.config_class.from_encoder_decoder_configs(encoder_tower(encoder).config, decoder.config, **kwargs)
        model = cls(config=config, encoder=encoder, decoder=decoder)
        if tokenizer is not None:
            model.configure_special_tokens(tokenizer)
        return model
