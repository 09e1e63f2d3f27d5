"""The models: `SpliceModel`, transformers' composite classes on it, and the SmallCap preset."""

from . import line_encoder  # noqa: F401  (registers model_type "splice_line_encoder" with AutoModel)
from .composites import EncoderDecoderModel, SpeechEncoderDecoderModel, VisionEncoderDecoderModel
from .smallcap import SmallCapConfig, SmallCapModel
from .splice import SpliceModel, shift_tokens_right

__all__ = [
    "EncoderDecoderModel",
    "SmallCapConfig",
    "SmallCapModel",
    "SpeechEncoderDecoderModel",
    "SpliceModel",
    "VisionEncoderDecoderModel",
    "shift_tokens_right",
]
