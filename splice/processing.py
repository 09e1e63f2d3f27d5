"""`SpliceProcessor`: the encoder's input processor and the decoder's tokenizer, saved and loaded as one."""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import BatchFeature, ProcessorMixin


def decode_predictions(tokenizer: Any, ids: Any) -> list[str]:
    r"""
    Decode token ids that may hold -100 (label padding, or `Seq2SeqTrainer`'s padding of generations across batches).

    Args:
        tokenizer: a `transformers` tokenizer.
        ids (`np.ndarray`, `torch.Tensor` or nested lists): `[batch, length]` token ids; rows may differ in length.

    Returns:
        `list[str]`: the decoded texts without special tokens, stripped.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    # Fast tokenizers take unsigned ids: a negative one raises OverflowError, so every negative id becomes padding,
    # which `skip_special_tokens` then drops.
    rows = [np.where(np.asarray(row) < 0, pad, np.asarray(row)).tolist() for row in ids]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def vit_image_processor_class() -> type:
    """The ViT image processor class that runs here without a warning: from transformers 5.25, `ViTImageProcessor`
    needs torchvision (without it, transformers falls back to `ViTImageProcessorPil` and says so on every run), so the
    PIL class is taken directly when torchvision is absent. Both save as `"ViTImageProcessor"`: checkpoints load alike.
    """
    import transformers
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        try:
            return transformers.ViTImageProcessorPil
        except (AttributeError, ImportError):  # older releases: `ViTImageProcessor` is the PIL one
            pass
    return transformers.ViTImageProcessor


class SpliceProcessor(ProcessorMixin):
    r"""
    Prepares images for a vision splice model and decodes its outputs. (Text encoders use their tokenizer alone.)

    Args:
        image_processor: turns images into `pixel_values`.
        tokenizer: the decoder's tokenizer.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, text_target: Any = None, **kwargs: Any) -> BatchFeature:
        r"""
        Args:
            images (*optional*): images for the vision encoder → `pixel_values`.
            text or text_target (*optional*): the target captions (→ `labels`, as TrOCR's processor).
            kwargs: passed to the tokenizer (e.g. `padding`, `max_length`, `return_tensors`).
        """
        if images is None and text is None and text_target is None:
            raise ValueError("SpliceProcessor needs `images`, `text` or `text_target`.")
        return_tensors = kwargs.pop("return_tensors", "pt")
        features: dict[str, Any] = {}
        if images is not None:
            features.update(self.image_processor(images, return_tensors=return_tensors))
        targets = text_target if text_target is not None else text
        if targets is not None:
            features["labels"] = self.tokenizer(targets, return_tensors=return_tensors, **kwargs)["input_ids"]
        return BatchFeature(features)

    def batch_decode(self, sequences: Any) -> list[str]:
        """Decode ids to strings, special tokens skipped; -100 decodes as padding (see `decode_predictions`)."""
        return decode_predictions(self.tokenizer, sequences)

    def decode(self, ids: Any) -> str:
        """Decode one sequence of ids (see `batch_decode`)."""
        return self.batch_decode([ids])[0]

    @property
    def model_input_names(self) -> list[str]:
        return list(self.image_processor.model_input_names) + ["labels"]
