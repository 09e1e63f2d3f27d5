"""splice: join any pretrained encoder to any pretrained language-model decoder."""

from .configuration import EncoderDecoderConfig, SpeechEncoderDecoderConfig, SpliceConfig, VisionEncoderDecoderConfig
from .models import (
    EncoderDecoderModel,
    SmallCapConfig,
    SmallCapModel,
    SpeechEncoderDecoderModel,
    SpliceModel,
    VisionEncoderDecoderModel,
)
from .processing import SpliceProcessor
from .registry import register_auto_classes

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "SmallCapConfig",
    "SmallCapModel",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "SpeechEncoderDecoderConfig",
    "SpeechEncoderDecoderModel",
    "SpliceConfig",
    "SpliceModel",
    "SpliceProcessor",
    "VisionEncoderDecoderConfig",
    "VisionEncoderDecoderModel",
]
