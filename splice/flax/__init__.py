"""splice's JAX (Flax NNX) composites: `FlaxVisionEncoderDecoderModel`, `FlaxEncoderDecoderModel`.

Install with `pip install "splice[flax]"`. `import splice` does not import JAX; `splice.FlaxVisionEncoderDecoderModel`
does, on first access.
"""

from .modeling import (
    FlaxEncoderDecoderModel,
    FlaxSpliceModel,
    FlaxVisionEncoderDecoderModel,
    GenerateOutput,
    Seq2SeqLMOutput,
)

__all__ = [
    "FlaxEncoderDecoderModel",
    "FlaxSpliceModel",
    "FlaxVisionEncoderDecoderModel",
    "GenerateOutput",
    "Seq2SeqLMOutput",
]
