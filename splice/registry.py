"""Every splice model class by `model_type`, and their registration with transformers' Auto classes.

After `import splice`, the Auto classes build splice's classes for splice checkpoints and for the transformers
composite checkpoints (same format), so `AutoModelForImageTextToText.from_pretrained(dir)` returns a splice model.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForSeq2SeqLM,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
)

from .configuration import EncoderDecoderConfig, SpeechEncoderDecoderConfig, SpliceConfig, VisionEncoderDecoderConfig
from .models import (
    EncoderDecoderModel,
    GridEncoderConfig,
    GridEncoderModel,
    LineEncoderConfig,
    LineEncoderModel,
    SmallCapConfig,
    SmallCapModel,
    SpeechEncoderDecoderModel,
    SpliceModel,
    VisionEncoderDecoderModel,
)
from .processing import SpliceProcessor

_ALL_AUTOS = (AutoModel, AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq)
REGISTRY = (
    (SpliceConfig, SpliceModel, _ALL_AUTOS),
    (VisionEncoderDecoderConfig, VisionEncoderDecoderModel, (AutoModel, AutoModelForImageTextToText)),
    (EncoderDecoderConfig, EncoderDecoderModel, (AutoModel, AutoModelForSeq2SeqLM)),
    (SpeechEncoderDecoderConfig, SpeechEncoderDecoderModel, (AutoModel, AutoModelForSpeechSeq2Seq)),
    (SmallCapConfig, SmallCapModel, (AutoModel, AutoModelForImageTextToText)),
)
# Encoders splice adds (an encoder is built with `AutoModel`, like any other).
ENCODERS = ((LineEncoderConfig, LineEncoderModel), (GridEncoderConfig, GridEncoderModel))
MODEL_CLASSES: dict[str, type[SpliceModel]] = {config.model_type: model for config, model, _ in REGISTRY}


def model_class(model_type: str) -> type[SpliceModel]:
    """The splice class of a checkpoint's `model_type` (e.g. `"vision-encoder-decoder"`, `"smallcap"`)."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type={model_type!r} is not a splice model; expected one of {sorted(MODEL_CLASSES)}.")
    return MODEL_CLASSES[model_type]


def register_auto_classes() -> None:
    """Register every splice class with transformers' Auto classes (idempotent)."""
    for config, model in ENCODERS:
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)
    for config, model, autos in REGISTRY:
        AutoConfig.register(config.model_type, config, exist_ok=True)
        for auto in autos:
            auto.register(config, model, exist_ok=True)
        AutoProcessor.register(config, SpliceProcessor, exist_ok=True)
