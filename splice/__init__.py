"""splice: join any pretrained encoder to any pretrained language-model decoder."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForSeq2SeqLM,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
)

from .configuration import EncoderDecoderConfig, SpeechEncoderDecoderConfig, SpliceConfig, VisionEncoderDecoderConfig
from .modeling import EncoderDecoderModel, SpeechEncoderDecoderModel, SpliceModel, VisionEncoderDecoderModel
from .processing import SpliceProcessor
from .smallcap import SmallCapConfig, SmallCapModel

__version__ = "0.1.0"

# After `import splice`, the Auto classes build splice's classes for splice checkpoints and for the transformers
# composite checkpoints (same format), so `AutoModelForImageTextToText.from_pretrained(dir)` returns a splice model.
_REGISTRY = (
    (
        SpliceConfig,
        SpliceModel,
        (AutoModel, AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq),
    ),
    (VisionEncoderDecoderConfig, VisionEncoderDecoderModel, (AutoModel, AutoModelForImageTextToText)),
    (EncoderDecoderConfig, EncoderDecoderModel, (AutoModel, AutoModelForSeq2SeqLM)),
    (SpeechEncoderDecoderConfig, SpeechEncoderDecoderModel, (AutoModel, AutoModelForSpeechSeq2Seq)),
    (SmallCapConfig, SmallCapModel, (AutoModel, AutoModelForImageTextToText)),
)
for _config, _model, _autos in _REGISTRY:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _auto in _autos:
        _auto.register(_config, _model, exist_ok=True)
    AutoProcessor.register(_config, SpliceProcessor, exist_ok=True)

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
