"""The seed API shells: transformers' composite classes, same `model_type`s, checkpoints and `forward` signatures.

Each fixes its main input and checkpoint format; everything else is `SpliceModel`'s.
"""

from __future__ import annotations

import torch

from ..configuration import EncoderDecoderConfig, SpeechEncoderDecoderConfig, VisionEncoderDecoderConfig
from .signature import DECODER_PARAMETERS, FORWARD_DOC, composite_forward
from .splice import SpliceModel


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

    forward_parameters = ("pixel_values", *DECODER_PARAMETERS, "return_dict")  # fmt: skip
    forward = composite_forward(
        forward_parameters, "The encoder input is `pixel_values` `[B, C, H, W]`.\n\n" + FORWARD_DOC
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

    forward_parameters = (
        "input_ids", "attention_mask", *DECODER_PARAMETERS[:4], "inputs_embeds", *DECODER_PARAMETERS[4:], "return_dict",
    )  # fmt: skip
    forward = composite_forward(
        forward_parameters,
        "The encoder input is `input_ids` `[B, S]` with its `attention_mask` (also masking the cross-attention).\n\n"
        + FORWARD_DOC,
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

    forward_parameters = (
        "inputs", "attention_mask", *DECODER_PARAMETERS, "input_values", "input_features", "return_dict",
    )  # fmt: skip
    forward = composite_forward(
        forward_parameters, "The encoder input is `inputs` (or `input_values` / `input_features`).\n\n" + FORWARD_DOC
    )
