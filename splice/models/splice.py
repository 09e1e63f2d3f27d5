"""`SpliceModel`: an encoder joined to a causal-LM decoder, trained and generated like any transformers seq2seq model.

Reading order: construction (the conditioning strategy builds what joins the parts), special tokens, `generate`
hooks, `forward` (encode → adapt → the strategy decodes → loss). transformers' composite classes are in
`models/composites.py`, assembly from pretrained parts in `models/assembly.py`, one-call inference in
`splice/inference.py`.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils import logging

from .. import inference
from .._compat import COMPATIBILITY_HINT, TRANSFORMERS_VERSION, cache_kwargs, output_cache, pop_cache
from ..conditioning import strategy
from ..conditioning.base import self_attention_cache
from ..configuration import SpliceConfig
from ..encoders import as_token_states, encoder_hidden_size, encoder_tower, num_token_states
from ..onednn import use_onednn_lm_head
from ..precision import check_saveable, resolve_dtype
from ..precision import quantize as _quantize
from ..token_ids import SPECIAL_TOKENS, validate_token_ids
from .assembly import FromPartsMixin
from .checks import check_encoder_inputs, check_generate_arguments, check_generation_length, check_ids
from .ctc import build_ctc_head, joint_ctc_loss
from .generation_sync import SpecialTokensMixin

logger = logging.get_logger(__name__)

# Names under which encoders take their main input (`inputs` is the speech composite's generic name).
_ENCODER_INPUTS = ("pixel_values", "input_ids", "input_values", "input_features", "inputs_embeds", "inputs")


_FORWARD_ARGS = """Encode the input (unless `encoder_outputs` is given), then decode.

Args:
    pixel_values / input_ids / input_values / input_features / inputs: the encoder's input, whichever it takes.
    attention_mask (`torch.Tensor` of shape `[B, S]`, *optional*): the encoder's padding mask; also passed to
        the decoder's cross-attention (downsampled for speech encoders).
    inputs_embeds: the encoder's input embeddings, instead of `input_ids`.
    decoder_input_ids (`torch.LongTensor` of shape `[B, T]`, *optional*): built from `labels` when omitted
        (shifted right, -100 replaced by `pad_token_id`).
    decoder_attention_mask (`torch.Tensor` of shape `[B, T]`, *optional*): when built from labels, positions
        whose label is -100 are masked.
    encoder_outputs (`tuple` or `BaseModelOutput`, *optional*): precomputed encoder outputs.
    past_key_values / cache (`Cache`, *optional*): the decoder's cache (`cache` is transformers 5.24's name).
    decoder_inputs_embeds: the decoder's input embeddings, instead of `decoder_input_ids`.
    labels (`torch.LongTensor` of shape `[B, T]`, *optional*): target ids; -100 is ignored by the loss.
    use_cache, output_attentions, output_hidden_states, return_dict: as in transformers.
    kwargs: unprefixed keys go to the encoder, `decoder_`-prefixed keys to the decoder.

Returns:
    `Seq2SeqLMOutput` (or the reference classes' tuple with `return_dict=False`).
"""


def forward_doc(intro: str) -> Callable[[Callable], Callable]:
    """Give a composite's `forward` its docstring: what its encoder input is, then the arguments all share."""

    def decorate(forward: Callable) -> Callable:
        forward.__doc__ = f"{intro}\n\n{_FORWARD_ARGS}"
        return forward

    return decorate


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


class SpliceModel(FromPartsMixin, SpecialTokensMixin, PreTrainedModel, GenerationMixin):
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
            config = self.config_class.from_encoder_decoder_configs(
                encoder.config, decoder.config, conditioning=self.config_class.resolve_auto("auto", decoder)
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
        # Nothing per call is kept on the modules (keys/values live in the generation cache), so every mode compiles.
        self._can_compile_fullgraph = getattr(decoder, "_can_compile_fullgraph", False)
        if type(self) is SpliceModel:
            self.main_input_name = encoder.main_input_name

        # The conditioning strategy prepares the decoder and returns the modules its mode adds (checkpoint names such
        # as `enc_to_dec_proj`); they live where the decoder lives (a pretrained decoder may be bf16, or on a GPU).
        self.conditioning = strategy(config.conditioning)
        reference = next(decoder.parameters())
        for name, module in self.conditioning.build(self).items():
            self.add_module(name, module.to(device=reference.device, dtype=reference.dtype))
        self._after_conditioning_built()
        self.ctc_head: nn.Module | None = None
        if config.ctc_weight > 0:  # joint CTC–attention training (splice/models/ctc.py); none at 0: nothing changes
            self.ctc_head = build_ctc_head(encoder_hidden_size(encoder.config), decoder.config.vocab_size)
            self.ctc_head.to(device=next(encoder.parameters()).device)
        # Per `generate` call (one cache per call), the adapted encoder states `_decoder_side_states` computed at its
        # first step; an entry lives as long as that call's cache, so nothing outlives or crosses calls (thread-safe).
        self._adapted_states: weakref.WeakKeyDictionary[Cache, tuple] = weakref.WeakKeyDictionary()
        self._processor: Any = None  # the `processor` property's value, loaded on first use
        self._decoder_takes_position_ids = "position_ids" in inspect.signature(decoder.forward).parameters
        self._encoder_takes_mask = "attention_mask" in inspect.signature(encoder.forward).parameters
        if config.tie_encoder_decoder:
            # Declared as tied weights, so transformers ties them, saves each once and re-ties them on load.
            self._tied_weights_keys = self._encoder_decoder_tied_keys()
        self.post_init()
        use_onednn_lm_head(decoder)  # after initialisation, which would re-draw a new module's (shared) weight
        self._synced_tokens: dict[str, Any] = {}  # the special tokens as last agreed by config and generation config
        self._sync_generation_config()

    @classmethod
    def from_pretrained(cls, *args: Any, quantize: str | None = None, **kwargs: Any) -> SpliceModel:
        """transformers' `from_pretrained`, plus reduced precision for inference (splice/precision.py).

        `dtype` also takes `"bf16"` / `"fp32"` / `"fp16"`; `quantize="int8"` swaps the linear layers of encoder and
        decoder (GPT-2's `Conv1D` included, the LM head and embeddings left in `dtype`) for int8 weight-only ones.
        With `dtype="bf16"` that is the fastest batch-1 decoding on a CPU (benchmarks/README.md).
        """
        if "dtype" in kwargs:
            kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
        model = super().from_pretrained(*args, **kwargs)
        return model if quantize is None else _quantize(model, quantize)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        check_saveable(self)  # a quantized model: an error saying how to re-quantize, not an unloadable checkpoint
        super().save_pretrained(save_directory, *args, **kwargs)

    # -- construction ---------------------------------------------------------------------------------------------

    def _after_conditioning_built(self) -> None:
        """A hook for presets that adjust what the strategy built (SmallCap narrows GPT-2's cross-attention)."""

    def keeps_frozen(self, name: str) -> bool:
        """Whether the conditioning parameter `name` stays frozen when only the conditioning trains: a preset's rule
        (SmallCap keeps the cross-attention layer norms frozen); none here."""
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Each part initialises its modules the way its family does; splice's own modules use the decoder's rule.
        owner = self.encoder if any(module is m for m in self.encoder.modules()) else self.decoder
        owner._init_weights(module)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        # transformers initialises the decoder's modules with the decoder's own rule, which knows nothing of what a
        # conditioning mode needs beyond it (gates at 0: identity): the strategy sets those missing from a checkpoint.
        with torch.no_grad():
            self.conditioning.initialize(self)

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

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        self._sync_generation_config()
        passed = {f: kwargs[f] for f in SPECIAL_TOKENS if kwargs.get(f) is not None}
        if generation_config is not None:
            passed = {f: getattr(generation_config, f, None) for f in SPECIAL_TOKENS} | passed
        validate_token_ids(passed, self.config.decoder.vocab_size, dict.fromkeys(passed, "generate() arguments"))
        check_generate_arguments(self, inputs, generation_config, kwargs)
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.Tensor) -> Cache:
        """Beam search's per-step cache reorder, minus the cross-attention keys/values.

        Those are projections of the encoder states, which `generate` repeats per beam, so every beam of an input holds
        the same rows, and beam search only ever moves a beam within its own input: reordering them is an identity
        that costs a copy of [batch x beams, heads, source length, head dim] per layer and step (benchmarks/README.md
        has the profile).
        """
        self_attention_cache(cache).reorder_cache(beam_idx)
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
        mask = model_inputs.get("decoder_attention_mask")
        if mask is not None and mask.dim() != 2:  # a static cache's 4D mask, built from the 2D one generate keeps
            mask = kwargs.get("decoder_attention_mask")
        if (
            mask is not None
            and fed is not None
            and "decoder_position_ids" not in model_inputs
            and not self.conditioning.sets_position_ids
            and self._decoder_takes_position_ids
            and bool((mask[:, 0] == 0).any())  # once per step, in the loop: forward itself never syncs
        ):
            # Left padding (batched prompts): positions count real tokens, so each sample matches its unpadded self.
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T_total]
            model_inputs["decoder_position_ids"] = positions[:, -fed.shape[1] :]
        # A mode may hold positions before the text in the cache (the prefix mode's prefix).
        num_states = num_token_states(kwargs["encoder_outputs"][0])  # every step: from the shape, no copy
        before_text = self.conditioning.positions_before_text(self, num_states)
        check_generation_length(self, before_text + input_ids.shape[1])
        if expected > 0:
            expected += before_text
        if expected > 0 and held < expected:
            raise RuntimeError(
                f"Generation is broken with transformers {TRANSFORMERS_VERSION}: this step feeds "
                f"{fed.shape[1]} new token(s) after {expected} earlier ones, but the cache holds {held}, so the model "
                f"would read the new tokens without their context and produce wrong text. {COMPATIBILITY_HINT}"
            )
        return model_inputs

    # -- forward --------------------------------------------------------------------------------------------------

    @forward_doc(
        "The encoder input is whichever of `pixel_values`, `input_ids`, `input_values`, `input_features` it takes."
    )
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.BoolTensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        return self._splice_forward(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_values=input_values,
            input_features=input_features,
            inputs_embeds=inputs_embeds,
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
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """The one body behind every class's `forward`: encode, adapt, decode with the strategy, loss.

        Encoder inputs arrive by name in `kwargs` (each class's `forward` names those its encoder family takes).
        """
        encoder_inputs = {name: kwargs.pop(name) for name in _ENCODER_INPUTS if kwargs.get(name) is not None}
        for name in _ENCODER_INPUTS:
            kwargs.pop(name, None)
        if "inputs" in encoder_inputs:  # the speech composite's generic name for the encoder's main input
            encoder_inputs[self.encoder.main_input_name] = encoder_inputs.pop("inputs")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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
            check_encoder_inputs(self.encoder, encoder_inputs)
            encoder_outputs = self.encoder(**encoder_inputs, **shared, return_dict=True, **kwargs)
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)

        # Decoding steps feed back ids the model produced: not checked. A compiled step (static cache) is one too, and
        # reading its cache's length there would be data-dependent control flow: a graph break in every step.
        decoding = torch.compiler.is_compiling() or (cache is not None and cache.get_seq_length() > 0)
        encoder_hidden_states, encoder_attention_mask = self._decoder_side_states(
            encoder_outputs[0], attention_mask, cache
        )

        if labels is not None:
            check_ids("labels", labels, self.config.decoder.vocab_size)
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
                if decoder_attention_mask is None:
                    decoder_attention_mask = self.decoder_attention_mask_from_labels(labels, decoder_input_ids)
        if decoder_input_ids is not None and not decoding:
            check_ids("decoder_input_ids", decoder_input_ids, self.config.decoder.vocab_size)

        decoder_outputs = self.conditioning.decode(
            self,
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
            targets = labels.reshape(-1).to(logits.device)  # [B*T]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="sum")
            # The mean over target tokens; a batch whose labels are all -100 has loss 0, not 0/0 = NaN.
            count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum().clamp(min=1)
            loss = loss / count
            if self.ctc_head is not None:
                states = as_token_states(encoder_outputs[0])  # [B, S, E]: the CTC head reads them before adaptation
                mask = self._encoder_attention_mask(attention_mask, states)
                loss = joint_ctc_loss(self.ctc_head, self.config, loss, states, mask, labels, count)

        if not return_dict:  # the reference classes' tuple: loss, then the decoder's outputs, then the encoder's
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
            The states and mask the decoder side reads (default: the conditioning mode's `adapt`, e.g. native's
            `enc_to_dec_proj` when the widths differ).
        """
        return self.conditioning.adapt(self, encoder_hidden_states, encoder_attention_mask)

    def _decoder_side_states(
        self, encoder_output: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token states `[B, S, D]` and mask `[B, S]` for the decoder side, adapted once per `generate` call.

        `generate` passes the same encoder output at every step with one cache per call: the first step keeps the
        adapted states on that cache and later steps take them back, so no projection is recomputed per token and
        nothing outlives the call or is shared between calls.
        """
        memo = cache is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        kept = self._adapted_states.get(cache) if memo else None
        if kept is not None and kept[0] is encoder_output:
            return kept[1], kept[2]
        states = as_token_states(encoder_output)  # [B, S, E]
        states, mask = self.adapt_encoder_states(states, self._encoder_attention_mask(attention_mask, states))
        if memo:
            self._adapted_states[cache] = (encoder_output, states, mask)
        return states, mask

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

    # -- one-call inference (splice/inference.py) ------------------------------------------------------------------

    @property
    def processor(self) -> Any:
        """The processor saved with this model: a `SpliceProcessor` (images) or the tokenizer (text encoders).

        Loaded from the model's directory on first use; assign one to set it.
        """
        if self._processor is None:
            self._processor = inference.load_processor(self)
        return self._processor

    @processor.setter
    def processor(self, processor: Any) -> None:
        self._processor = processor

    def caption(self, images: Any, processor: Any = None, **generate_kwargs: Any) -> list[str]:
        """Generate text for images in one call (see `splice.inference.caption`)."""
        return inference.caption(self, images, processor or self.processor, **generate_kwargs)

    def transform(self, texts: str | list[str], tokenizer: Any = None, **generate_kwargs: Any) -> list[str]:
        """Generate text from source texts in one call (see `splice.inference.transform`)."""
        return inference.transform(self, texts, tokenizer or self.processor, **generate_kwargs)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for `labels` (used by `DataCollatorForSeq2Seq`)."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
