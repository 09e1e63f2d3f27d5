"""The models: `SpliceModel`, transformers' composite classes on it, the SmallCap preset, and splice's own encoders
(`LineEncoderModel`, `GridEncoderModel`, registered with `AutoModel` by `splice.registry`)."""

from .composites import EncoderDecoderModel, SpeechEncoderDecoderModel, VisionEncoderDecoderModel
from .grid_encoder import GridEncoderConfig, GridEncoderModel
from .line_encoder import LineEncoderConfig, LineEncoderModel
from .smallcap import SmallCapConfig, SmallCapModel
from .splice import SpliceModel, shift_tokens_right

__all__ = [
    "EncoderDecoderModel",
    "GridEncoderConfig",
    "GridEncoderModel",
    "LineEncoderConfig",
    "LineEncoderModel",
    "SmallCapConfig",
    "SmallCapModel",
    "SpeechEncoderDecoderModel",
    "SpliceModel",
    "VisionEncoderDecoderModel",
    "shift_tokens_right",
]
