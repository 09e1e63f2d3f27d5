"""transformers' composite classes, same `model_type`s, checkpoints and `forward` signatures.

Each fixes its main input, checkpoint format and `forward` (its transformers counterpart's parameters, in that order,
written out); everything else is `SpliceModel`'s, whose `_splice_forward` is the one body behind every `forward`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from ..configuration import EncoderDecoderConfig, SpeechEncoderDecoderConfig, VisionEncoderDecoderConfig
from .splice import SpliceModel, forward_doc


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

    @forward_doc("The encoder input is `pixel_values` `[B, C, H, W]`.")
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
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

    @forward_doc(
        "The encoder input is `input_ids` `[B, S]` with its `attention_mask` (also masking the cross-attention)."
    )
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.BoolTensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        return self._splice_forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
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

    @forward_doc("The encoder input is `inputs` (or `input_values` / `input_features`).")
    def forward(
        self,
        inputs: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.BoolTensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        past_key_values: Cache | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        input_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        return self._splice_forward(
            inputs=inputs,
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
            input_values=input_values,
            input_features=input_features,
            return_dict=return_dict,
            **kwargs,
        )
