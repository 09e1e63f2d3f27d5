"""The models: `SpliceModel`, transformers' composite classes on it, the SmallCap preset, and splice's own encoder
(`LineEncoderModel`, registered with `AutoModel` by `splice.registry`)."""

from .composites import EncoderDecoderModel, SpeechEncoderDecoderModel, VisionEncoderDecoderModel
from .line_encoder import LineEncoderConfig, LineEncoderModel
from .smallcap import SmallCapConfig, SmallCapModel
from .splice import SpliceModel, shift_tokens_right

__all__ = [
    "EncoderDecoderModel",
    "LineEncoderConfig",
    "LineEncoderModel",
    "SmallCapConfig",
    "SmallCapModel",
    "SpeechEncoderDecoderModel",
    "SpliceModel",
    "VisionEncoderDecoderModel",
    "shift_tokens_right",
]
