"""`SpliceModel`: an encoder joined to a causal-LM decoder, trained and generated like any transformers seq2seq model.

The seed API classes (`VisionEncoderDecoderModel`, `EncoderDecoderModel`, `SpeechEncoderDecoderModel`) are thin
subclasses that fix the main input and the checkpoint `model_type`, so their checkpoints load in transformers' classes
and the other way round.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils import logging

from ._compat import COMPATIBILITY_HINT, TRANSFORMERS_VERSION, cache_kwargs, output_cache, pop_cache
from .configuration import (
    EncoderDecoderConfig,
    SpeechEncoderDecoderConfig,
    SpliceConfig,
    VisionEncoderDecoderConfig,
    uses_native_cross_attention,
)
from .encoders import as_token_states, encoder_hidden_size, encoder_tower
from .injection import GatedCrossAttention, inject_cross_attention
from .onednn import onednn_lm_head
from .prefix import PrefixProjector
from .processing import SpliceProcessor, decode_predictions
from .special_tokens import SPECIAL_TOKENS, resolve_special_tokens, validate_token_ids

logger = logging.get_logger(__name__)

# Names under which encoders take their main input, in the order `SpliceModel.forward` accepts them.
_ENCODER_INPUTS = ("pixel_values", "input_ids", "input_values", "input_features")


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None):
    """Decoder inputs from labels: prepend `decoder_start_token_id`, drop the last label, turn -100 into padding."""
    if decoder_start_token_id is None:
        raise ValueError(
            "decoder_start_token_id is not set, so labels cannot be shifted into decoder inputs. Set "
            "`model.config.decoder_start_token_id` (often the tokenizer's bos or cls token id)."
        )
    if pad_token_id is None:
        raise ValueError(
            "pad_token_id is not set, so -100 in labels cannot be replaced. Set `model.config.pad_token_id`."
        )
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


def _self_attention_cache(cache: Cache | None) -> Cache | None:
    """The decoder's own cache: `generate` wraps it in an `EncoderDecoderCache`, which decoder-only LMs do not take."""
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


# How the decoder families with native cross-attention name those modules (GPT-2, BERT: crossattention; BART, TrOCR:
# encoder_attn).
CROSS_ATTENTION_NAMES = ("crossattention", "cross_attn", "encoder_attn")


def _has_cross_attention(decoder: nn.Module) -> bool:
    accepts = "encoder_hidden_states" in inspect.signature(decoder.forward).parameters
    return accepts and any(any(n in name for n in CROSS_ATTENTION_NAMES) for name, _ in decoder.named_modules())


class SpliceModel(PreTrainedModel, GenerationMixin):
    r"""
    An encoder (any `AutoModel` whose output has `last_hidden_state`) joined to a causal-LM decoder.

    Args:
        config (`SpliceConfig`, *optional*): the composite configuration; built from the parts when omitted.
        encoder (`PreTrainedModel`, *optional*): an encoder instance (a dual-tower model contributes its vision tower).
        decoder (`PreTrainedModel`, *optional*): a causal-LM decoder instance.
    """

    config_class = SpliceConfig
    base_model_prefix = "splice"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_param_buffer_assignment = False

    def __init__(
        self,
        config: SpliceConfig | None = None,
        encoder: PreTrainedModel | None = None,
        decoder: PreTrainedModel | None = None,
    ):
        if config is None and (encoder is None or decoder is None):
            raise ValueError("Either a configuration or an encoder and a decoder has to be provided.")
        if encoder is not None:
            encoder = encoder_tower(encoder)
        if config is None:
            # Given instances, "auto" is decided by the decoder as built: its own cross-attention if it has some.
            conditioning = "native" if _has_cross_attention(decoder) else "injected"
            config = self.config_class.from_encoder_decoder_configs(
                encoder.config, decoder.config, conditioning=conditioning
            )
        elif not isinstance(config, self.config_class):
            raise ValueError(f"Config: {type(config).__name__} has to be of type {self.config_class.__name__}")
        super().__init__(config)

        if encoder is None:
            encoder = encoder_tower(AutoModel.from_config(config.encoder))
        if encoder.get_output_embeddings() is not None:
            raise ValueError(
                f"The encoder {type(encoder).__name__} has a language-model head; an encoder must not. Load it with "
                "`AutoModel` (the base model), not a `...ForMaskedLM` / `...ForCausalLM` class."
            )
        if decoder is None:
            decoder = AutoModelForCausalLM.from_config(config.decoder)
        self.encoder = encoder
        self.decoder = decoder
        # One config object per part, shared with the composite, so edits to either stay in sync.
        self.config.encoder = encoder.config
        self.config.decoder = decoder.config
        # Injected blocks cache keys/values in Python state, which full-graph compilation cannot trace.
        self._can_compile_fullgraph = getattr(decoder, "_can_compile_fullgraph", False) and (
            config.conditioning != "injected"
        )
        if type(self) is SpliceModel:
            self.main_input_name = encoder.main_input_name

        self._build_conditioning()
        # Modules splice adds live where the decoder lives (a pretrained decoder may be bf16, or on a GPU).
        reference = next(decoder.parameters())
        for name in ("enc_to_dec_proj", "prefix_projector"):
            if hasattr(self, name):
                getattr(self, name).to(device=reference.device, dtype=reference.dtype)
        self._decoder_takes_position_ids = "position_ids" in inspect.signature(decoder.forward).parameters
        self._encoder_takes_mask = "attention_mask" in inspect.signature(encoder.forward).parameters
        if config.tie_encoder_decoder:
            # Declared as tied weights, so transformers ties them, saves each once and re-ties them on load.
            self._tied_weights_keys = self._encoder_decoder_tied_keys()
        self.post_init()
        self._synced_tokens: dict[str, Any] = {}
        self._sync_generation_config()

    # -- construction ---------------------------------------------------------------------------------------------

    def _build_conditioning(self) -> None:
        """Attach what lets the decoder read the encoder states, according to `config.conditioning`."""
        config = self.config
        enc_width = encoder_hidden_size(config.encoder)
        if config.conditioning == "injected":
            self._cross_attention_context = inject_cross_attention(
                self.decoder,
                enc_width,
                every=config.cross_attention_every,
                reduce_factor=config.cross_attention_reduce_factor,
                feed_forward=config.cross_attention_feed_forward,
                layers_attr=config.cross_attention_layers_attr,
            )
            return
        if config.conditioning == "prefix":
            self.prefix_projector = PrefixProjector(
                enc_width,
                self.decoder.get_input_embeddings().embedding_dim,
                projector=config.prefix_projector,
                prefix_length=config.prefix_length,
                reducer=config.prefix_reducer,
                num_heads=getattr(config.decoder, "num_attention_heads", 4),
            )
            return
        if not _has_cross_attention(self.decoder):
            raise ValueError(
                f"The decoder {type(self.decoder).__name__} has no cross-attention layers, so "
                "conditioning='native' cannot feed it the encoder states. Use conditioning='injected' (splice adds "
                "gated cross-attention to any decoder) or 'prefix', or 'auto' to choose. Decoders with native "
                "cross-attention: GPT-2, BERT, RoBERTa, Electra, TrOCR, BART (`BartForCausalLM`), built with "
                "`add_cross_attention=True` (`from_encoder_decoder_configs` sets it)."
            )
        dec_width = config.decoder.hidden_size
        cross_width = getattr(config.decoder, "cross_attention_hidden_size", None)
        if cross_width is not None and cross_width != enc_width:
            raise ValueError(
                f"The decoder config sets cross_attention_hidden_size={cross_width}, but the encoder's hidden size is "
                f"{enc_width}. Remove `cross_attention_hidden_size` from the decoder config (splice then adds a "
                "projection `enc_to_dec_proj`) or set it to the encoder's hidden size."
            )
        if cross_width is None and enc_width != dec_width:
            self.enc_to_dec_proj = nn.Linear(enc_width, dec_width)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Each part initialises its modules the way its family does; splice's own modules use the decoder's rule.
        if "_encoder_module_ids" not in self.__dict__:
            self.__dict__["_encoder_module_ids"] = {id(m) for m in self.encoder.modules()}
        owner = self.encoder if id(module) in self.__dict__["_encoder_module_ids"] else self.decoder
        owner._init_weights(module)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        # transformers initialises the decoder's modules with the decoder's own rule, which knows nothing of splice's
        # gates and resampler queries: those missing from a checkpoint are set here (gates at 0: identity).
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, GatedCrossAttention):
                    for gate in (module.attn_gate, getattr(module, "ffn_gate", None)):
                        if gate is not None and not getattr(gate, "_is_hf_initialized", False):
                            gate.zero_()
                elif isinstance(module, PrefixProjector) and module.reducer == "resampler":
                    if not getattr(module.queries, "_is_hf_initialized", False):
                        module.queries.normal_(0, module.queries.shape[-1] ** -0.5)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        tied = super().get_expanded_tied_weights_keys(all_submodels=all_submodels)
        if self.config.tie_encoder_decoder and not all_submodels:
            tied.update(self._tied_weights_keys)  # the base class honours them only with `tie_word_embeddings`
        return tied

    def _encoder_decoder_tied_keys(self) -> dict[str, str]:
        """`{decoder parameter: encoder parameter}` for every weight the two towers have in common (bert2bert)."""
        decoder_base = getattr(self.decoder, self.decoder.base_model_prefix, None)
        if decoder_base is None or type(decoder_base) is not type(self.encoder):
            raise ValueError(
                "tie_encoder_decoder=True needs an encoder and a decoder of the same architecture (e.g. bert2bert), "
                f"got encoder {type(self.encoder).__name__} and decoder base "
                f"{type(decoder_base).__name__ if decoder_base is not None else None}."
            )
        prefix = f"decoder.{self.decoder.base_model_prefix}."
        decoder_params = dict(decoder_base.named_parameters())
        return {
            prefix + name: "encoder." + name
            for name, param in self.encoder.named_parameters()
            if name in decoder_params and decoder_params[name].shape == param.shape
        }

    # -- accessors ------------------------------------------------------------------------------------------------

    def get_encoder(self) -> PreTrainedModel:
        return self.encoder

    def get_decoder(self) -> PreTrainedModel:
        return self.decoder

    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.decoder.set_output_embeddings(new_embeddings)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, **kw):
        """Resize the decoder's vocabulary (input and output embeddings); the composite config follows."""
        embeddings = self.decoder.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, **kw)
        self._sync_generation_config()
        return embeddings

    # -- special tokens and generation settings ---------------------------------------------------------------------

    def _sync_generation_config(self) -> None:
        """Make config and generation config agree on special tokens; mirror generation settings set on the config.

        Whichever side was edited since the last sync wins, so `model.config.pad_token_id = ...` (seed docs) and
        `model.generation_config.pad_token_id = ...` (transformers v5) both work.
        """
        gen = self.generation_config
        if gen is None:
            return
        for key, value in self.config.new_generation_overrides().items():
            setattr(gen, key, value)
        for field, synced in self._synced_tokens.items():
            on_config, on_gen = getattr(self.config, field), getattr(gen, field, None)
            if on_config != synced:
                setattr(gen, field, on_config)
            elif on_gen != synced:
                setattr(self.config, field, on_gen)
        values = resolve_special_tokens(self.config, gen)
        validate_token_ids(values, self.config.decoder.vocab_size, values.pop("_source"))
        for field in SPECIAL_TOKENS:
            setattr(self.config, field, values[field])
            setattr(gen, field, values[field])
        self._synced_tokens = {field: values[field] for field in SPECIAL_TOKENS}

    def configure_special_tokens(self, tokenizer: Any = None, **token_ids: int | list[int] | None) -> dict[str, Any]:
        r"""
        Set the special tokens from explicit ids and, for what is still unset, from a tokenizer.

        Args:
            tokenizer (*optional*): e.g. BERT's tokenizer fills `decoder_start_token_id` with `[CLS]` and
                `eos_token_id` with `[SEP]` when the configs leave them unset.
            token_ids: explicit `decoder_start_token_id`, `pad_token_id`, `eos_token_id`, `bos_token_id`.

        Returns:
            The resolved ids.
        """
        self._sync_generation_config()
        values = resolve_special_tokens(self.config, self.generation_config, tokenizer, **token_ids)
        values.pop("_source")
        for field, value in values.items():
            setattr(self.config, field, value)
        self._sync_generation_config()
        return values

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        self._sync_generation_config()
        passed = {f: kwargs[f] for f in SPECIAL_TOKENS if kwargs.get(f) is not None}
        if generation_config is not None:
            passed = {f: getattr(generation_config, f, None) for f in SPECIAL_TOKENS} | passed
        validate_token_ids(passed, self.config.decoder.vocab_size, dict.fromkeys(passed, "generate() arguments"))
        self.__dict__["_generating"] = True
        try:
            with onednn_lm_head(self.decoder):
                return super().generate(inputs, generation_config=generation_config, **kwargs)
        finally:  # drop this call's encoder states (and injected keys/values): no memory held, nothing stale
            self.__dict__["_generating"] = False
            self.__dict__.pop("_kept_states", None)
            if self.config.conditioning == "injected":
                self._cross_attention_context.clear()

    def _reorder_cache(self, cache: Cache, beam_idx: torch.Tensor) -> Cache:
        """Beam search's per-step cache reorder, minus the cross-attention keys/values.

        Those are projections of the encoder states, which `generate` repeats per beam, so every beam of an input holds
        the same rows, and beam search only ever moves a beam within its own input: reordering them is an identity
        that costs a copy of [batch x beams, heads, source length, head dim] per layer and step (half of transformers'
        beam-4 decoding time at the benchmark's `small` size, in a profile).
        """
        _self_attention_cache(cache).reorder_cache(beam_idx)
        return cache

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict[str, Any]:
        """transformers' step inputs, checked: the cache must hold every token that is not fed again.

        `generate` feeds only the new tokens once the cache holds the earlier ones. A cache that did not advance (it
        reached the model under a name the model does not read, or came back under one `generate` does not read) would
        make every step attend to the last token alone: wrong text, no error. This makes that loud.
        """
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        fed = model_inputs.get("decoder_input_ids")
        cache = pop_cache(dict(model_inputs))
        expected = input_ids.shape[1] - (fed.shape[1] if fed is not None else input_ids.shape[1])
        held = cache.get_seq_length() if cache is not None else 0
        if expected > 0 and self.config.conditioning == "prefix":  # the cache holds the prefix before the text
            states, mask = self._decoder_side_states(kwargs["encoder_outputs"][0], kwargs.get("attention_mask"), True)
            expected += self.prefix_projector.prefix_mask(states, mask).shape[1]
        if expected > 0 and held < expected:
            raise RuntimeError(
                f"Generation is broken with transformers {TRANSFORMERS_VERSION}: this step feeds "
                f"{fed.shape[1]} new token(s) after {expected} earlier ones, but the cache holds {held}, so the model "
                f"would read the new tokens without their context and produce wrong text. {COMPATIBILITY_HINT}"
            )
        return model_inputs

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        self._sync_generation_config()
        super().save_pretrained(save_directory, *args, **kwargs)

    # -- construction from pretrained parts -----------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str | None = None,
        decoder_pretrained_model_name_or_path: str | None = None,
        *model_args,
        **kwargs,
    ) -> SpliceModel:
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
            if uses_native_cross_attention(conditioning, kwargs_decoder["config"]):
                logger.info("Adding cross-attention layers to the decoder; they start from random weights.")
                kwargs_decoder["config"].is_decoder = True
                kwargs_decoder["config"].add_cross_attention = True
            decoder = AutoModelForCausalLM.from_pretrained(decoder_pretrained_model_name_or_path, **kwargs_decoder)

        if kwargs.get("conditioning", "auto") == "auto" and cls.config_class.conditioning == "auto":
            # The decoder as built decides: its own cross-attention if it has some (as in `__init__`).
            kwargs["conditioning"] = "native" if _has_cross_attention(decoder) else "injected"
        config = cls.config_class.from_encoder_decoder_configs(encoder_tower(encoder).config, decoder.config, **kwargs)
        model = cls(config=config, encoder=encoder, decoder=decoder)
        if tokenizer is not None:
            model.configure_special_tokens(tokenizer)
        return model

    # -- forward --------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        r"""
        Encode the input (unless `encoder_outputs` is given), then decode.

        Args:
            pixel_values / input_ids / input_values / input_features: the encoder's input, whichever it takes.
            attention_mask (`torch.Tensor` of shape `[B, S]`, *optional*): the encoder's padding mask; also passed to
                the decoder's cross-attention (downsampled for speech encoders).
            inputs_embeds: the encoder's input embeddings, instead of `input_ids`.
            decoder_input_ids (`torch.LongTensor` of shape `[B, T]`, *optional*): built from `labels` when omitted
                (shifted right, -100 replaced by `pad_token_id`).
            decoder_attention_mask (`torch.Tensor` of shape `[B, T]`, *optional*): when built from labels, positions
                whose label is -100 are masked.
            encoder_outputs (`tuple` or `BaseModelOutput`, *optional*): precomputed encoder outputs.
            past_key_values (`Cache`, *optional*): the decoder's cache.
            decoder_inputs_embeds: the decoder's input embeddings, instead of `decoder_input_ids`.
            labels (`torch.LongTensor` of shape `[B, T]`, *optional*): target ids; -100 is ignored by the loss.
            kwargs: unprefixed keys go to the encoder, `decoder_`-prefixed keys to the decoder.
        """
        encoder_inputs = {
            name: value
            for name, value in zip(_ENCODER_INPUTS, (pixel_values, input_ids, input_values, input_features))
            if value is not None
        }
        if inputs_embeds is not None:
            encoder_inputs["inputs_embeds"] = inputs_embeds
        return self._splice_forward(
            encoder_inputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )

    def _splice_forward(
        self,
        encoder_inputs: dict[str, torch.Tensor],
        attention_mask: torch.Tensor | None,
        decoder_input_ids: torch.LongTensor | None,
        decoder_attention_mask: torch.Tensor | None,
        encoder_outputs: tuple | BaseModelOutput | None,
        past_key_values: Cache | None,
        decoder_inputs_embeds: torch.Tensor | None,
        labels: torch.LongTensor | None,
        use_cache: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        return_dict: bool | None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        kwargs["past_key_values"] = past_key_values
        cache = pop_cache(kwargs)  # `cache` since transformers 5.24, `past_key_values` before; both accepted
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs_decoder = {k[len("decoder_") :]: kwargs.pop(k) for k in list(kwargs) if k.startswith("decoder_")}
        shared = {
            k: v
            for k, v in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states))
            if v is not None
        }
        stray = sorted(k for k, v in {**kwargs, **kwargs_decoder}.items() if isinstance(v, Cache))
        if stray:  # a cache under a name splice does not know would go to the encoder, unused: wrong text, silently
            raise TypeError(
                f"forward() got a cache as {stray}; splice takes it as `cache` or `past_key_values` (installed "
                f"transformers {TRANSFORMERS_VERSION}). {COMPATIBILITY_HINT}"
            )

        if encoder_outputs is None:
            if not encoder_inputs:
                raise ValueError(
                    f"No encoder input: pass `{self.main_input_name}` (or `encoder_outputs` computed beforehand)."
                )
            if attention_mask is not None and self._encoder_takes_mask:
                kwargs["attention_mask"] = attention_mask
            encoder_outputs = self.encoder(**encoder_inputs, **shared, return_dict=True, **kwargs)
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)

        decoding = cache is not None and cache.get_seq_length() > 0
        encoder_hidden_states, encoder_attention_mask = self._decoder_side_states(
            encoder_outputs[0], attention_mask, reuse=decoding
        )

        if labels is not None:
            self._check_ids("labels", labels)
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
                if decoder_attention_mask is None:
                    decoder_attention_mask = self.decoder_attention_mask_from_labels(labels, decoder_input_ids)
        if decoder_input_ids is not None and not decoding:  # decoding steps feed back ids the model produced
            self._check_ids("decoder_input_ids", decoder_input_ids)

        if (
            decoder_attention_mask is not None
            and "position_ids" not in kwargs_decoder
            and self.config.conditioning != "prefix"  # the prefix path counts positions itself
            and bool((decoder_attention_mask[:, 0] == 0).any())
            and self._decoder_takes_position_ids
        ):
            # Left padding (batched prompts): positions count real tokens, so each sample matches its unpadded self.
            positions = (decoder_attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T_total]
            new_tokens = (decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds).shape[1]
            kwargs_decoder["position_ids"] = positions[:, -new_tokens:]
        decode = {"native": self._decode_native, "injected": self._decode_injected, "prefix": self._decode_prefix}
        decoder_outputs = decode[self.config.conditioning](
            encoder_hidden_states,
            encoder_attention_mask,
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **shared,
            **kwargs_decoder,
        )

        loss = None
        if labels is not None:
            logits = decoder_outputs.logits
            reduction = "mean" if num_items_in_batch is None else "sum"
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), reduction=reduction
            )
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch

        if not return_dict:  # the seed classes' tuple: loss, then the decoder's outputs, then the encoder's
            return ((loss,) if loss is not None else ()) + decoder_outputs.to_tuple() + encoder_outputs.to_tuple()
        return Seq2SeqLMOutput(
            loss=loss,
            logits=decoder_outputs.logits,
            # The whole cache `generate` passed (an `EncoderDecoderCache` around the decoder's), so it flows back.
            **cache_kwargs(cache if cache is not None else output_cache(decoder_outputs)),
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=getattr(decoder_outputs, "cross_attentions", None),
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=getattr(encoder_outputs, "hidden_states", None),
            encoder_attentions=getattr(encoder_outputs, "attentions", None),
        )

    def decoder_attention_mask_from_labels(self, labels: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """The decoder mask `[B, T]` when `decoder_input_ids` are built from `labels` and no mask is given.

        Position 0 is the start token; position t reads label t-1 and is padding where that label is -100. (For right
        padding this gives the loss of transformers' `VisionEncoderDecoderModel` / `SpeechEncoderDecoderModel`, which
        build no mask: masked positions are only read by later, ignored ones.)
        """
        mask = torch.ones_like(labels)  # [B, T]
        mask[:, 1:] = (labels[:, :-1] != -100).long()
        return mask

    def adapt_encoder_states(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        The hook between encoder and decoder: subclasses change the architecture here (see docs/custom-models.md).

        Args:
            encoder_hidden_states (`torch.Tensor` of shape `[B, S, E]`): the encoder's token states.
            encoder_attention_mask (`torch.Tensor` of shape `[B, S]`, *optional*): 1 for real states, 0 for padding.

        Returns:
            The states and mask the decoder side reads (default: `enc_to_dec_proj` when the widths differ).
        """
        if hasattr(self, "enc_to_dec_proj"):
            encoder_hidden_states = self.enc_to_dec_proj(encoder_hidden_states)  # [B, S, D]
        return encoder_hidden_states, encoder_attention_mask

    def _decoder_side_states(self, encoder_output: torch.Tensor, attention_mask: torch.Tensor | None, reuse: bool):
        """Token states and mask for the decoder side, computed once per `generate` call.

        `generate` passes the same encoder output at every step. Inside `generate` the first step (empty cache)
        computes the adapted states and keeps them; later steps (`reuse`) take them back, so projections (and the
        injected blocks' keys/values, cached per states tensor) are not recomputed per token. Outside `generate`
        nothing is kept.
        """
        kept = self.__dict__.get("_kept_states")
        if reuse and kept is not None and kept[0] is encoder_output and kept[1] is attention_mask:
            return kept[2], kept[3]
        states = as_token_states(encoder_output)  # [B, S, E]
        states, mask = self.adapt_encoder_states(states, self._encoder_attention_mask(attention_mask, states))
        generating = self.__dict__.get("_generating", False) and not torch.is_grad_enabled()
        self.__dict__["_kept_states"] = (encoder_output, attention_mask, states, mask) if generating else None
        return states, mask

    def _decode_native(self, encoder_hidden_states, encoder_attention_mask, cache=None, **decoder_kwargs):
        return self.decoder(
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **cache_kwargs(cache),
            **decoder_kwargs,
        )

    def _decode_injected(self, encoder_hidden_states, encoder_attention_mask, cache=None, **decoder_kwargs):
        # The injected blocks read the encoder states from the context; their keys/values are projected once per
        # distinct states tensor, i.e. once per `generate` call (the same encoder output is passed at every step).
        self._cross_attention_context.set(encoder_hidden_states, encoder_attention_mask)
        outputs = self.decoder(**cache_kwargs(_self_attention_cache(cache)), **decoder_kwargs)
        if not self.__dict__.get("_generating", False):  # outside generate nothing is reused: hold no states
            self._cross_attention_context.clear()
        return outputs

    def _decode_prefix(
        self,
        encoder_hidden_states,
        encoder_attention_mask,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        cache=None,
        **decoder_kwargs,
    ):
        cache = _self_attention_cache(cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        if inputs_embeds is None:
            inputs_embeds = self.decoder.get_input_embeddings()(input_ids)  # [B, T, D]
        prefix_mask = self.prefix_projector.prefix_mask(encoder_hidden_states, encoder_attention_mask)  # [B, P]
        prefix_length = prefix_mask.shape[1]
        if past_length == 0:  # the prefix enters once; later steps find it in the KV cache
            prefix = self.prefix_projector(encoder_hidden_states, encoder_attention_mask)  # [B, P, D]
            inputs_embeds = torch.cat([prefix.to(inputs_embeds.dtype), inputs_embeds], dim=1)  # [B, P+T, D]
        batch, new_length = inputs_embeds.shape[:2]
        text_length = past_length + new_length - prefix_length
        if attention_mask is None:
            attention_mask = prefix_mask.new_ones(batch, text_length)
        full_mask = torch.cat([prefix_mask, attention_mask[:, -text_length:].to(prefix_mask.dtype)], dim=1)
        # Positions count real tokens only, so a padded prefix or padded text shifts nothing.
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -new_length:]
        decoder_kwargs.pop("position_ids", None)
        outputs = self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            **decoder_kwargs,
        )
        if past_length == 0:
            outputs.logits = outputs.logits[:, prefix_length:]  # logits for the text positions only
        return outputs

    def _encoder_attention_mask(self, attention_mask: torch.Tensor | None, states: torch.Tensor) -> torch.Tensor | None:
        """The encoder padding mask at the resolution of the encoder's output states `[B, S]`."""
        if attention_mask is None or attention_mask.dim() != 2:
            return None
        if attention_mask.shape[1] == states.shape[1]:
            return attention_mask
        if hasattr(self.encoder, "_get_feature_vector_attention_mask"):  # speech: mask over samples -> over frames
            return self.encoder._get_feature_vector_attention_mask(states.shape[1], attention_mask)
        raise ValueError(
            f"attention_mask has length {attention_mask.shape[1]} but the encoder returned {states.shape[1]} states, "
            "and the encoder has no rule to downsample the mask. Pass an attention_mask over the encoder's output."
        )

    def _check_ids(self, name: str, ids: torch.Tensor) -> None:
        vocab_size = self.config.decoder.vocab_size
        valid = ids[ids != -100] if name == "labels" else ids
        if valid.numel() and (valid.min() < 0 or valid.max() >= vocab_size):
            bad = valid[(valid < 0) | (valid >= vocab_size)][0].item()
            raise ValueError(
                f"{name} contains id {bad}, outside the decoder vocabulary [0, {vocab_size})"
                + (" (only -100 may mark ignored positions)" if name == "labels" else "")
                + ". If the tokenizer has more tokens than the decoder, call "
                "`model.resize_token_embeddings(len(tokenizer))`."
            )

    # -- one-call inference -----------------------------------------------------------------------------------------

    @property
    def processor(self):
        """The processor saved with this model: a `SpliceProcessor` (images) or the tokenizer (text encoders).

        Loaded from the model's directory on first use; assign one to set it.
        """
        if self.__dict__.get("_processor") is None:
            path = self.config.name_or_path
            loader = SpliceProcessor if self.main_input_name == "pixel_values" else AutoTokenizer
            try:
                self.__dict__["_processor"] = loader.from_pretrained(path)
            except (OSError, ValueError, TypeError) as error:
                raise ValueError(
                    f"No processor is saved with this model (looked in {path!r}). Pass `processor=` or assign "
                    "`model.processor` (a `SpliceProcessor(image_processor, tokenizer)` or, for text, a tokenizer)."
                ) from error
        return self.__dict__["_processor"]

    @processor.setter
    def processor(self, processor) -> None:
        self.__dict__["_processor"] = processor

    @torch.no_grad()
    def caption(self, images, processor=None, **generate_kwargs) -> list[str]:
        r"""
        Generate text for images in one call.

        Args:
            images: a PIL image or a list of them (anything the image processor accepts).
            processor (`SpliceProcessor`, *optional*): defaults to `model.processor`.
            generate_kwargs: passed to `generate` (e.g. `num_beams`, `max_new_tokens`).
        """
        processor = processor or self.processor
        pixel_values = processor(images=images)["pixel_values"].to(self.device, self.dtype)
        return decode_predictions(processor.tokenizer, self.generate(pixel_values, **generate_kwargs))

    @torch.no_grad()
    def transform(self, texts: str | list[str], tokenizer=None, **generate_kwargs) -> list[str]:
        r"""
        Generate text from source texts in one call (text encoders: summarisation, translation, ...).

        Args:
            texts: a string or a list of strings.
            tokenizer (*optional*): defaults to `model.processor` (the tokenizer saved with the model).
            generate_kwargs: passed to `generate`.
        """
        tokenizer = tokenizer or self.processor
        inputs = tokenizer([texts] if isinstance(texts, str) else texts, padding=True, return_tensors="pt")
        return decode_predictions(tokenizer, self.generate(**inputs.to(self.device), **generate_kwargs))

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for `labels` (used by `DataCollatorForSeq2Seq`)."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


class VisionEncoderDecoderModel(SpliceModel):
    r"""
    Image-to-text: a vision encoder (ViT, DeiT, BEiT, Swin, Donut, ...) joined to a text decoder. Same API and
    checkpoint format as transformers' `VisionEncoderDecoderModel`.

    Example:

    ```python
    >>> from splice import VisionEncoderDecoderModel
    >>> model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained("path/to/vit", "path/to/gpt2")
    >>> generated_ids = model.generate(pixel_values)
    ```
    """

    config_class = VisionEncoderDecoderConfig
    base_model_prefix = "vision_encoder_decoder"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        r"""See [`SpliceModel.forward`]; the encoder input is `pixel_values` `[B, C, H, W]`."""
        return self._splice_forward(
            {} if pixel_values is None else {"pixel_values": pixel_values},
            attention_mask=kwargs.pop("attention_mask", None),
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )


class EncoderDecoderModel(SpliceModel):
    r"""
    Text-to-text: a text encoder (BERT, RoBERTa, ...) joined to a text decoder, e.g. bert2bert. Same API and checkpoint
    format as transformers' `EncoderDecoderModel`; the encoder's `attention_mask` also masks the cross-attention.
    """

    config_class = EncoderDecoderConfig
    base_model_prefix = "encoder_decoder"
    main_input_name = "input_ids"

    def decoder_attention_mask_from_labels(self, labels: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """transformers' `EncoderDecoderModel` rule: every decoder input equal to `pad_token_id` is masked (so labels
        padded with the pad id, not -100, give transformers' loss) — except position 0, the start token.

        When `decoder_start_token_id == pad_token_id` (GPT-2 style, pad = eos = bos) transformers also masks the start
        token. splice keeps it visible: `generate` never masks it, and checkpoints trained with transformers'
        `VisionEncoderDecoderModel` (vit-gpt2, TrOCR, which build no decoder mask) saw it in training; masking it would
        train on a context the model never sees when generating (and leave position 0 attending to nothing).
        """
        mask = (decoder_input_ids != self.config.pad_token_id).long()  # [B, T]
        mask[:, 0] = 1
        return mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        r"""See [`SpliceModel.forward`]; the encoder input is `input_ids` `[B, S]` with its `attention_mask`."""
        encoder_inputs = {
            k: v for k, v in (("input_ids", input_ids), ("inputs_embeds", inputs_embeds)) if v is not None
        }
        return self._splice_forward(
            encoder_inputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )


class SpeechEncoderDecoderModel(SpliceModel):
    r"""
    Speech-to-text: a speech encoder (Wav2Vec2, the Whisper encoder, ...) joined to a text decoder. Same API and
    checkpoint format as transformers' `SpeechEncoderDecoderModel`.
    """

    config_class = SpeechEncoderDecoderConfig
    base_model_prefix = "speech_encoder_decoder"
    main_input_name = "inputs"

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the convolutional feature extractor of the speech encoder."""
        self.encoder.freeze_feature_encoder()

    def forward(
        self,
        inputs: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        r"""See [`SpliceModel.forward`]; the encoder input is `inputs`, `input_values` or `input_features`."""
        given = inputs if inputs is not None else input_values if input_values is not None else input_features
        encoder_inputs = {} if given is None else {self.encoder.main_input_name: given}
        return self._splice_forward(
            encoder_inputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )
