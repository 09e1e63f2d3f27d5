"""Composite configuration: an encoder sub-config, a decoder sub-config and the fields that join them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

from .conditioning import resolve_conditioning, strategy

logger = logging.get_logger(__name__)

# Generation settings that transformers v4-era code (and SmallCap) writes onto `model.config`; transformers v5 refuses
# them there. splice keeps them aside and the model mirrors them into its `generation_config`.
_GENERATION_KEYS = frozenset(GenerationConfig._get_default_generation_params()) - {"use_cache"}


@strict
class SpliceConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SpliceModel`]: any encoder joined to any causal-LM decoder.

    Args:
        encoder (`PreTrainedConfig` or `dict`):
            Configuration of the encoder (anything `AutoModel` builds whose output has `last_hidden_state`).
        decoder (`PreTrainedConfig` or `dict`):
            Configuration of the decoder (anything `AutoModelForCausalLM` builds).
        conditioning (`str`, *optional*, defaults to `"auto"`):
            How the decoder sees the encoder: `"native"` uses the decoder's own cross-attention layers
            (`add_cross_attention=True`, as GPT-2, BERT, RoBERTa, TrOCR, BART, Electra have); `"injected"` wraps the
            decoder's layers with splice's gated cross-attention (any decoder-only LM: Llama, Qwen, Mistral, ...);
            `"auto"` picks native where the decoder family has it, else injected, and records the choice.
        cross_attention_every (`int`, *optional*, defaults to 1):
            Injected: add a cross-attention block after every k-th decoder layer.
        cross_attention_reduce_factor (`int`, *optional*, defaults to 1):
            Injected: query/key/value width divided by r, heads kept (SmallCap's reduced cross-attention).
        cross_attention_feed_forward (`bool`, *optional*, defaults to `False`):
            Injected: add a gated feed-forward after each cross-attention.
        cross_attention_layers_attr (`str`, *optional*):
            Injected: dotted path of the decoder's layer list (e.g. `"model.layers"`) when it cannot be found.
        prefix_projector (`str`, *optional*, defaults to `"mlp"`):
            Prefix: `"linear"` or `"mlp"` from encoder states to the decoder's input-embedding space.
        prefix_length (`int`, *optional*):
            Prefix: reduce the encoder states to this many prefix tokens; `None` keeps one token per state.
        prefix_reducer (`str`, *optional*, defaults to `"pool"`):
            Prefix: `"pool"` (adaptive average pooling) or `"resampler"` (learned queries), with `prefix_length`.
        cross_attention_hidden_size (`int`, *optional*, a field of the decoder config):
            As transformers defines it: the width of the encoder states the decoder's cross-attention reads. Unset,
            encoder states of a width other than the decoder's pass through a projection `enc_to_dec_proj`; set, it
            must equal the encoder's width and no projection is added (TrOCR). One rule for PyTorch and JAX:
            `splice.encoders.enc_to_dec_projection`.
        decoder_start_token_id, pad_token_id, bos_token_id, eos_token_id (`int`, *optional*):
            Special tokens of the decoder. Left unset, they are inferred (see `splice.token_ids`) and mirrored into
            the model's `generation_config`.
        tie_encoder_decoder (`bool`, *optional*, defaults to `False`):
            Share the encoder's weights with the decoder's (same architecture only, e.g. bert2bert).
        ctc_weight (`float`, *optional*, defaults to 0.0):
            Joint CTC–attention training (see `splice.models.ctc`): with a weight `w > 0`, a linear CTC head on the
            encoder's token states adds its loss, `loss = (1 - w) * attention + w * CTC`, for character-level targets
            with encoder tokens ordered along the sequence. Generation is unchanged; 0 builds no head.
        ctc_blank_token_id (`int`, *optional*):
            The CTC blank's id in the decoder vocabulary; defaults to `pad_token_id`.
    """

    model_type: ClassVar[str] = "splice"
    sub_configs_defaults: ClassVar[dict] = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
        "decoder": SubConfigSpec(
            config_class=AutoConfig, model_type="gpt2", init_kwargs={"is_decoder": True, "add_cross_attention": True}
        ),
    }

    encoder: PreTrainedConfig | dict | None = None
    decoder: PreTrainedConfig | dict | None = None
    is_encoder_decoder: bool = True
    conditioning: str = "auto"
    cross_attention_every: int = 1
    cross_attention_reduce_factor: int = 1
    cross_attention_feed_forward: bool = False
    cross_attention_layers_attr: str | None = None
    prefix_projector: str = "mlp"
    prefix_length: int | None = None
    prefix_reducer: str = "pool"
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_encoder_decoder: bool = False
    tie_word_embeddings: bool = False
    ctc_weight: float = 0.0
    ctc_blank_token_id: int | None = None

    # `model_type`s whose cross-attention "auto" uses; `None`: every decoder that has some (SmallCap: GPT-2 only).
    native_families: ClassVar[Collection[str] | None] = None

    @classmethod
    def resolve_auto(cls, conditioning: str, decoder: Any) -> str:
        """This composite's `conditioning`, "auto" resolved for `decoder` (an instance or a config)."""
        return resolve_conditioning(conditioning, decoder, cls.native_families)

    def __post_init__(self, **kwargs: Any) -> None:
        # Generation settings assigned on this config (transformers v4-era code), kept aside for the model to mirror
        # into its generation config, and which of them were assigned since the model last did. Declared before the
        # base class sets the remaining keyword arguments, which may be such settings.
        self._generation_overrides: dict[str, Any] = {}
        self._generation_assigned: set[str] = set()
        super().__post_init__(**kwargs)
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight={self.ctc_weight!r} must be within [0, 1] (0: no CTC head).")
        # Resolved once and saved, so loading a checkpoint never depends on guessing again.
        self.conditioning = self.resolve_auto(self.conditioning, self.decoder)
        strategy(self.conditioning).prepare_decoder_config(self.decoder)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _GENERATION_KEYS and key not in self.__dataclass_fields__:
            if not self._generation_overrides:
                logger.info(
                    f"`config.{key}` is a generation setting: splice mirrors it into `model.generation_config` "
                    "(transformers v5 no longer reads generation settings from `model.config`)."
                )
            self._generation_overrides[key] = value
            self._generation_assigned.add(key)
            return
        super().__setattr__(key, value)

    def __getattr__(self, key: str) -> Any:
        # Only reached when normal lookup fails: serve generation settings kept aside by `__setattr__`. (Read through
        # `__dict__`: while copying, the declared attributes do not exist yet and must not recurse into here.)
        pending = self.__dict__.get("_generation_overrides", {})
        if key in pending:
            return pending[key]
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def new_generation_overrides(self) -> dict[str, Any]:
        """The generation settings assigned on this config since the last call (the model mirrors them).

        They stay readable on the config; only new assignments are reported, so a later edit of `generation_config`
        itself is not overwritten by an old config value, and re-assigning a value mirrors it again.
        """
        assigned, self._generation_assigned = self._generation_assigned, set()
        return {key: self._generation_overrides[key] for key in assigned}

    def _get_generation_parameters(self) -> dict[str, Any]:
        # The generation settings set here are mirrored by the model, so transformers must not refuse them.
        return {}

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_generation_overrides", None)
        output.pop("_generation_assigned", None)
        return output

    @property
    def vocab_size(self) -> int:
        """The decoder's vocabulary size (transformers v4-era code reads and assigns `model.config.vocab_size`)."""
        return self.decoder.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        if value != self.decoder.vocab_size:
            raise ValueError(
                f"config.vocab_size={value} differs from the decoder's vocab_size={self.decoder.vocab_size}. "
                "Change the vocabulary with `model.resize_token_embeddings(new_size)`."
            )

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        if encoder and not decoder:
            return self.encoder.get_text_config(encoder=True) if hasattr(self.encoder, "get_text_config") else self
        return self.decoder

    @classmethod
    def from_encoder_decoder_configs(
        cls, encoder_config: PreTrainedConfig, decoder_config: PreTrainedConfig, **kwargs: Any
    ) -> SpliceConfig:
        r"""
        Build the composite configuration from an encoder configuration and a decoder configuration.

        The conditioning mode prepares the decoder config (`"native"` switches it to a decoder with cross-attention,
        `is_decoder=True` and `add_cross_attention=True`, as transformers' composites do).

        Args:
            encoder_config (`PreTrainedConfig`): the encoder's configuration.
            decoder_config (`PreTrainedConfig`): the decoder's configuration.
            kwargs: composite fields (`conditioning`, special-token ids, ...).
        """
        mode = strategy(cls.resolve_auto(kwargs.get("conditioning", "auto"), decoder_config))
        mode.prepare_decoder_config(decoder_config)
        return cls(encoder=encoder_config.to_dict(), decoder=decoder_config.to_dict(), **kwargs)


@strict
class VisionEncoderDecoderConfig(SpliceConfig):
    r"""
    Configuration of [`VisionEncoderDecoderModel`]: the transformers API and checkpoint format (`model_type`
    `"vision-encoder-decoder"`), with splice's special-token handling and conditioning modes.

    Example:

    ```python
    >>> from transformers import BertConfig, ViTConfig
    >>> from splice import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    >>> config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), BertConfig())
    >>> model = VisionEncoderDecoderModel(config=config)
    ```
    """

    model_type: ClassVar[str] = "vision-encoder-decoder"
    sub_configs_defaults: ClassVar[dict] = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
        "decoder": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs={"is_decoder": True, "add_cross_attention": True}
        ),
    }


@strict
class EncoderDecoderConfig(SpliceConfig):
    r"""
    Configuration of [`EncoderDecoderModel`] (text encoder, `model_type` `"encoder-decoder"`), e.g. bert2bert.
    """

    model_type: ClassVar[str] = "encoder-decoder"
    sub_configs_defaults: ClassVar[dict] = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "decoder": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs={"is_decoder": True, "add_cross_attention": True}
        ),
    }


@strict
class SpeechEncoderDecoderConfig(SpliceConfig):
    r"""
    Configuration of [`SpeechEncoderDecoderModel`] (speech encoder, `model_type` `"speech-encoder-decoder"`).
    """

    model_type: ClassVar[str] = "speech-encoder-decoder"
    sub_configs_defaults: ClassVar[dict] = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="wav2vec2"),
        "decoder": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs={"is_decoder": True, "add_cross_attention": True}
        ),
    }
