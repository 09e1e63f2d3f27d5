"""splice: join any pretrained encoder to any pretrained language-model decoder."""

import importlib

from ._version import __version__  # noqa: F401 (the package's version, `splice.__version__`)
from .configuration import EncoderDecoderConfig, SpeechEncoderDecoderConfig, SpliceConfig, VisionEncoderDecoderConfig
from .models import (
    EncoderDecoderModel,
    SmallCapConfig,
    SmallCapModel,
    SpeechEncoderDecoderModel,
    SpliceModel,
    VisionEncoderDecoderModel,
)
from .models.compiled_step import CompiledDecoding
from .precision import quantize
from .processing import SpliceProcessor
from .registry import register_auto_classes

register_auto_classes()

# The JAX and TensorFlow classes import their framework on first access, so `import splice` imports neither.
_FRAMEWORK_CLASSES = {
    "FlaxVisionEncoderDecoderModel": "flax",
    "FlaxEncoderDecoderModel": "flax",
    "TFVisionEncoderDecoderModel": "tf",
    "TFEncoderDecoderModel": "tf",
}


def __getattr__(name: str):
    if name not in _FRAMEWORK_CLASSES:
        raise AttributeError(f"module 'splice' has no attribute {name!r}")
    extra = _FRAMEWORK_CLASSES[name]
    try:
        module = importlib.import_module(f".{extra}", __name__)
    except ImportError as error:
        hint = f'pip install "splice[{extra}]"'
        raise ImportError(f"splice.{name} needs the {extra!r} extra: {hint} ({error}).") from error
    return getattr(module, name)


__all__ = [  # noqa: F822 (the framework classes are served by __getattr__)
    *_FRAMEWORK_CLASSES,
    "CompiledDecoding",
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
    "quantize",
]
