"""Assembly from pretrained parts: `from_encoder_decoder_pretrained`, with transformers' `encoder_` / `decoder_`
kwargs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.utils import logging

from ..conditioning import strategy
from ..encoders import encoder_tower

logger = logging.get_logger(__name__)


def load_part(
    role: str, path: str | None, kwargs: dict[str, Any], auto_class: Any, adjust: Callable[[Any], None], *model_args
) -> Any:
    """The `role` ("encoder"/"decoder") instance: the `model=` one given, else loaded from `path` with its config
    passed through `adjust` first. A path that cannot be loaded is an `OSError` naming it and the likely cause."""
    model = kwargs.pop("model", None)
    if model is not None:
        return model
    if path is None:
        raise ValueError(f"Pass `{role}_pretrained_model_name_or_path` or a `{role}_model` instance.")
    if Path(str(path)).is_dir() and not (Path(str(path)) / "config.json").is_file():
        raise OSError(f"Cannot load the {role} {str(path)!r}: the directory exists but has no config.json.")
    try:
        if "config" not in kwargs:
            config, kwargs = AutoConfig.from_pretrained(path, **kwargs, return_unused_kwargs=True)
            kwargs["config"] = config
        adjust(kwargs["config"])
        mapping = getattr(auto_class, "_model_mapping", None)
        if mapping is not None and type(kwargs["config"]) not in mapping:  # e.g. an encoder given as the decoder
            kind = "language-model decoder (a causal LM)" if role == "decoder" else "encoder"
            raise ValueError(
                f"The {role} {str(path)!r} is a {kwargs['config'].model_type!r} model, which has no "
                f"{auto_class.__name__} class: it cannot be the {kind}. Check the order of the two arguments, or pass "
                f"a {kind} checkpoint."
            )
        return auto_class.from_pretrained(path, *model_args, **kwargs)
    except OSError as error:
        where = (
            "the directory holds no loadable weights"
            if Path(str(path)).is_dir()
            else "not found locally and the hub is unreachable (HF_HUB_OFFLINE=1?) or has no such model"
        )
        raise OSError(f"Cannot load the {role} {str(path)!r}: {where}.") from error


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

        def encoder_config(config: Any) -> None:
            if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
                logger.info("Loading a decoder checkpoint as the encoder: causal mask and cross-attention off.")
                config.is_decoder = False
                config.add_cross_attention = False

        def decoder_config(config: Any) -> None:
            strategy(cls.config_class.resolve_auto(conditioning, config)).prepare_decoder_config(config)

        encoder = load_part("encoder", encoder_pretrained_model_name_or_path, kwargs_encoder, AutoModel, encoder_config,
                            *model_args)  # fmt: skip
        decoder = load_part("decoder", decoder_pretrained_model_name_or_path, kwargs_decoder, AutoModelForCausalLM,
                            decoder_config)  # fmt: skip

        # The decoder as built decides "auto": its own cross-attention if it has some (as in `__init__`).
        kwargs["conditioning"] = cls.config_class.resolve_auto(kwargs.get("conditioning", "auto"), decoder)
        config = cls.config_class.from_encoder_decoder_configs(encoder_tower(encoder).config, decoder.config, **kwargs)
        model = cls(config=config, encoder=encoder, decoder=decoder)
        if tokenizer is not None:
            model.configure_special_tokens(tokenizer)
        return model
